"""Pytest fixtures for plugin authors, loaded automatically once kernel-core-sdk is installed.

Imports no torch, so a test session that only checks registration stays fast.
"""

from __future__ import annotations

from types import ModuleType
from typing import Protocol

import pytest

from kernel_core.plugins import Distribution, PluginInfo, PluginManager

TEST_DISTRIBUTION = Distribution("kernel-core-sdk-test", "0")


class Register(Protocol):
    """Signature of the ``kcore_register`` fixture."""

    def __call__(
        self, module: ModuleType, name: str | None = None, distribution: Distribution | None = None
    ) -> PluginInfo: ...


@pytest.fixture
def kcore_plugin_manager() -> PluginManager:
    """A plugin manager that holds only what the test registers.

    Unlike ``get_plugin_manager()`` it reads no entry points and no ``KERNEL_CORE_*`` variables,
    so what else is installed in the environment cannot change the test's outcome.
    """
    return PluginManager()


@pytest.fixture
def kcore_register(kcore_plugin_manager: PluginManager) -> Register:
    """Register a module on ``kcore_plugin_manager`` as an entry point would.

    ``name`` defaults to the module's name and ``distribution`` to a test distribution. Returns
    the :class:`~kernel_core.plugins.PluginInfo`, whose ``status`` and ``error`` say whether the
    plugin was accepted.
    """

    def register(
        module: ModuleType, name: str | None = None, distribution: Distribution | None = None
    ) -> PluginInfo:
        return kcore_plugin_manager.register(
            module, name=name or module.__name__, distribution=distribution or TEST_DISTRIBUTION
        )

    return register


NEEDS_PLATFORM = "kcore_needs_platform"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{NEEDS_PLATFORM}(platform_class): run only where the platform is available; elsewhere "
        "the test is deselected (not skipped) and the summary says why. Apply it with "
        f"`pytest.mark.{NEEDS_PLATFORM}.with_args(PlatformClass)` (a bare class argument would be "
        "taken as the decorated object)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect tests for hardware this machine lacks: they are not failures nor checks skipped
    here, they belong to the GPU run (scripts/gpu_check.sh)."""
    keep, dropped, reasons = [], [], {}
    for item in items:
        marker = item.get_closest_marker(NEEDS_PLATFORM)
        platform = marker.args[0] if marker else None
        if platform is None or platform.is_available():
            keep.append(item)
            continue
        dropped.append(item)
        reasons[platform.name] = platform.unavailable_reason()
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep
        config.stash[_DESELECTED] = (len(dropped), reasons)


_DESELECTED = pytest.StashKey[tuple[int, dict[str, str]]]()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    if _DESELECTED not in config.stash:
        return
    count, reasons = config.stash[_DESELECTED]
    terminalreporter.write_line(
        f"kernel-core-sdk: deselected {count} tests that need hardware absent here: "
        + "; ".join(f"{name} ({why})" for name, why in sorted(reasons.items()))
    )

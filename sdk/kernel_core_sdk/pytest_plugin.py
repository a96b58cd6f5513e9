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

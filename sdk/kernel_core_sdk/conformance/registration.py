"""Registration checks every kind's conformance suite shares.

Discovery imports every installed plugin's entry-point module on every start, so that module
must declare the plugin API it targets, return valid records from its registration hook, and
import no torch. :class:`RegistrationChecks` checks exactly that, for any kind.
"""

from __future__ import annotations

import os
import subprocess
import sys
from types import ModuleType

import pytest

import kernel_core
from kernel_core import api_version
from kernel_core.contracts.records import SPEC_BY_KIND, ImplementationSpec, PluginKind
from kernel_core.plugins import REGISTRATION_HOOKS, Distribution, PluginManager

#: Plugin kind → the registration hook that returns its records.
HOOK_BY_KIND: dict[PluginKind, str] = {kind: hook for hook, kind in REGISTRATION_HOOKS.items()}


def run_fresh_python(code: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a new interpreter that sees this one's ``sys.path``.

    A fresh process is the only honest place to see what an import pulls in: in the test
    process, torch and the plugin are already loaded.
    """
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout
    )


def registered_records(plugin_module: ModuleType, kind: PluginKind) -> list[ImplementationSpec]:
    """The records of ``kind`` that ``plugin_module`` registers through a real, strict manager,
    so that every check the manager makes at start-up (API version, unknown hooks, record
    types, duplicate names) fails the test with the manager's own message."""
    manager = PluginManager(strict=True)
    package = plugin_module.__name__.partition(".")[0]
    manager.register(
        plugin_module, name=plugin_module.__name__, distribution=Distribution(package, "under test")
    )
    return [registration.spec for registration in manager.registrations(kind)]


class RegistrationChecks:
    """Checks of a plugin's entry-point module, for any kind.

    Subclass it (or a kind's suite built on it) and supply two fixtures: ``plugin_module``, the
    imported entry-point module, and ``spec_kind``, the :class:`PluginKind` it provides.
    """

    @pytest.fixture
    def records(self, plugin_module: ModuleType, spec_kind: PluginKind) -> list[ImplementationSpec]:
        return registered_records(plugin_module, spec_kind)

    def test_declares_a_fitting_plugin_api(self, plugin_module: ModuleType) -> None:
        # Raises IncompatiblePluginError, naming what to set, when missing or not fitting.
        api_version.check_target(plugin_module, kernel_core.PLUGIN_API_VERSION)

    def test_manager_accepts_the_records(
        self, records: list[ImplementationSpec], spec_kind: PluginKind
    ) -> None:
        assert records, f"{HOOK_BY_KIND[spec_kind]}() registered no records"
        expected = SPEC_BY_KIND[spec_kind]
        assert all(isinstance(record, expected) for record in records), records

    def test_implementations_import(self, records: list[ImplementationSpec]) -> None:
        for record in records:
            assert record.load() is not None, f"{record.implementation} resolved to None"

    def test_entry_point_imports_no_torch(self, plugin_module: ModuleType) -> None:
        module_name = plugin_module.__name__
        result = run_fresh_python(
            "import importlib, sys\n"
            f"importlib.import_module({module_name!r})\n"
            "leaked = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
            "sys.exit('imports ' + ', '.join(leaked[:5]) if leaked else 0)\n"
        )
        assert result.returncode == 0, (
            f"importing the entry-point module {module_name} must not import torch "
            f"(discovery imports every installed plugin): {result.stderr.strip()}"
        )

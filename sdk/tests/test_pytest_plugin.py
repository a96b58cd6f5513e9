"""The fixtures the SDK's pytest plugin gives plugin authors, and the SDK's cheap imports."""

from __future__ import annotations

import types

import pytest

import kernel_core_sdk
from kernel_core.contracts.records import PluginKind
from kernel_core.plugins import PluginManager, PluginStatus
from kernel_core_sdk.conformance.registration import run_fresh_python


def test_manager_holds_nothing_it_was_not_given(kcore_plugin_manager: PluginManager, monkeypatch) -> None:
    monkeypatch.setenv("KERNEL_CORE_PLUGINS", "kernel-core-platform-cpu")
    assert kcore_plugin_manager.plugins == [] and kcore_plugin_manager.faults == []
    assert all(kcore_plugin_manager.registrations(kind) == [] for kind in PluginKind)


def test_register_makes_a_module_selectable(
    kcore_plugin_manager: PluginManager, kcore_register, rendered_plugin
) -> None:
    info = kcore_register(rendered_plugin(PluginKind.SCHEDULER_POLICY))
    assert info.status is PluginStatus.LOADED and info.error is None
    registration = kcore_plugin_manager.select(PluginKind.SCHEDULER_POLICY)
    assert registration.name == "tmpl-scheduler-policy" and registration.plugin is info


def test_register_reports_a_faulty_module(kcore_register) -> None:
    info = kcore_register(types.ModuleType("no_api_version"))
    assert info.status is PluginStatus.FAILED and "kernel_core_api" in info.error


def test_sdk_imports_no_torch_until_a_base_class_is_used() -> None:
    result = run_fresh_python(
        "import sys\n"
        "import kernel_core_sdk, kernel_core_sdk.pytest_plugin, kernel_core_sdk.scaffold\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "from kernel_core.contracts.scheduler import SchedulerPolicy\n"
        "assert kernel_core_sdk.SchedulerPolicy is SchedulerPolicy\n"
        "kernel_core_sdk.Platform\n"
        "assert 'torch' in sys.modules\n"
    )
    assert result.returncode == 0, result.stderr


def test_every_exported_name_resolves() -> None:
    for name in kernel_core_sdk.__all__:
        assert getattr(kernel_core_sdk, name) is not None, name
    assert set(kernel_core_sdk.__all__) <= set(dir(kernel_core_sdk))
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        kernel_core_sdk.Nope  # noqa: B018


def test_needs_platform_deselects_where_the_hardware_is_absent(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        class Absent:
            name = "tpu"
            is_available = staticmethod(lambda: False)
            unavailable_reason = staticmethod(lambda: "no TPU in this box")

        class Present(Absent):
            name = "here"
            is_available = staticmethod(lambda: True)

        @pytest.mark.kcore_needs_platform.with_args(Absent)
        def test_on_tpu():
            raise AssertionError("must not run")

        @pytest.mark.kcore_needs_platform.with_args(Present)
        def test_here():
            pass
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, deselected=1)
    result.stdout.fnmatch_lines(["*deselected 1 tests that need hardware absent here: tpu (no TPU in this box)*"])

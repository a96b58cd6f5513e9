"""Discovery, filtering, fault isolation and selection of entry-point plugins."""

from __future__ import annotations

import logging

import pytest

import kernel_core
from kernel_core import plugins
from kernel_core.api_version import fitting_range
from kernel_core.contracts.records import PluginKind
from kernel_core.errors import DuplicatePluginError, PluginError, PluginLoadError, UnknownPluginError
from kernel_core.plugins import PluginManager, PluginStatus, get_plugin_manager

from .conftest import plugin_source

GOOD = plugin_source(
    "kernel_core_scheduler_policies",
    "SchedulerPolicySpec(name='good', description='d', implementation='collections:OrderedDict')",
)


def policy(name: str, priority: int = 0) -> str:
    return plugin_source(
        "kernel_core_scheduler_policies",
        f"SchedulerPolicySpec(name={name!r}, description='d', implementation='collections:deque', "
        f"priority={priority})",
    )


def fake_names(manager: PluginManager) -> dict[str, PluginStatus]:
    return {p.distribution.name: p.status for p in manager.plugins if p.distribution.name.startswith("kc-")}


def test_discovery_is_cached_once_per_process(fake_dist):
    fake_dist("kc-good", "kc_good", GOOD)
    assert get_plugin_manager() is get_plugin_manager()
    assert plugins.discover_entry_points() is plugins.discover_entry_points()


def test_good_plugin_is_registered_with_its_distribution(fake_dist):
    fake_dist("kc-good", "kc_good", GOOD, version="2.3")
    reg = get_plugin_manager().get(PluginKind.SCHEDULER_POLICY, "good")
    assert (reg.plugin.distribution.name, reg.plugin.distribution.version) == ("kc-good", "2.3")
    assert reg.plugin.target_api == "1.0"


def test_plugin_raising_on_import_is_reported_and_skipped(fake_dist, caplog):
    fake_dist("kc-good", "kc_good", GOOD)
    fake_dist("kc-broken", "kc_broken", "raise RuntimeError('boom at import')", version="0.7")
    with caplog.at_level(logging.WARNING):
        manager = PluginManager.from_environment()
    assert fake_names(manager) == {"kc-good": PluginStatus.LOADED, "kc-broken": PluginStatus.FAILED}
    [fault] = [f for f in manager.faults if f.distribution.name == "kc-broken"]
    assert "kc-broken 0.7" in str(fault) and "RuntimeError: boom at import" in str(fault)
    assert "kc-broken 0.7" in caplog.text
    assert manager.get(PluginKind.SCHEDULER_POLICY, "good")


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ("{'name': 'dict'}", "returned dict"),
        ("PlatformSpec(name='wrong-kind', description='d', implementation='a:b')", "expected SchedulerPolicySpec"),
        ("SchedulerPolicySpec(name='Bad Name', description='d', implementation='a:b')", "name"),
        ("SchedulerPolicySpec(name='x', description='d', implementation='no-colon')", "implementation"),
    ],
)
def test_invalid_record_rejects_the_plugin(fake_dist, record, expected):
    fake_dist("kc-invalid", "kc_invalid", plugin_source("kernel_core_scheduler_policies", record))
    fake_dist("kc-good", "kc_good", GOOD)
    manager = PluginManager.from_environment()
    info = next(p for p in manager.plugins if p.distribution.name == "kc-invalid")
    assert info.status is PluginStatus.FAILED and expected in info.error
    assert info.registrations == []
    assert manager.get(PluginKind.SCHEDULER_POLICY, "good")


def test_incompatible_api_major_is_refused_saying_what_fits(fake_dist):
    fake_dist("kc-future", "kc_future", policy("future").replace("'1.0'", "'2.0'"), version="3.0")
    manager = PluginManager.from_environment()
    [fault] = [f for f in manager.faults if f.distribution.name == "kc-future"]
    assert "kc-future 3.0" in str(fault)
    fitting = fitting_range(kernel_core.PLUGIN_API_VERSION)  # "1.0 to 1.<current minor>"
    assert "targets plugin API 2.0" in fault.reason and f"plugins targeting {fitting} fit" in fault.reason
    with pytest.raises(UnknownPluginError):
        manager.get(PluginKind.SCHEDULER_POLICY, "future")


def test_plugin_without_api_declaration_is_refused(fake_dist):
    fake_dist("kc-undeclared", "kc_undeclared", GOOD.replace("kernel_core_api = '1.0'", ""))
    manager = PluginManager.from_environment()
    [fault] = [f for f in manager.faults if f.distribution.name == "kc-undeclared"]
    assert "declares no plugin API version" in fault.reason and "kernel_core_api" in fault.reason


def test_misspelled_hook_is_reported(fake_dist):
    fake_dist("kc-typo", "kc_typo", GOOD.replace("kernel_core_scheduler_policies", "kernel_core_scheduler_policy"))
    manager = PluginManager.from_environment()
    [fault] = [f for f in manager.faults if f.distribution.name == "kc-typo"]
    assert "unknown hook(s) kernel_core_scheduler_policy" in fault.reason


def test_duplicate_names_name_both_distributions(fake_dist):
    fake_dist("kc-one", "kc_one", policy("same"))
    fake_dist("kc-two", "kc_two", policy("same"))
    fake_dist("kc-good", "kc_good", GOOD)
    manager = PluginManager.from_environment()
    with pytest.raises(DuplicatePluginError, match=r"'same' is registered by both kc-one 1.0 and kc-two 1.0"):
        manager.get(PluginKind.SCHEDULER_POLICY, "same")
    assert "same" not in [r.name for r in manager.registrations(PluginKind.SCHEDULER_POLICY)]
    assert manager.get(PluginKind.SCHEDULER_POLICY, "good")


def tuner(name: str, peft_type: str) -> str:
    return plugin_source(
        "kernel_core_tuners",
        f"TunerSpec(name={name!r}, description='d', implementation='collections:deque', peft_type={peft_type!r})",
    )


def test_two_tuners_claiming_one_peft_type_are_both_refused(fake_dist):
    """Which plugin reads a file of that peft_type must never depend on load order."""
    fake_dist("kc-scale", "kc_scale", tuner("scale", "KC_TEST"))
    fake_dist("kc-fast-scale", "kc_fast_scale", tuner("fast-scale", "KC_TEST"))
    fake_dist("kc-solo", "kc_solo", tuner("kc-solo", "KC_SOLO"))
    manager = PluginManager.from_environment()
    expected = r"tuner peft_type 'KC_TEST' is claimed by both 'fast-scale' of kc-fast-scale 1.0 and 'scale' of kc-scale 1.0; .*KERNEL_CORE_DISABLE_PLUGINS"
    for name in ("scale", "fast-scale"):
        with pytest.raises(DuplicatePluginError, match=expected):
            manager.get(PluginKind.TUNER, name)
    usable = [r.name for r in manager.registrations(PluginKind.TUNER)]
    assert "kc-solo" in usable and "scale" not in usable and "fast-scale" not in usable
    assert any("peft_type 'KC_TEST'" in fault.reason for fault in manager.faults)


def test_the_deny_list_settles_a_peft_type_clash(fake_dist, monkeypatch):
    """An out-of-tree IA3 replaces the in-tree one (if installed) once that one is denied."""
    fake_dist("kc-my-ia3", "kc_my_ia3", tuner("ia3", "IA3"))
    monkeypatch.setenv(plugins.ENV_DENY, "kernel-core-ia3")
    manager = PluginManager.from_environment()
    assert manager.get(PluginKind.TUNER, "ia3").plugin.distribution.name == "kc-my-ia3"


def test_strict_mode_makes_a_fault_fatal(fake_dist, monkeypatch):
    fake_dist("kc-broken", "kc_broken", "raise ImportError('missing native lib')")
    monkeypatch.setenv(plugins.ENV_STRICT, "1")
    with pytest.raises(PluginLoadError, match=r"kc-broken 1.0.*missing native lib.*KERNEL_CORE_STRICT_PLUGINS"):
        PluginManager.from_environment()


def test_allow_list_loads_only_named_plugins(fake_dist, monkeypatch):
    fake_dist("kc-good", "kc_good", GOOD)
    fake_dist("kc-other", "kc_other", policy("other"))
    monkeypatch.setenv(plugins.ENV_ALLOW, "kc_good")
    manager = PluginManager.from_environment()
    assert fake_names(manager) == {"kc-good": PluginStatus.LOADED, "kc-other": PluginStatus.NOT_ALLOWED}


def test_empty_allow_list_loads_nothing(fake_dist, monkeypatch):
    fake_dist("kc-good", "kc_good", GOOD)
    monkeypatch.setenv(plugins.ENV_ALLOW, "")
    manager = PluginManager.from_environment()
    assert {p.status for p in manager.plugins} == {PluginStatus.NOT_ALLOWED}
    assert all(manager.registrations(kind) == [] for kind in PluginKind)


def test_deny_list_disables_a_plugin(fake_dist, monkeypatch, caplog):
    fake_dist("kc-good", "kc_good", GOOD)
    fake_dist("kc-other", "kc_other", policy("other"))
    monkeypatch.setenv(plugins.ENV_DENY, "kc-other,not-installed")
    with caplog.at_level(logging.WARNING):
        manager = PluginManager.from_environment()
    assert fake_names(manager) == {"kc-good": PluginStatus.LOADED, "kc-other": PluginStatus.DISABLED}
    assert "KERNEL_CORE_DISABLE_PLUGINS names 'not-installed'" in caplog.text


def test_unknown_name_lists_what_is_available(fake_dist):
    fake_dist("kc-good", "kc_good", GOOD)
    with pytest.raises(UnknownPluginError, match=r"no scheduler-policy plugin named 'nope'.*available: .*good"):
        get_plugin_manager().select(PluginKind.SCHEDULER_POLICY, "nope")


def test_selection_by_priority_not_load_order(fake_dist):
    fake_dist("kc-a", "kc_a", policy("low", priority=1))
    fake_dist("kc-b", "kc_b", policy("high", priority=5))
    manager = get_plugin_manager()
    accept = lambda r: r.name in {"low", "high"}  # noqa: E731 - ignore real installed policies
    assert manager.select(PluginKind.SCHEDULER_POLICY, accept=accept).name == "high"
    assert manager.select(PluginKind.SCHEDULER_POLICY, "low").name == "low"


def test_tied_priority_must_be_resolved_by_name(fake_dist):
    fake_dist("kc-a", "kc_a", policy("first", priority=7))
    fake_dist("kc-b", "kc_b", policy("second", priority=7))
    accept = lambda r: r.name in {"first", "second"}  # noqa: E731
    with pytest.raises(PluginError, match=r"first \(kc-a 1.0\), second \(kc-b 1.0\) share priority 7"):
        get_plugin_manager().select(PluginKind.SCHEDULER_POLICY, accept=accept)


def test_discovery_does_not_import_the_implementation(fake_dist):
    fake_dist(
        "kc-lazy",
        "kc_lazy",
        plugin_source(
            "kernel_core_scheduler_policies",
            "SchedulerPolicySpec(name='lazy', description='d', implementation='kc_lazy_impl:Policy')",
        ),
    )
    reg = get_plugin_manager().get(PluginKind.SCHEDULER_POLICY, "lazy")
    with pytest.raises(PluginError, match=r"'lazy' from kc-lazy 1.0: cannot import 'kc_lazy_impl:Policy'"):
        get_plugin_manager().load(reg)


def test_observer_that_raises_does_not_stop_the_others(caplog):
    from kernel_core import hookimpl
    from kernel_core.contracts.events import StepDone

    seen = []

    class Broken:
        kernel_core_api = "1.0"

        @hookimpl
        def kernel_core_step_done(self, stats):
            raise ValueError("observer bug")

    class Recorder:
        kernel_core_api = "1.0"

        @hookimpl
        def kernel_core_step_done(self, stats):
            seen.append(stats.step)

    manager = PluginManager()
    manager.register(Broken(), name="broken", distribution=plugins.Distribution("kc-broken", "1"))
    manager.register(Recorder(), name="rec", distribution=plugins.Distribution("kc-rec", "1"))
    stats = StepDone(step=3, num_running=1, num_waiting=0, num_scheduled_tokens=4, num_preempted=0,
                     kv_cache_usage=0.1, duration_s=0.01)
    with caplog.at_level(logging.ERROR):
        manager.notify("kernel_core_step_done", stats=stats)
    assert seen == [3]
    assert "kc-broken:broken" in caplog.text and "observer bug" in caplog.text

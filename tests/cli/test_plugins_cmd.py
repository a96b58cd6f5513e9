"""`kcore plugins list|doctor` report every plugin, its provenance, status and error."""

from __future__ import annotations

import json
import subprocess
import sys

from kernel_core.cli import main

from ..conftest import plugin_source

GOOD = plugin_source(
    "kernel_core_scheduler_policies",
    "SchedulerPolicySpec(name='kc-good', description='d', implementation='kernel_core.contracts.scheduler:SchedulerPolicy')",
)
UNIMPORTABLE = plugin_source(
    "kernel_core_scheduler_policies",
    "SchedulerPolicySpec(name='kc-ghost', description='d', implementation='kc_not_there:Policy')",
)
NOT_A_POLICY = plugin_source(
    "kernel_core_scheduler_policies",
    "SchedulerPolicySpec(name='kc-dict', description='d', implementation='collections:OrderedDict')",
)


def listing(capsys) -> list[dict]:
    assert main(["plugins", "list", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_list_shows_distribution_version_api_and_status(fake_dist, capsys):
    fake_dist("kc-good", "kc_good", GOOD, version="1.2")
    fake_dist("kc-broken", "kc_broken", "raise RuntimeError('boom')", version="0.3")
    rows = {r["distribution"]: r for r in listing(capsys)}
    assert rows["kc-good"] | {} == {
        "plugin": "kc-good", "distribution": "kc-good", "version": "1.2", "api": "1.0",
        "name": "kc-good", "kind": "scheduler-policy", "status": "loaded", "error": None,
    }
    assert rows["kc-broken"]["status"] == "failed"
    assert "RuntimeError: boom" in rows["kc-broken"]["error"]


def test_list_table_prints_errors_under_their_plugin(fake_dist, capsys):
    fake_dist("kc-broken", "kc_broken", "raise RuntimeError('boom')", version="0.3")
    assert main(["plugins", "list"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["KIND", "NAME", "DISTRIBUTION", "VERSION", "API", "STATUS"]
    assert "kc-broken" in out and "error: importing 'kc_broken' failed: RuntimeError: boom" in out


def test_list_marks_duplicates(fake_dist, capsys):
    fake_dist("kc-one", "kc_one", GOOD)
    fake_dist("kc-two", "kc_two", GOOD)
    rows = [r for r in listing(capsys) if r["name"] == "kc-good"]
    assert [r["status"] for r in rows] == ["duplicate", "duplicate"]
    assert "kc-one 1.0 and kc-two 1.0" in rows[0]["error"]


def test_list_marks_tuners_sharing_a_peft_type(fake_dist, capsys):
    for dist, name in (("kc-one", "my-tuner"), ("kc-two", "other-tuner")):
        record = f"TunerSpec(name={name!r}, description='d', implementation='a:b', peft_type='KC_TEST')"
        fake_dist(dist, dist.replace("-", "_"), plugin_source("kernel_core_tuners", record))
    rows = [r for r in listing(capsys) if r["distribution"] in ("kc-one", "kc-two")]
    assert [(r["name"], r["status"]) for r in rows] == [("my-tuner", "duplicate"), ("other-tuner", "duplicate")]
    assert all("peft_type 'KC_TEST' is claimed by both 'my-tuner' of kc-one 1.0 and 'other-tuner' of kc-two 1.0" in r["error"] for r in rows)


def test_doctor_passes_on_good_plugins_and_fails_on_bad_ones(fake_dist, capsys, monkeypatch):
    fake_dist("kc-good", "kc_good", GOOD)
    monkeypatch.setenv("KERNEL_CORE_PLUGINS", "kc-good")
    assert main(["plugins", "doctor"]) == 0
    assert "ok    scheduler-policy kc-good (kc-good 1.0)" in capsys.readouterr().out

    fake_dist("kc-ghost", "kc_ghost", UNIMPORTABLE)
    fake_dist("kc-dict", "kc_dict", NOT_A_POLICY)
    monkeypatch.setenv("KERNEL_CORE_PLUGINS", "kc-good,kc-ghost,kc-dict")
    assert main(["plugins", "doctor"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  scheduler-policy kc-ghost (kc-ghost 1.0)" in out and "No module named 'kc_not_there'" in out
    assert "collections:OrderedDict does not subclass SchedulerPolicy" in out
    assert "1 ok, 2 failed" in out


def test_listing_plugins_imports_no_torch():
    code = "import sys; from kernel_core.cli import main; main(['plugins', 'list']); assert 'torch' not in sys.modules, 'torch imported'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_doctor_lists_the_settings_a_plugin_takes(capsys):
    assert main(["plugins", "doctor"]) in (0, 1)
    out = capsys.readouterr().out
    assert (
        "--plugin-option attention-backend.torch.bucket_bytes=... (int, default 4194304): Most bytes of gathered keys"
        in out
    )

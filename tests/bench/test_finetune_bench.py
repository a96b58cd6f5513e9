"""``kcore bench finetune`` on the tiny random model: the worker's JSON, the same loss curve for our
PEFT and ``peft``, and the CLI end to end. Structure and losses are checked, never speed."""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import pytest

from kernel_core.bench import finetune
from kernel_core.bench.finetune_worker import OURS, PEFT, WorkerConfig, main, train
from kernel_core.cli import bench

TINY = {"batch_size": 2, "seq_len": 16, "threads": 1}


def _config(model: Path, side: str, gc: bool = False, steps: int = 3) -> WorkerConfig:
    return WorkerConfig(model=str(model), side=side, gradient_checkpointing=gc, steps=steps, **TINY)


def test_worker_writes_sane_json(tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "result.json"
    assert main([*_config(tiny_model, OURS, gc=True, steps=3).argv(), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert (result["side"], result["gradient_checkpointing"], result["config"]) == (OURS, True, "kernel-core, GC on")
    assert len(result["losses"]) == len(result["step_seconds"]) == 3
    assert result["final_loss"] == result["losses"][-1]
    assert all(0 < loss < 20 for loss in result["losses"])
    assert result["seconds_per_step"] == pytest.approx(statistics.median(result["step_seconds"][1:]))
    assert result["peak_rss_bytes"] >= result["setup_peak_rss_bytes"] > 10_000_000
    # LoRA r=16 on q, k, v, o, gate, up, down of 2 layers (hidden 64, intermediate 128, 2 KV heads of 16)
    per_layer = 16 * ((64 + 64) * 2 + (64 + 32) * 2 + (64 + 128) * 2 + (128 + 64))
    assert result["trainable_parameters"] == 2 * per_layer
    assert result["threads_used"] == 1 and result["versions"]["torch"]
    assert "step 3/3" in capsys.readouterr().err


def test_ours_and_peft_give_the_same_loss_curve(tiny_model: Path) -> None:
    ours, theirs = (train(_config(tiny_model, side), quiet=True) for side in (OURS, PEFT))
    assert ours["batch_token_sum"] == theirs["batch_token_sum"]
    assert ours["trainable_parameters"] == theirs["trainable_parameters"]
    assert ours["losses"][0] != ours["losses"][-1], "training must move the loss"
    assert max(abs(a - b) for a, b in zip(ours["losses"], theirs["losses"])) <= finetune.TARGET_LOSS_DIFFERENCE


def _run_cli(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], *argv: str
) -> tuple[dict[str, Any], str]:
    parser = argparse.ArgumentParser(prog="kcore")
    bench.register(parser.add_subparsers())
    out = tmp_path / "report.json"
    args = parser.parse_args(
        ["bench", "finetune", "--model", str(tiny_model), "--steps", "2", "--batch-size", "2", "--seq-len", "16",
         "--threads", "1", "--json", str(out), *argv]
    )
    assert args.func(args) == 0
    return json.loads(out.read_text()), capsys.readouterr().out


def test_cli_runs_both_sides_with_and_without_checkpointing(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report, printed = _run_cli(tiny_model, tmp_path, capsys)
    assert report["benchmark"] == "finetune" and report["gradient_checkpointing"] == ["off", "on"]
    assert report["comparable_with_references"] is False and report["steps"] == 2
    configs = [r["config"] for r in report["results"]]
    assert configs == ["kernel-core, GC off", "peft, GC off", "kernel-core, GC on", "peft, GC on"]
    for result in report["results"]:
        assert len(result["losses"]) == 2 and result["seconds_per_step"] > 0 and result["peak_rss_bytes"] > 0
    by_config = {r["config"]: r for r in report["results"]}
    for gc in ("off", "on"):
        ours, theirs = by_config[f"kernel-core, GC {gc}"], by_config[f"peft, GC {gc}"]
        step = report["ratios"][f"step_time_gc_{gc}"]
        assert step["value"] == pytest.approx(ours["seconds_per_step"] / theirs["seconds_per_step"])
        assert step["target"] == "<= 1" and isinstance(step["met"], bool)
        memory = report["ratios"][f"peak_rss_gc_{gc}"]
        assert memory["value"] == pytest.approx(ours["peak_rss_bytes"] / theirs["peak_rss_bytes"])
        check = report["loss_checks"][f"gc_{gc}"]
        assert check["met"] is True and check["value"] <= 1e-4
        assert report["ratios"][f"step_time_gc_{gc}_vs_reference"]["met"] is None
    # checkpointing recomputes activations but must not change what is computed
    on, off = by_config["kernel-core, GC on"]["losses"], by_config["kernel-core, GC off"]["losses"]
    assert on == pytest.approx(off, abs=1e-5)
    references = {r["config"]: (r["seconds_per_step"], r["peak_rss_gb"]) for r in report["references"]}
    assert references == {"peft 0.21.2, GC off": (18.0, 8.5), "peft 0.21.2, GC on": (22.5, 4.5)}
    assert all(r["measured_in_this_run"] is False for r in report["references"])
    for text in ("peft, GC on", "NOT measured in this run", "Loss per step", "max |loss kernel-core - loss peft|",
                 "settings differ"):
        assert text in printed


def test_cli_skip_peft(tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report, printed = _run_cli(tiny_model, tmp_path, capsys, "--skip-peft", "--gradient-checkpointing", "off")
    assert [r["config"] for r in report["results"]] == ["kernel-core, GC off"]
    assert report["loss_checks"] == {} and sorted(report["ratios"]) == [
        "peak_rss_gc_off_vs_reference", "step_time_gc_off_vs_reference"
    ]
    assert "kernel-core, GC off" in printed and "peft, GC off" not in printed.split("Reference numbers")[0]


def test_missing_peft_fails_before_running(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(finetune.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(finetune.KernelCoreError, match="--skip-peft"):
        finetune.benchmark(WorkerConfig(model=str(tmp_path), side=OURS, gradient_checkpointing=False), [False])


def test_steps_must_leave_a_timed_step() -> None:
    parser = argparse.ArgumentParser(prog="kcore")
    bench.register(parser.add_subparsers())
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "finetune", "--steps", "1"])

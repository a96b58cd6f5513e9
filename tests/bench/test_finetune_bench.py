"""``kcore bench finetune`` on the tiny random model: the worker's JSON, the same loss curve for our
PEFT under ``AdapterTrainer`` and ``peft`` under ``Trainer``, the report, and the CLI end to end
(DDP on 2 processes in the slow run). Structure and losses are checked, never speed."""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path
from typing import Any

import pytest

from kernel_core.bench import finetune
from kernel_core.bench.finetune_render import ddp_meaning, render
from kernel_core.bench.finetune_worker import OURS, PEFT, WorkerConfig, main, result_file, train
from kernel_core.cli import bench
from kernel_core.errors import KernelCoreError

TINY = {"batch_size": 2, "seq_len": 16, "threads": 1}


def _config(model: Path, side: str, gc: bool = False, steps: int = 3) -> WorkerConfig:
    return WorkerConfig(model=str(model), side=side, gradient_checkpointing=gc, steps=steps, **TINY)


def test_worker_writes_sane_json(tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "result.json"
    assert main([*_config(tiny_model, OURS, gc=True, steps=3).argv(), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert (result["side"], result["gradient_checkpointing"], result["config"]) == (OURS, True, "kernel-core, GC on")
    assert result["checkpointing_active"] is True and result["rank"] == 0 and result["nproc"] == 1
    assert len(result["losses"]) == len(result["step_seconds"]) == 3
    assert result["final_loss"] == result["losses"][-1]
    assert all(0 < loss < 20 for loss in result["losses"])
    assert result["seconds_per_step"] == pytest.approx(statistics.median(result["step_seconds"][1:]))
    assert result["peak_rss_bytes"] >= result["setup_peak_rss_bytes"] > 10_000_000
    # LoRA r=16 on q, k, v, o, gate, up, down of 2 layers (hidden 64, intermediate 128, 2 KV heads of 16)
    per_layer = 16 * ((64 + 64) * 2 + (64 + 32) * 2 + (64 + 128) * 2 + (128 + 64))
    assert result["trainable_parameters"] == 2 * per_layer
    assert result["threads_used"] == 1 and result["versions"]["transformers"] and result["optimizer"]
    assert "step 3/3" in capsys.readouterr().err


def test_ours_and_peft_give_the_same_loss_curve(tiny_model: Path) -> None:
    ours, theirs = (train(_config(tiny_model, side), quiet=True) for side in (OURS, PEFT))
    assert theirs["checkpointing_active"] is False and "peft" in theirs["versions"]
    for key in ("batch_token_sum", "trainable_parameters", "optimizer"):
        assert ours[key] == theirs[key], key
    assert ours["losses"][0] != ours["losses"][-1], "training must move the loss"
    assert max(abs(a - b) for a, b in zip(ours["losses"], theirs["losses"], strict=True)) <= finetune.TARGET_LOSS_DIFFERENCE


def test_a_worker_outside_its_launch_is_refused(tiny_model: Path) -> None:
    with pytest.raises(KernelCoreError, match="--nproc 2 but this worker runs as one of 1 process"):
        train(WorkerConfig(model=str(tiny_model), side=OURS, gradient_checkpointing=False, nproc=2))


def test_rank_files_sit_beside_the_result(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    assert result_file(out, 0) == out and result_file(out, 1) == tmp_path / "result.rank1.json"


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="kcore")
    bench.register(parser.add_subparsers())
    return parser.parse_args(["bench", "finetune", *argv])


def _run_cli(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], *argv: str
) -> tuple[dict[str, Any], str]:
    out = tmp_path / "report.json"
    args = _parse("--model", str(tiny_model), "--steps", "2", "--batch-size", "2", "--seq-len", "16",
                  "--threads", "1", "--json", str(out), *argv)
    assert args.func(args) == 0
    return json.loads(out.read_text()), capsys.readouterr().out


def test_cli_runs_one_configuration_in_a_subprocess(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report, printed = _run_cli(tiny_model, tmp_path, capsys, "--skip-peft", "--gradient-checkpointing", "off")
    [result] = report["results"]
    assert result["config"] == "kernel-core, GC off" and len(result["losses"]) == 2
    assert result["ranks"] == [{key: result[key] for key in ("rank", "seconds_per_step", "peak_rss_bytes", "threads_used", "losses")}]
    assert report["loss_checks"] == {} and sorted(report["ratios"]) == [
        "peak_rss_gc_off_vs_reference", "step_time_gc_off_vs_reference"
    ]
    assert report["cpu"]["usable_cpus"] >= 1 and "CPU: " in printed and "flags: " in printed
    assert "kernel-core, GC off" in printed and "peft, GC off" not in printed.split("Reference numbers")[0]


def test_report_of_both_sides_with_and_without_checkpointing(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole report from real (in-process) training runs: ratios, loss checks, references, text."""
    monkeypatch.setattr(finetune, "run_config", lambda config: {**train(config, quiet=True), "ranks": []})
    report = finetune.benchmark(_config(tiny_model, OURS, steps=2), [False, True], reference_model=False)
    data = report.to_dict()
    assert data["comparable_with_references"] is False and data["gradient_checkpointing"] == ["off", "on"]
    configs = [r["config"] for r in data["results"]]
    assert configs == ["kernel-core, GC off", "peft, GC off", "kernel-core, GC on", "peft, GC on"]
    assert [r["checkpointing_active"] for r in data["results"]] == [False, False, True, True]
    by_config = {r["config"]: r for r in data["results"]}
    for gc in ("off", "on"):
        ours, theirs = by_config[f"kernel-core, GC {gc}"], by_config[f"peft, GC {gc}"]
        step = data["ratios"][f"step_time_gc_{gc}"]
        assert step["value"] == pytest.approx(ours["seconds_per_step"] / theirs["seconds_per_step"])
        assert step["target"] == "<= 1" and isinstance(step["met"], bool)
        memory = data["ratios"][f"peak_rss_gc_{gc}"]
        assert memory["value"] == pytest.approx(ours["peak_rss_bytes"] / theirs["peak_rss_bytes"])
        check = data["loss_checks"][f"gc_{gc}"]
        assert check["met"] is True and check["value"] <= 1e-4
        assert data["ratios"][f"step_time_gc_{gc}_vs_reference"]["met"] is None
    # checkpointing recomputes activations but must not change what is computed
    on, off = by_config["kernel-core, GC on"]["losses"], by_config["kernel-core, GC off"]["losses"]
    assert on == pytest.approx(off, abs=1e-5)
    assert all(r["measured_in_this_run"] is False and r["judged"] is False for r in data["references"])
    printed = render(report)
    for text in ("peft, GC on", "NOT measured in this run, never judged", "Loss per step",
                 "max |loss kernel-core - peft, GC on|", "settings differ", "CPU: "):
        assert text in printed


def test_ddp_meaning_on_shared_cores() -> None:
    single = {"threads_used": 2}
    ddp = {"nproc": 2, "batch_size": 8, "threads_used": 1}
    text = ddp_meaning(single, ddp, {"usable_cpus": 2})
    assert "2 processes on 2 usable CPU(s), 1 torch thread(s) each, each rank on 4 of the 8" in text
    assert "not a speed-up" in text
    assert "not a speed-up" not in ddp_meaning({"threads_used": 1}, {**ddp, "threads_used": 4}, {"usable_cpus": 2})


def test_bad_nproc_is_refused_before_anything_runs() -> None:
    cores = len(os.sched_getaffinity(0))
    args = _parse("--nproc", str(cores + 1), "--batch-size", str(2 * (cores + 1)))
    with pytest.raises(KernelCoreError, match=rf"--nproc {cores + 1} is more than this machine allows"):
        args.func(args)
    args = _parse("--nproc", "2", "--batch-size", "3")
    with pytest.raises(KernelCoreError, match="--batch-size 3 does not split over --nproc 2"):
        args.func(args)


def test_missing_peft_fails_before_running(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(finetune.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(finetune.KernelCoreError, match="--skip-peft"):
        finetune.benchmark(WorkerConfig(model=str(tmp_path), side=OURS, gradient_checkpointing=False), [False])


def test_steps_must_leave_a_timed_step() -> None:
    with pytest.raises(SystemExit):
        _parse("--steps", "1")


@pytest.mark.slow
def test_cli_ddp_on_two_processes_trains_the_one_process_curve(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("--nproc 2 needs 2 usable CPUs")
    report, printed = _run_cli(tiny_model, tmp_path, capsys, "--skip-peft", "--gradient-checkpointing", "off",
                               "--nproc", "2")
    single, ddp = report["results"]
    assert ddp["config"] == "kernel-core, GC off, 2 processes (DDP)" and ddp["nproc"] == 2
    assert [r["rank"] for r in ddp["ranks"]] == [0, 1] and ddp["threads_used"] == 1
    assert ddp["batch_token_sum"] == single["batch_token_sum"]
    assert ddp["ranks"][0]["losses"] == ddp["ranks"][1]["losses"] == ddp["losses"]
    assert ddp["peak_rss_bytes"] == max(r["peak_rss_bytes"] for r in ddp["ranks"])
    check = report["loss_checks"]["ddp"]
    assert check["met"] is True and check["label"].startswith("max |loss 2 processes - 1 process")
    ratio = report["ratios"]["step_time_ddp"]
    assert ratio["value"] == pytest.approx(ddp["seconds_per_step"] / single["seconds_per_step"]) and ratio["met"] is None
    assert "What the DDP ratio means here" in printed and "each process" in printed

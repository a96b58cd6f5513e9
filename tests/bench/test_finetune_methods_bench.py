"""``kcore bench finetune --method``: argument handling, method selection (``all`` from the installed
tuners and peft's types, nothing per method), ``--set`` routing, each method's config, the report on a
fake result, and real runs on the tiny random model from one starting adapter made by peft.
Structure and losses are checked, never speed."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from kernel_core.bench import finetune_methods
from kernel_core.bench.finetune import TARGET_LOSS_DIFFERENCE
from kernel_core.bench.finetune_init import make_adapter
from kernel_core.bench.finetune_methods import MethodComparison, MethodsReport
from kernel_core.bench.finetune_render import render_methods
from kernel_core.bench.finetune_worker import OURS, PEFT, WorkerConfig, train
from kernel_core.cli import bench
from kernel_core.errors import KernelCoreError, UnknownPluginError
from kernel_core.peft.config import get_method

TINY = {"batch_size": 2, "seq_len": 16, "threads": 1}


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="kcore")
    bench.register(parser.add_subparsers())
    return parser.parse_args(["bench", "finetune", *argv])


def test_method_and_set_are_repeatable() -> None:
    args = _parse("--method", "ia3", "--method", "lora", "--set", "r=4", "--set", "lora:lora_alpha=8")
    assert args.method == ["ia3", "lora"] and args.set == ["r=4", "lora:lora_alpha=8"]
    assert (args.steps, args.batch_size, args.seq_len, args.r, args.gradient_checkpointing) == (None,) * 5
    assert _parse().method == []


@pytest.mark.parametrize(
    ("argv", "refused"),
    [
        (["--nproc", "2"], "--nproc cannot go with --method"),
        (["--skip-peft"], "--skip-peft cannot go with --method"),
        (["--r", "4"], r"--r cannot go with --method .*--set r=R"),
    ],
)
def test_lora_only_options_are_refused_with_method(argv: list[str], refused: str) -> None:
    args = _parse("--method", "lora", *argv)
    with pytest.raises(KernelCoreError, match=refused):
        args.func(args)


def test_set_needs_method() -> None:
    args = _parse("--set", "r=4")
    with pytest.raises(KernelCoreError, match="--set .* needs --method"):
        args.func(args)


def test_all_is_every_installed_tuner_peft_provides() -> None:
    installed = finetune_methods.installed_methods()
    peft_types = finetune_methods.peft_types()
    chosen = finetune_methods.select_methods(["all"], peft_types)
    assert [m.spec.name for m in chosen] == [m.spec.name for m in installed if m.spec.peft_type in peft_types]
    assert {"lora", "ia3"} <= {m.spec.name for m in chosen}
    # a peft without IA3 leaves it out of all, and refuses it by name
    without = peft_types - {"IA3"}
    assert "ia3" not in [m.spec.name for m in finetune_methods.select_methods(["all"], without)]
    with pytest.raises(KernelCoreError, match="peft has no 'IA3' method to compare with"):
        finetune_methods.select_methods(["ia3"], without)


def test_named_methods_keep_their_order_once_each() -> None:
    chosen = finetune_methods.select_methods(["IA3", "lora", "ia3"], finetune_methods.peft_types())
    assert [m.spec.name for m in chosen] == ["ia3", "lora"]
    with pytest.raises(UnknownPluginError, match="installed tuners"):
        finetune_methods.select_methods(["no-such-method"], finetune_methods.peft_types())


def test_set_goes_to_the_methods_that_have_the_field() -> None:
    lora, ia3 = get_method("lora"), get_method("ia3")
    split = finetune_methods.split_overrides({"r": 4, "ia3:init_ia3_weights": False}, [lora, ia3])
    assert split == {"lora": {"r": 4}, "ia3": {"init_ia3_weights": False}}
    with pytest.raises(KernelCoreError, match="'rank' is not a field of lora"):
        finetune_methods.split_overrides({"rank": 4}, [lora, ia3])
    with pytest.raises(KernelCoreError, match="'r' is not a field of ia3"):
        finetune_methods.split_overrides({"ia3:r": 4}, [lora, ia3])
    with pytest.raises(KernelCoreError, match="'loha' is not one of the methods run"):
        finetune_methods.split_overrides({"loha:r": 4}, [lora, ia3])


def test_config_is_the_methods_default_with_the_run_length() -> None:
    lora = finetune_methods.method_config(get_method("lora"), 6, {"r": 4})
    assert lora["peft_type"] == "LORA" and lora["r"] == 4 and lora["target_modules"] == "all-linear"
    adalora = finetune_methods.method_config(get_method("adalora"), 6, {})
    assert adalora["peft_type"] == "ADALORA" and adalora["total_step"] == 6 and adalora["task_type"] == "CAUSAL_LM"
    assert finetune_methods.method_config(get_method("adalora"), 6, {"total_step": 9})["total_step"] == 9
    with pytest.raises(KernelCoreError, match="r"):
        finetune_methods.method_config(get_method("lora"), 6, {"r": "many"})


def _result(side: str, seconds: float, rss: float, losses: list[float], load: float = 0.5) -> dict[str, Any]:
    return {
        "side": side, "seconds_per_step": seconds, "cpu_seconds_per_step": seconds, "peak_rss_bytes": rss * 1e9,
        "losses": losses, "trainable_parameters": 100, "load_average": [load, load, load],
    }


def test_report_of_fake_results() -> None:
    ok = MethodComparison("lora", "LORA", False, {"lora_dropout": 0.0},
                          _result(OURS, 1.0, 1.0, [3.0, 2.0]), _result(PEFT, 1.25, 1.1, [3.0, 2.00001], load=2.5))
    slow = MethodComparison("loha", "LOHA", False, {"rank_dropout": 0.1},
                            _result(OURS, 2.0, 1.0, [3.0, 2.0]), _result(PEFT, 1.0, 1.0, [3.0, 2.5]))
    failed = MethodComparison("vera", "VERA", False, {}, error="peft could not make the starting adapter")
    report = MethodsReport(
        {"methods": ["lora", "loha", "vera"], "batch_size": 4, "seq_len": 64, "lr": 1e-4, "steps": 2,
         "start": "one adapter made by peft"},
        [ok, slow, failed], {"model": "Test CPU", "key_flags": ["avx2"], "usable_cpus": 2, "flags": "fpu avx2"},
    )
    data = report.to_dict()
    by_method = {m["method"]: m for m in data["methods"]}
    assert by_method["lora"]["ratios"]["step_time"]["value"] == pytest.approx(0.8) and by_method["lora"]["met"] is True
    assert by_method["lora"]["loss_check"]["judged"] is True and by_method["lora"]["loss_check"]["met"] is True
    assert by_method["loha"]["met"] is False and by_method["loha"]["loss_check"]["judged"] is False
    assert "rank_dropout" in by_method["loha"]["loss_not_judged_because"]
    assert by_method["vera"]["met"] is None and by_method["vera"]["error"].startswith("peft could not")
    assert data["targets"]["step_time"] == "<= 1" and data["mode"] == "methods"
    printed = render_methods(report)
    for text in ("CPU: Test CPU", "flags: fpu avx2", "lora, loha, vera", "5.00e-01 (not judged)", "Did not run:",
                 "vera (GC off): peft could not make", "load average at the end of each run: 0.50 to 2.50"):
        assert text in printed, text
    [lora_row] = [line for line in printed.splitlines() if line.startswith("lora ")]
    assert "0.8" in lora_row and "yes" in lora_row


def _in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """The benchmark's two subprocesses run in this process (as test_finetune_bench does)."""
    def start(template: WorkerConfig, config: dict[str, Any], folder: Path) -> Path:
        make_adapter(template.model, config, template.seed, folder / "adapter")
        return folder / "adapter"

    monkeypatch.setattr(finetune_methods, "make_start_adapter", start)
    monkeypatch.setattr(finetune_methods, "run_config", lambda config: train(config, quiet=True))


def test_lora_adalora_and_prompt_tuning_train_the_same_curve_as_peft(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AdaLoRA masks its ranks from the first step (tinit 0): peft's update_and_allocate and ours
    agree; prompt tuning reaches peft through set_peft_model_state_dict (peft's from_pretrained
    refuses to make a prompt-learning adapter trainable)."""
    _in_process(monkeypatch)
    template = WorkerConfig(model=str(tiny_model), side=OURS, gradient_checkpointing=False, steps=3, lr=1e-2, **TINY)
    methods = [get_method("lora"), get_method("adalora"), get_method("prompt-tuning")]
    overrides = {"lora": {"r": 4}, "prompt-tuning": {"num_virtual_tokens": 4}}
    report = finetune_methods.benchmark_methods(template, methods, overrides, [False])
    data = report.to_dict()
    assert data["methods"][0]["config"]["r"] == 4 and data["methods"][1]["config"]["total_step"] == 3
    for entry in data["methods"]:
        assert entry["error"] is None and entry["same_trainable_parameters"] is True, entry["method"]
        ours, theirs = entry["results"]
        assert ours["config"] == f"{entry['method']}, kernel-core, GC off" and theirs["side"] == PEFT
        assert ours["losses"][0] != ours["losses"][-1], "training must move the loss"
        assert entry["loss_check"]["judged"] is True
        assert entry["loss_check"]["value"] <= TARGET_LOSS_DIFFERENCE, entry["method"]
        assert isinstance(entry["met"], bool)
    assert "lora" in render_methods(report) and "adalora" in render_methods(report)


@pytest.mark.slow
def test_cli_method_runs_in_subprocesses(tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report.json"
    args = _parse("--model", str(tiny_model), "--method", "ia3", "--steps", "2", "--batch-size", "2",
                  "--seq-len", "16", "--json", str(out))
    assert args.func(args) == 0
    data = json.loads(out.read_text())
    [entry] = data["methods"]
    assert entry["method"] == "ia3" and entry["error"] is None and entry["loss_check"]["met"] is True
    assert [r["threads_used"] for r in entry["results"]] == [1, 1]  # --method's default
    assert data["steps"] == 2 and data["cpu"]["usable_cpus"] >= 1
    assert "ia3" in capsys.readouterr().out

"""``kcore finetune``: help, options and the TrainingArguments fields they set, one-line errors naming
the culprit before the model loads, and end to end on the tiny model: train with checkpoints, resume
onto the same trajectory, and a final adapter that loads in kernel-core's PeftModel and in HF peft alike.
What a job does while it trains is tested in tests/finetune/test_run.py."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from kernel_core.cli import finetune, main
from kernel_core.finetune import arguments

from ..finetune.trajectory import assert_same_adapter, log_history, trajectory

ROWS = [
    {"prompt": "Capital of France:", "completion": " Paris"},
    {"messages": [{"role": "user", "content": "Italy"}, {"role": "assistant", "content": "Rome"}]},
    {"prompt": "Capital of Spain:", "completion": " Madrid"},
    {"messages": [{"role": "user", "content": "Japan"}, {"role": "assistant", "content": "Tokyo"}]},
    {"prompt": "Capital of Peru:", "completion": " Lima"},
    {"prompt": "Capital of Cuba:", "completion": " Havana"},
]
#: Neither exists: an error about anything else shows that nothing was read or loaded first.
NOTHING = ["--model", "/nonexistent/model", "--data", "/nonexistent/train.jsonl", "--output", "/nonexistent/out"]


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="kcore")
    finetune.register(parser.add_subparsers())
    return parser.parse_args(["finetune", *argv])


def _write(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.startswith("kcore: error: ") and err.count("\n") == 1, err
    return err.removeprefix("kcore: error: ").rstrip("\n")


def test_help_explains_data_training_arguments_and_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    text = capsys.readouterr().out
    for needle in ('{"prompt"', '{"messages"', '{"text"', "Parquet", "checkpoint-<step>", "--resume", "--gradient-checkpointing",
                   "--precision {fp32,bf16,fp16}", "--eval-exact-match", "--warmup-ratio", "--max-grad-norm",
                   "--training-args FILE.json", "--set KEY=VALUE", "--list-training-args", "--nproc N", "--streaming",
                   "--packing", "TrainingArguments", "docs/finetune.md", "--method M --show-config", "--adapter-config FILE.json"):
        assert needle in text, needle


def test_flags_set_their_training_arguments_fields_and_nothing_else() -> None:
    args = _parse("--data", "d.jsonl", "--output", "out")
    # the adapter's shortcuts are passed only when given (kernel_core.finetune.adapter_options)
    assert (args.method, args.r, args.alpha, args.dropout, args.target_modules, args.nproc) == ("lora", None, None, None, None, 1)
    assert finetune.shortcut_values(args) == {}  # kernel-core's defaults stay (arguments.kcore_defaults)
    args = _parse(
        "--data", "d", "--output", "o", "--epochs", "2", "--max-steps", "9", "--lr", "1e-4", "--weight-decay", "0.1",
        "--batch-size", "8", "--grad-accum", "4", "--warmup-ratio", "0.1", "--max-grad-norm", "0", "--seed", "3",
        "--precision", "bf16", "--gradient-checkpointing", "--save-steps", "5", "--no-progress",
    )
    assert finetune.shortcut_values(args) == {
        "num_train_epochs": 2.0, "max_steps": 9, "learning_rate": 1e-4, "weight_decay": 0.1,
        "per_device_train_batch_size": 8, "per_device_eval_batch_size": 8, "gradient_accumulation_steps": 4,
        "warmup_steps": 0.1, "max_grad_norm": 0.0, "seed": 3, "bf16": True, "fp16": False,
        "activation_checkpointing": True, "activation_checkpointing_kwargs": {"use_reentrant": False},
        "save_strategy": "steps", "save_steps": 5, "disable_tqdm": True,
    }
    built = arguments.build(Path("o"), [("defaults", {"use_cpu": True}), ("flags", {"warmup_steps": 0.1})])
    assert built.get_warmup_steps(25) == 3  # --warmup-ratio: a share of the steps, rounded up
    assert _parse("--data", "d", "--output", "o", "--target-modules", "q_proj, v_proj").target_modules == ["q_proj", "v_proj"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--lr", "0"], "argument --lr: must be more than 0"),
        (["--batch-size", "0"], "argument --batch-size: must be at least 1"),
        (["--warmup-ratio", "1"], "argument --warmup-ratio: must be in [0, 1)"),
        (["--nproc", "0"], "argument --nproc: must be at least 1"),
        (["--precision", "fp8"], "invalid choice: 'fp8'"),
        (["--target-modules", ","], "must name at least one module"),
    ],
)
def test_bad_option_values_are_usage_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        _parse("--data", "d", "--output", "o", *argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def _training_args_files(folder: Path) -> dict[str, Path]:
    files = {"missing": folder / "missing.json", "bad": folder / "bad.json", "list": folder / "list.json", "typo": folder / "typo.json"}
    files["bad"].write_text('{"learning_rate": 1e-4,\n}')
    files["list"].write_text("[1, 2]")
    files["typo"].write_text(json.dumps({"lerning_rate": 1e-4}))
    return files


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--set", "lerning_rate=1e-4"], "--set lerning_rate: not a field of LoraConfig (the lora method's options; kcore finetune "
                                         "--method lora --show-config lists them) nor of TrainingArguments (kcore finetune "
                                         "--list-training-args lists them); did you mean 'learning_rate'?"),
        (["--set", "training.lerning_rate=1e-4"], "--set: 'lerning_rate' is not a TrainingArguments field (did you mean 'learning_rate'?)"),
        (["--set", "save_strategy=sometimes"], "--set: save_strategy='sometimes' is invalid: "),
        (["--set", "output_dir=elsewhere"], "--set: output_dir is set by --output, not here"),
        (["--set", "learning_rate"], "--set 'learning_rate': expected key=value"),
        (["--training-args", "{missing}"], "--training-args {missing} does not exist"),
        (["--training-args", "{bad}"], "--training-args {bad}:2: not valid JSON"),
        (["--training-args", "{list}"], "--training-args {list} must hold a JSON object of TrainingArguments fields"),
        (["--training-args", "{typo}"], "--training-args {typo}: 'lerning_rate' is not a TrainingArguments field"),
        (["--warmup-ratio", "0.1", "--warmup-steps", "2"], "--warmup-ratio and --warmup-steps both set warmup_steps: give one"),
    ],
)
def test_bad_training_arguments_are_named_before_anything_loads(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = _training_args_files(tmp_path)
    assert main(["finetune", *NOTHING, *(item.format(**files) for item in argv)]) == 2
    assert _one_line_error(capsys).startswith(message.format(**files))


def test_more_processes_than_cores_is_refused_before_any_starts(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KERNEL_CORE_PLATFORM", "cpu")
    cores = len(os.sched_getaffinity(0))
    assert main(["finetune", *NOTHING, "--nproc", str(cores + 1)]) == 2
    assert _one_line_error(capsys) == f"--nproc {cores + 1} is more than this machine allows: it has {cores} usable CPU core(s)"


def test_missing_data_or_output_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["finetune", "--output", "o"]) == 2
    assert _one_line_error(capsys) == "kcore finetune needs --data (see kcore finetune --help)"
    assert main(["finetune"]) == 2
    assert _one_line_error(capsys).startswith("kcore finetune needs --data and --output")


def test_list_training_args_prints_every_field(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["finetune", "--list-training-args"]) == 0
    out = capsys.readouterr().out
    assert set(re.findall(r"^(\w+) \(", out, re.MULTILINE)) == set(arguments.fields())
    assert "learning_rate (float, default 5e-05)" in out  # transformers' own default, with its type


def test_a_malformed_row_is_a_one_line_error(tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _write(tmp_path / "train.jsonl", [ROWS[0], '{"prompt": "no completion"}'])
    assert main(["finetune", "--model", str(tiny_model), "--data", str(data), "--output", str(tmp_path / "out")]) == 2
    error = _one_line_error(capsys)
    assert error.startswith(f"{data}:2: missing key 'completion'"), error
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("rows", "flags"), [([], []), ([{"prompt": "A long prompt, longer than three tokens", "completion": " x"}], ["--max-len", "3"])])
def test_a_data_file_with_no_usable_rows_is_named(
    rows: list[Any], flags: list[str], tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _write(tmp_path / "train.jsonl", rows)
    assert main(["finetune", "--model", str(tiny_model), "--data", str(data), "--output", str(tmp_path / "out"), *flags]) == 2
    assert _one_line_error(capsys).startswith(f"data file {data}")


def test_train_checkpoint_resume_and_load_the_adapter(tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import peft
    from transformers import AutoModelForCausalLM

    from kernel_core.peft import PeftModel

    data = _write(tmp_path / "train.jsonl", ROWS)
    held_out = _write(tmp_path / "held_out.jsonl", ROWS[:3])
    argv = [
        "finetune", "--model", str(tiny_model), "--data", str(data), "--eval-data", str(held_out),
        "--eval-exact-match", str(held_out), "--max-new-tokens", "3", "--max-steps", "4", "--save-steps", "2",
        "--batch-size", "2", "--r", "4", "--alpha", "8", "--dropout", "0.1", "--target-modules", "q_proj,v_proj",
        "--lr", "1e-2", "--warmup-steps", "1", "--seed", "7", "--set", "use_rslora=true", "--no-progress",
    ]
    whole = tmp_path / "whole"
    assert main([*argv, "--output", str(whole)]) == 0
    out = capsys.readouterr().out
    assert "exact match before training: " in out and "exact match after training: " in out
    assert "trained 4 steps" in out and "eval loss at step 4" in out
    assert sorted(p.name for p in whole.iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors", "checkpoint-2", "checkpoint-4", "loss.png",
        "trainer_state.json", "training_args.json",
    ]
    assert not list(whole.rglob("training_args.bin"))  # Trainer's pickle of the arguments: JSON instead
    config = json.loads((whole / "adapter_config.json").read_text())
    assert sorted(config["target_modules"]) == ["q_proj", "v_proj"] and config["r"] == 4 and config["use_rslora"] is True
    history = log_history(whole)
    assert [r["step"] for r in history if "loss" in r] == [1, 2, 3, 4]
    assert [r["step"] for r in history if "eval_loss" in r] == [2, 4]

    # A run interrupted after its step-2 checkpoint, continued with --resume: the same trajectory
    # (LoRA dropout included: the random state comes back too).
    cut = tmp_path / "cut"
    cut.mkdir()
    shutil.copytree(whole / "checkpoint-2", cut / "checkpoint-2")
    assert main([*argv, "--output", str(cut), "--resume"]) == 0
    assert f"resuming from {cut / 'checkpoint-2'}" in capsys.readouterr().out
    assert trajectory(cut) == trajectory(whole)
    for folder in ("checkpoint-4", "."):
        assert_same_adapter(cut / folder, whole / folder)

    # The final adapter loads in kernel-core's PeftModel and in HF peft, to the same model.
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    with torch.no_grad():
        base_logits = base(input_ids=ids).logits
        ours = PeftModel.from_pretrained(base, whole).eval()
        ours_logits = ours(input_ids=ids).logits
        theirs = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32), whole).eval()
        theirs_logits = theirs(input_ids=ids).logits
    torch.testing.assert_close(ours_logits, theirs_logits)
    assert not torch.allclose(ours_logits, base_logits)  # training moved the adapter off its zero start

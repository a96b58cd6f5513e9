"""``kcore finetune``: options, one-line errors before the model loads, and end to end on the tiny
model: train with checkpoints, resume onto the same trajectory, and a final adapter that loads in
kernel-core's PeftModel and in HF peft alike."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from kernel_core.cli import finetune, main

ROWS = [
    {"prompt": "Capital of France:", "completion": " Paris"},
    {"messages": [{"role": "user", "content": "Italy"}, {"role": "assistant", "content": "Rome"}]},
    {"prompt": "Capital of Spain:", "completion": " Madrid"},
    {"messages": [{"role": "user", "content": "Japan"}, {"role": "assistant", "content": "Tokyo"}]},
    {"prompt": "Capital of Peru:", "completion": " Lima"},
    {"prompt": "Capital of Cuba:", "completion": " Havana"},
]


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="kcore")
    finetune.register(parser.add_subparsers())
    return parser.parse_args(["finetune", *argv])


def _write(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


def test_help_explains_data_checkpoints_and_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    text = capsys.readouterr().out
    for needle in ('{"prompt"', '{"messages"', "checkpoint-<step>", "--resume", "--gradient-checkpointing",
                   "--precision {fp32,bf16,fp16}", "--eval-exact-match", "--warmup-ratio", "--max-grad-norm",
                   "never pickle", "docs/finetuning.md"):
        assert needle in text, needle


def test_defaults_and_option_types() -> None:
    args = _parse("--data", "d.jsonl", "--output", "out")
    assert (args.method, args.r, args.alpha, args.target_modules, args.precision) == ("lora", 16, 32.0, "all-linear", "fp32")
    assert (args.epochs, args.batch_size, args.grad_accum, args.max_grad_norm, args.resume) == (1, 4, 1, 1.0, False)
    assert _parse("--data", "d", "--output", "o", "--target-modules", "q_proj, v_proj").target_modules == ["q_proj", "v_proj"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--output", "o"], "the following arguments are required: --data"),
        (["--data", "d", "--output", "o", "--lr", "0"], "argument --lr: must be more than 0"),
        (["--data", "d", "--output", "o", "--batch-size", "0"], "argument --batch-size: must be at least 1"),
        (["--data", "d", "--output", "o", "--warmup-ratio", "0.1", "--warmup-steps", "2"], "not allowed with"),
        (["--data", "d", "--output", "o", "--precision", "fp8"], "invalid choice: 'fp8'"),
        (["--data", "d", "--output", "o", "--target-modules", ","], "must name at least one module"),
    ],
)
def test_bad_options_are_usage_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        _parse(*argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_a_malformed_row_is_a_one_line_error(tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _write(tmp_path / "train.jsonl", [ROWS[0], '{"prompt": "no completion"}'])
    code = main(["finetune", "--model", str(tiny_model), "--data", str(data), "--output", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err
    assert err == f"kcore: error: {data}:2: missing key 'completion': a row is either " \
        '{"prompt": ..., "completion": ...} or {"messages": [...]}\n'
    assert not (tmp_path / "out").exists()


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


def test_train_checkpoint_resume_and_load_the_adapter(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import peft
    from transformers import AutoModelForCausalLM

    from kernel_core.peft import PeftModel

    data = _write(tmp_path / "train.jsonl", ROWS)
    held_out = _write(tmp_path / "held_out.jsonl", ROWS[:3])
    monkeypatch.setattr(torch, "save", lambda *a, **k: pytest.fail("torch.save pickles; checkpoints must not"))
    argv = [
        "finetune", "--model", str(tiny_model), "--data", str(data), "--eval-data", str(held_out),
        "--eval-exact-match", str(held_out), "--max-new-tokens", "3", "--max-steps", "4", "--save-steps", "2",
        "--batch-size", "2", "--r", "4", "--alpha", "8", "--dropout", "0.1", "--lr", "1e-2", "--warmup-steps", "1",
        "--seed", "7", "--no-progress",
    ]
    whole = tmp_path / "whole"
    assert main([*argv, "--output", str(whole)]) == 0
    out = capsys.readouterr().out
    assert "exact match before training: " in out and "exact match after training: " in out
    assert "trained 4 steps" in out and "eval loss at step 4" in out
    assert sorted(p.name for p in whole.iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors", "checkpoint-2", "checkpoint-4", "train_log.json"
    ]
    assert not [p for p in whole.rglob("*") if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt")]
    log = json.loads((whole / "train_log.json").read_text())
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3, 4]
    assert [r["step"] for r in log if "eval_loss" in r] == [2, 4]

    # The same output folder again without --resume would mix two runs: refused.
    assert main([*argv, "--output", str(whole)]) == 2
    assert "already holds checkpoints" in capsys.readouterr().err

    # A run interrupted after its step-2 checkpoint, continued with --resume: the same trajectory.
    cut = tmp_path / "cut"
    cut.mkdir()
    shutil.copytree(whole / "checkpoint-2", cut / "checkpoint-2")
    assert main([*argv, "--output", str(cut), "--resume"]) == 0
    assert f"resuming from {cut / 'checkpoint-2'}" in capsys.readouterr().out
    assert json.loads((cut / "train_log.json").read_text()) == log
    for name, tensor in _tensors(whole).items():
        assert torch.equal(_tensors(cut)[name], tensor), name

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


def test_gradient_checkpointing_and_precision_reach_the_loop(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from kernel_core.finetune import run as run_module

    seen: dict[str, Any] = {}
    real_train = run_module.train

    def spy(model: Any, examples: Any, config: Any, **kwargs: Any) -> Any:
        seen["precision"] = config.precision
        hf_model = model.base_model.model
        seen["checkpointing"] = getattr(hf_model, "is_activation_checkpointing", None) or hf_model.is_gradient_checkpointing
        return real_train(model, examples, config, **kwargs)

    monkeypatch.setattr(run_module, "train", spy)
    data = _write(tmp_path / "train.jsonl", ROWS[:2])
    argv = ["finetune", "--model", str(tiny_model), "--data", str(data), "--output", str(tmp_path / "out"),
            "--max-steps", "1", "--batch-size", "2", "--r", "2", "--target-modules", "q_proj,v_proj",
            "--gradient-checkpointing", "--precision", "bf16", "--no-progress"]
    assert main(argv) == 0
    assert seen == {"precision": "bf16", "checkpointing": True}
    config = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert sorted(config["target_modules"]) == ["q_proj", "v_proj"] and config["r"] == 2
    assert "bf16" in capsys.readouterr().out


def test_resume_without_a_checkpoint_starts_from_scratch(
    tiny_model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _write(tmp_path / "train.jsonl", ROWS[:1])
    argv = ["finetune", "--model", str(tiny_model), "--data", str(data), "--output", str(tmp_path / "out"),
            "--max-steps", "1", "--r", "2", "--no-progress", "--resume"]
    assert main(argv) == 0
    assert "no checkpoint under" in caplog.text and "starting from scratch" in caplog.text
    assert "trained 1 step:" in capsys.readouterr().out
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()

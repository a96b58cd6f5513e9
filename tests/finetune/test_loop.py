"""The training loop on a plain transformers model whose query projections stand in for an adapter:
resuming continues the exact trajectory, accumulation equals a bigger batch, the schedule warms up
then decays, gradients are clipped, eval loss is measured, and nothing is pickled."""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch.optim.optimizer import register_optimizer_step_pre_hook

from kernel_core.errors import CheckpointError, KernelCoreError
from kernel_core.finetune.checkpoint import latest_checkpoint
from kernel_core.finetune.data import IGNORE_INDEX, encode_row
from kernel_core.finetune.loop import TrainConfig, evaluate_loss, token_loss_sum, train


class Interrupted(Exception):
    pass


def _trainable(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def _saver(model: torch.nn.Module) -> Callable[[Path], None]:
    return lambda folder: save_file(_trainable(model), str(folder / "weights.safetensors"))


def _restore(model: torch.nn.Module, folder: Path) -> torch.nn.Module:
    model.load_state_dict(load_file(str(folder / "weights.safetensors")), strict=False)
    return model


@pytest.fixture
def examples(tokenizer: Any, capital_rows: list[dict[str, Any]]) -> list[Any]:
    return [encode_row(row, tokenizer) for row in capital_rows]


@pytest.fixture
def no_pickle(monkeypatch: pytest.MonkeyPatch) -> None:
    """Checkpoints must never pickle: any attempt fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a checkpoint was pickled")

    monkeypatch.setattr(torch, "save", refuse)
    monkeypatch.setattr(pickle, "dump", refuse)
    monkeypatch.setattr(pickle, "dumps", refuse)


def test_resume_continues_the_uninterrupted_trajectory(
    load_tiny: Callable[..., Any], examples: list[Any], tokenizer: Any, tmp_path: Path, no_pickle: None
) -> None:
    # 12 rows, 2 per batch, 2 batches per step: 3 steps per epoch, so the run crosses an epoch;
    # attention dropout draws random numbers, so the RNG state must be restored too.
    config = TrainConfig(max_steps=4, batch_size=2, grad_accum=2, learning_rate=5e-2, warmup_steps=1, save_steps=2, seed=3)
    common = {"pad_token_id": tokenizer.pad_token_id, "progress": False, "eval_examples": examples[:3]}

    whole_model = load_tiny(attention_dropout=0.3)
    whole = train(whole_model, examples, config, output_dir=tmp_path / "whole", save_adapter=_saver(whole_model), **common)

    def stop_after_three(record: dict[str, Any]) -> None:
        if record["step"] == 3:
            raise Interrupted

    first = load_tiny(attention_dropout=0.3)
    with pytest.raises(Interrupted):
        train(first, examples, config, output_dir=tmp_path / "cut", save_adapter=_saver(first), on_step=stop_after_three, **common)
    resume_from = latest_checkpoint(tmp_path / "cut")
    assert resume_from == tmp_path / "cut" / "checkpoint-2"

    second = _restore(load_tiny(attention_dropout=0.3), resume_from)
    torch.manual_seed(1234)  # whatever happened to the RNG in between, the checkpoint's state wins
    resumed = train(second, examples, config, output_dir=tmp_path / "cut", save_adapter=_saver(second), resume_from=resume_from, **common)

    assert resumed.step == whole.step == 4
    assert resumed.log == whole.log  # every loss, learning rate, gradient norm and eval loss, exactly
    assert len(whole.losses) == 4 and [step for step, _ in whole.eval_losses] == [2, 4]
    for name, value in _trainable(whole_model).items():
        assert torch.equal(_trainable(second)[name], value), name
    assert whole.losses[-1] < whole.losses[0]


def test_resume_refuses_a_run_with_other_settings(
    load_tiny: Callable[..., Any], examples: list[Any], tokenizer: Any, tmp_path: Path
) -> None:
    model = load_tiny()
    config = TrainConfig(max_steps=1, batch_size=1, save_steps=1)
    train(model, examples[:2], config, pad_token_id=tokenizer.pad_token_id, output_dir=tmp_path, save_adapter=_saver(model), progress=False)
    other = TrainConfig(max_steps=2, batch_size=2, save_steps=1)
    with pytest.raises(CheckpointError, match="batch_size=1"):
        train(model, examples[:2], other, pad_token_id=tokenizer.pad_token_id, output_dir=tmp_path,
              save_adapter=_saver(model), resume_from=tmp_path / "checkpoint-1", progress=False)


def test_gradient_accumulation_equals_one_bigger_batch(
    load_tiny: Callable[..., Any], examples: list[Any], tokenizer: Any, tmp_path: Path
) -> None:
    grads: list[list[torch.Tensor]] = []

    def record(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        grads.append([p.grad.clone() for group in optimizer.param_groups for p in group["params"]])

    logs = []
    handle = register_optimizer_step_pre_hook(record)
    try:
        for batch_size, grad_accum in ((4, 1), (2, 2), (1, 4)):
            config = TrainConfig(max_steps=1, batch_size=batch_size, grad_accum=grad_accum)
            result = train(load_tiny(), examples, config, pad_token_id=tokenizer.pad_token_id, output_dir=tmp_path, progress=False)
            logs.append(result.log[0])
    finally:
        handle.remove()
    for log, step_grads in zip(logs[1:], grads[1:]):
        assert log["tokens"] == logs[0]["tokens"]
        assert log["loss"] == pytest.approx(logs[0]["loss"], rel=1e-5)
        for grad, expected in zip(step_grads, grads[0], strict=True):
            torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-7)


def test_warmup_then_cosine_clipping_and_progress_bar(
    load_tiny: Callable[..., Any],
    examples: list[Any],
    tokenizer: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    clipped: list[tuple[float, float]] = []
    real_clip = torch.nn.utils.clip_grad_norm_

    def spy(parameters: Any, max_norm: float, *args: Any, **kwargs: Any) -> torch.Tensor:
        parameters = list(parameters)
        norm = real_clip(parameters, max_norm, *args, **kwargs)
        after = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in parameters]))
        clipped.append((max_norm, float(after)))
        return norm

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    config = TrainConfig(max_steps=5, batch_size=1, learning_rate=0.1, warmup_steps=2, max_grad_norm=1e-3)
    result = train(load_tiny(), examples[:2], config, pad_token_id=tokenizer.pad_token_id, output_dir=tmp_path)

    assert [record["lr"] for record in result.log] == pytest.approx([0.0, 0.05, 0.1, 0.075, 0.025])
    assert all(record["grad_norm"] > 1e-3 for record in result.log)  # the norm before clipping is logged
    assert len(clipped) == 5 and all(max_norm == 1e-3 and after <= 1e-3 * 1.001 for max_norm, after in clipped)
    bar = capsys.readouterr().err
    assert "finetune" in bar and "loss=" in bar and "tok_s=" in bar
    assert TrainConfig(warmup_ratio=0.1).num_warmup_steps(25) == 3


def test_eval_loss_is_the_mean_over_target_tokens(load_tiny: Callable[..., Any], examples: list[Any], tokenizer: Any) -> None:
    model = load_tiny()
    model.train()
    loss = evaluate_loss(model, examples[:3], batch_size=2, pad_token_id=tokenizer.pad_token_id)
    assert model.training
    total, count = 0.0, 0
    with torch.no_grad():
        model.eval()
        for example in examples[:3]:
            ids, labels = torch.tensor([example.input_ids]), torch.tensor([example.labels])
            total += token_loss_sum(model(input_ids=ids).logits, labels).item()
            count += int((labels[:, 1:] != IGNORE_INDEX).sum())
    assert loss == pytest.approx(total / count, rel=1e-5)


def test_a_model_with_nothing_to_train_is_refused(load_tiny: Callable[..., Any], examples: list[Any], tmp_path: Path) -> None:
    model = load_tiny().requires_grad_(False)
    with pytest.raises(KernelCoreError, match="no trainable parameter"):
        train(model, examples, TrainConfig(), pad_token_id=0, output_dir=tmp_path, progress=False)


def test_reduced_precision_training_steps(load_tiny: Callable[..., Any], examples: list[Any], tokenizer: Any, tmp_path: Path) -> None:
    losses = {}
    for precision in ("fp32", "bf16", "fp16"):
        config = TrainConfig(max_steps=1, batch_size=2, save_steps=1, precision=precision)
        model = load_tiny()
        result = train(model, examples[:2], config, pad_token_id=tokenizer.pad_token_id, output_dir=tmp_path / precision,
                       save_adapter=_saver(model), progress=False)
        losses[precision] = result.losses[0]
        state = json.loads((tmp_path / precision / "checkpoint-1" / "training_state.json").read_text())
        assert (state["scaler"] is not None) == (precision == "fp16")  # only fp16 scales the loss
    assert losses["bf16"] != losses["fp32"] and losses["bf16"] == pytest.approx(losses["fp32"], rel=2e-2)
    assert losses["fp16"] == pytest.approx(losses["fp32"], rel=1e-2)

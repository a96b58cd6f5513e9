"""Precision really changes the computation: bf16 autocast makes matmuls bf16 and the loss close to,
but not equal to, fp32's; fp16 brings a loss scaler. Gradient checkpointing really keeps fewer
bytes for backward, and gives the same gradients."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from kernel_core.finetune.data import collate, encode_row
from kernel_core.finetune.loop import enable_gradient_checkpointing, token_loss_sum
from kernel_core.finetune.precision import autocast, autocast_dtype, grad_scaler


def _batch(tokenizer: Any) -> dict[str, torch.Tensor]:
    rows = [
        {"prompt": "The capital of France is", "completion": " Paris, a city on the Seine."},
        {"prompt": "Two plus two is", "completion": " four"},
    ]
    return collate([encode_row(row, tokenizer) for row in rows], tokenizer.pad_token_id)


def _loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], precision: str) -> torch.Tensor:
    with autocast(precision, "cpu"):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return token_loss_sum(logits, batch["labels"])


def test_precision_names() -> None:
    assert autocast_dtype("fp32") is None
    assert autocast_dtype("bf16") is torch.bfloat16
    assert autocast_dtype("fp16") is torch.float16
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        autocast_dtype("fp8")
    assert grad_scaler("fp32", "cpu") is None and grad_scaler("bf16", "cpu") is None
    assert isinstance(grad_scaler("fp16", "cpu"), torch.amp.GradScaler)


def test_bf16_runs_matmuls_in_bf16_and_moves_the_loss_a_little(load_tiny: Callable[..., Any], tokenizer: Any) -> None:
    model = load_tiny()
    batch = _batch(tokenizer)
    seen: list[torch.dtype] = []
    model.model.layers[0].mlp.down_proj.register_forward_hook(lambda module, args, output: seen.append(output.dtype))
    with torch.no_grad():
        fp32, bf16 = _loss(model, batch, "fp32"), _loss(model, batch, "bf16")
    assert seen == [torch.float32, torch.bfloat16]
    assert model.model.layers[0].mlp.down_proj.weight.dtype == torch.float32  # weights stay fp32
    assert fp32.dtype == bf16.dtype == torch.float32  # the loss is computed in fp32 either way
    assert bf16.item() != fp32.item()
    assert bf16.item() == pytest.approx(fp32.item(), rel=2e-2)


def test_fp16_training_step_with_loss_scaling(load_tiny: Callable[..., Any], tokenizer: Any) -> None:
    model = load_tiny()
    batch = _batch(tokenizer)
    scaler = grad_scaler("fp16", "cpu")
    loss = _loss(model, batch, "fp16") / int((batch["labels"][:, 1:] != -100).sum())
    scaler.scale(loss).backward()
    weight = model.model.layers[0].self_attn.q_proj.weight
    assert weight.grad.dtype == torch.float32
    scaled = weight.grad.clone()
    optimizer = torch.optim.AdamW([weight], lr=1e-3)
    scaler.unscale_(optimizer)
    assert torch.allclose(weight.grad * scaler.get_scale(), scaled)


def _saved_bytes_and_grads(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[int, list[torch.Tensor]]:
    saved = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        saved += tensor.numel() * tensor.element_size()
        return tensor

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = _loss(model, batch, "fp32")
    loss.backward()
    return saved, [p.grad.clone() for p in model.parameters() if p.requires_grad]


def test_gradient_checkpointing_saves_fewer_bytes_for_the_same_gradients(load_tiny: Callable[..., Any], tokenizer: Any) -> None:
    batch = _batch(tokenizer)
    plain_bytes, plain_grads = _saved_bytes_and_grads(load_tiny(), batch)
    model = load_tiny()
    enable_gradient_checkpointing(model)
    assert model.config.use_cache is False
    checkpointed_bytes, checkpointed_grads = _saved_bytes_and_grads(model, batch)
    assert checkpointed_bytes < plain_bytes
    for plain, checkpointed in zip(plain_grads, checkpointed_grads, strict=True):
        torch.testing.assert_close(checkpointed, plain)

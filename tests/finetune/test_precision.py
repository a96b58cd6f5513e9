"""The precision exact-match generation runs in, the one training used: bf16 autocast makes matmuls
bf16 while the weights and the loss stay fp32, and moves the loss a little; fp32 is no autocast."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from kernel_core.finetune.data import DataCollator, encode_row
from kernel_core.finetune.precision import autocast, autocast_dtype


def test_precision_names() -> None:
    assert autocast_dtype("fp32") is None
    assert autocast_dtype("bf16") is torch.bfloat16
    assert autocast_dtype("fp16") is torch.float16
    with pytest.raises(ValueError, match="unknown precision 'fp8'; choose one of fp32, bf16, fp16"):
        autocast_dtype("fp8")


def test_bf16_runs_matmuls_in_bf16_and_moves_the_loss_a_little(load_tiny: Callable[..., Any], tokenizer: Any) -> None:
    rows = [
        {"prompt": "The capital of France is", "completion": " Paris, a city on the Seine."},
        {"prompt": "Two plus two is", "completion": " four"},
    ]
    examples = [encode_row(row, tokenizer) for row in rows]
    batch = DataCollator(tokenizer.pad_token_id)([{"input_ids": e.input_ids, "labels": e.labels} for e in examples])
    model = load_tiny()
    projection = model.model.layers[0].mlp.down_proj
    seen: list[torch.dtype] = []
    projection.register_forward_hook(lambda module, args, output: seen.append(output.dtype))
    losses = {}
    with torch.no_grad():
        for precision in ("fp32", "bf16"):
            with autocast(precision, "cpu"):
                losses[precision] = model(**batch).loss
    assert seen == [torch.float32, torch.bfloat16]
    assert projection.weight.dtype == torch.float32  # weights stay fp32
    assert losses["fp32"].dtype == losses["bf16"].dtype == torch.float32  # the loss is computed in fp32 either way
    assert losses["bf16"].item() != losses["fp32"].item()
    assert losses["bf16"].item() == pytest.approx(losses["fp32"].item(), rel=2e-2)

"""int8 expert weights: the quantization kernels consume, and the records that declare it."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from kernel_core.contracts.moe import dequantize_int8, quantize_int8
from kernel_core.contracts.records import MoEKernelSpec


def test_int8_round_trip_is_within_half_a_step_per_channel() -> None:
    weight = torch.randn(3, 5, 7, generator=torch.Generator().manual_seed(0))
    weight[1, 2] = 0.0  # an all-zero output channel gets scale 1, not a division by zero
    quantized, scale = quantize_int8(weight)
    assert quantized.dtype == torch.int8 and scale.shape == (3, 5) and scale.dtype == torch.float32
    assert scale[1, 2] == 1.0 and not quantized[1, 2].any()
    restored = dequantize_int8(quantized, scale, torch.float32)
    assert ((restored - weight).abs() <= scale[..., None] / 2 + 1e-7).all()
    assert quantized.abs().amax(dim=-1)[scale != 1.0].eq(127).all()  # each channel uses the full range


def test_a_kernel_record_refuses_an_unknown_quantization() -> None:
    spec = MoEKernelSpec(name="k", description="d", implementation="m:K", quantizations=frozenset({"int8"}))
    assert spec.quantizations == {"int8"} and spec.device_types == {"cpu", "cuda", "xpu"}
    with pytest.raises(ValidationError, match="unknown quantizations \\['fp4'\\]"):
        MoEKernelSpec(name="k", description="d", implementation="m:K", quantizations=frozenset({"fp4"}))

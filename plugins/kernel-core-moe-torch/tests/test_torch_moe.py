"""The torch MoE kernel: the SDK's conformance suite, then what is particular to it (the int8 paths
on either side of the int8pack and block limits, top-k equal to the number of experts)."""

from __future__ import annotations

from types import ModuleType

import pytest
import torch

from kernel_core.contracts.moe import dequantize_int8, quantize_int8
from kernel_core_moe_torch import kernel, plugin
from kernel_core_moe_torch.kernel import DEQUANT_BLOCK_MAX_ROWS, INT8PACK_ALIGNMENT, INT8PACK_MAX_ROWS, TorchMoE
from kernel_core_sdk.conformance import MoEKernelConformance
from kernel_core_sdk.conformance._reference import moe as reference_moe


class TestTorchMoEConformance(MoEKernelConformance):
    @pytest.fixture
    def plugin_module(self) -> ModuleType:
        return plugin


def expert_weights(experts: int, hidden: int, intermediate: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    w_gate_up = torch.randn(experts, 2 * intermediate, hidden, generator=generator) / hidden**0.5
    w_down = torch.randn(experts, hidden, intermediate, generator=generator) / intermediate**0.5
    return w_gate_up, w_down


#: (tokens, hidden, intermediate) -> GEMMs expected through int8pack: gate_up reads hidden
#: columns, down reads intermediate columns; only multiples of 16 and short slices qualify.
INT8_CASES = {
    "both-int8pack": ((INT8PACK_MAX_ROWS, 32, 16), 2),
    "down-unaligned": ((INT8PACK_MAX_ROWS, 32, 24), 1),
    "too-many-rows": ((INT8PACK_MAX_ROWS + 1, 32, 16), 0),
}


def assert_single_expert_int8_matches(tokens: int, hidden_size: int, intermediate: int, dtype: torch.dtype) -> None:
    """Every token on expert 1, so its slice has exactly ``tokens`` rows; the int8 result equals
    the reference on the dequantized weights."""
    w_gate_up, w_down = expert_weights(3, hidden_size, intermediate)
    (q_gate_up, s_gate_up), (q_down, s_down) = quantize_int8(w_gate_up), quantize_int8(w_down)
    hidden = torch.randn(tokens, hidden_size, generator=torch.Generator().manual_seed(2)).to(dtype)
    logits = torch.tensor([[0.0, 9.0, -9.0]]).expand(tokens, 3).to(dtype)
    with torch.inference_mode():
        out = TorchMoE().forward(hidden, logits, q_gate_up, q_down, 1, w_gate_up_scale=s_gate_up, w_down_scale=s_down)
    expected = reference_moe(
        hidden, logits, dequantize_int8(q_gate_up, s_gate_up, torch.float64),
        dequantize_int8(q_down, s_down, torch.float64), 1, True,
    )
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out.double(), expected, atol=tolerance, rtol=tolerance)


def count_calls(monkeypatch: pytest.MonkeyPatch, name: str) -> list[tuple]:
    """Calls of ``torch.<name>`` from now on (it still computes)."""
    calls: list[tuple] = []
    op = getattr(torch, name)
    monkeypatch.setattr(torch, name, lambda *args, **kwargs: calls.append(args) or op(*args, **kwargs))
    return calls


@pytest.mark.parametrize("case", sorted(INT8_CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_int8_paths_give_the_dequantized_result(
    case: str, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bfloat16 slices short enough, over widths that are multiples of 16, go through
    ``torch._weight_int8pack_mm`` (it returns NaN or crashes on other widths); float32 never
    does; all give the dequantized result."""
    (tokens, hidden_size, intermediate), int8pack_calls = INT8_CASES[case]
    assert hidden_size % INT8PACK_ALIGNMENT == 0
    calls = count_calls(monkeypatch, "_weight_int8pack_mm")
    assert_single_expert_int8_matches(tokens, hidden_size, intermediate, dtype)
    assert len(calls) == (int8pack_calls if dtype == torch.bfloat16 else 0)


#: (tokens, dtype) -> whether the int8 weights are converted in blocks of output channels.
BLOCK_CASES = {
    "float32-short": ((DEQUANT_BLOCK_MAX_ROWS, torch.float32), True),
    "float32-long": ((DEQUANT_BLOCK_MAX_ROWS + 1, torch.float32), False),
    "bfloat16": ((INT8PACK_MAX_ROWS + 1, torch.bfloat16), False),
}


@pytest.mark.parametrize("case", sorted(BLOCK_CASES))
def test_int8_blocks_give_the_dequantized_result(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of 5 output channels (a remainder on both GEMMs): short float32 slices compute
    gate/up (32 channels) in 7 GEMMs and down (32 channels over 16 inputs, so 10 per block) in 4;
    longer float32 slices and bfloat16 convert the whole expert, one GEMM each."""
    (tokens, dtype), blocked = BLOCK_CASES[case]
    hidden_size, intermediate = 32, 16
    monkeypatch.setattr(kernel, "DEQUANT_BLOCK_BYTES", 5 * hidden_size * 4)
    calls = count_calls(monkeypatch, "mm")
    assert_single_expert_int8_matches(tokens, hidden_size, intermediate, dtype)
    assert len(calls) == (7 + 4 if blocked else 2)


def test_top_k_equal_to_experts_mixes_every_expert() -> None:
    """top_k = E: each token's output is the full softmax-weighted mixture."""
    w_gate_up, w_down = expert_weights(4, 16, 8)
    generator = torch.Generator().manual_seed(3)
    hidden, logits = torch.randn(5, 16, generator=generator), torch.randn(5, 4, generator=generator)
    with torch.inference_mode():
        out = TorchMoE().forward(hidden, logits, w_gate_up, w_down, 4, renormalize=False)
    expected = reference_moe(hidden, logits, w_gate_up, w_down, 4, False)
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)

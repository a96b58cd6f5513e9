"""The torch MoE kernel: the SDK's conformance suite, then what is particular to it (the two int8
paths on either side of the int8pack limits, top-k equal to the number of experts)."""

from __future__ import annotations

from types import ModuleType

import pytest
import torch

from kernel_core.contracts.moe import dequantize_int8, quantize_int8
from kernel_core_moe_torch import plugin
from kernel_core_moe_torch.kernel import INT8PACK_ALIGNMENT, INT8PACK_MAX_ROWS, TorchMoE
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


@pytest.mark.parametrize("case", sorted(INT8_CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_int8_paths_give_the_dequantized_result(
    case: str, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every token on expert 1, so its slice has exactly ``tokens`` rows: bfloat16 slices short
    enough, over widths that are multiples of 16, go through ``torch._weight_int8pack_mm`` (it
    returns NaN or crashes on other widths); float32 never does; all give the dequantized result."""
    (tokens, hidden_size, intermediate), int8pack_calls = INT8_CASES[case]
    assert hidden_size % INT8PACK_ALIGNMENT == 0
    calls = []
    int8pack = torch._weight_int8pack_mm
    monkeypatch.setattr(torch, "_weight_int8pack_mm", lambda *args: calls.append(args) or int8pack(*args))
    w_gate_up, w_down = expert_weights(3, hidden_size, intermediate)
    (q_gate_up, s_gate_up), (q_down, s_down) = quantize_int8(w_gate_up), quantize_int8(w_down)
    hidden = torch.randn(tokens, hidden_size, generator=torch.Generator().manual_seed(2)).to(dtype)
    logits = torch.tensor([[0.0, 9.0, -9.0]]).expand(tokens, 3).to(dtype)
    with torch.inference_mode():
        out = TorchMoE().forward(hidden, logits, q_gate_up, q_down, 1, w_gate_up_scale=s_gate_up, w_down_scale=s_down)
    assert len(calls) == (int8pack_calls if dtype == torch.bfloat16 else 0)
    expected = reference_moe(
        hidden, logits, dequantize_int8(q_gate_up, s_gate_up, torch.float64),
        dequantize_int8(q_down, s_down, torch.float64), 1, True,
    )
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out.double(), expected, atol=tolerance, rtol=tolerance)


def test_top_k_equal_to_experts_mixes_every_expert() -> None:
    """top_k = E: each token's output is the full softmax-weighted mixture."""
    w_gate_up, w_down = expert_weights(4, 16, 8)
    generator = torch.Generator().manual_seed(3)
    hidden, logits = torch.randn(5, 16, generator=generator), torch.randn(5, 4, generator=generator)
    with torch.inference_mode():
        out = TorchMoE().forward(hidden, logits, w_gate_up, w_down, 4, renormalize=False)
    expected = reference_moe(hidden, logits, w_gate_up, w_down, 4, False)
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)

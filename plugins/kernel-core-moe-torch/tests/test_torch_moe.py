"""The torch MoE kernel: the SDK's conformance suite, then what is particular to it (the int8 paths
on either side of their limits, activation digits beside an outlier and with inf, top-k equal to
the number of experts)."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest
import torch

from kernel_core.contracts.moe import dequantize_int8, quantize_int8
from kernel_core_moe_torch import kernel, plugin
from kernel_core_moe_torch.kernel import (
    ACTIVATION_DIGITS,
    DIGITS_MAX_ROWS,
    INT8PACK_MAX_ROWS,
    TorchMoE,
    _int8_digits,
    _matmul as matmul,
)
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


def single_expert_int8(hidden: torch.Tensor, intermediate: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel's output with every token on expert 1 of three (so its slice has exactly all the
    rows), and the reference on the dequantized weights."""
    tokens, hidden_size = hidden.shape
    w_gate_up, w_down = expert_weights(3, hidden_size, intermediate)
    (q_gate_up, s_gate_up), (q_down, s_down) = quantize_int8(w_gate_up), quantize_int8(w_down)
    logits = torch.tensor([[0.0, 9.0, -9.0]]).expand(tokens, 3).to(hidden.dtype)
    with torch.inference_mode():
        out = TorchMoE().forward(hidden, logits, q_gate_up, q_down, 1, w_gate_up_scale=s_gate_up, w_down_scale=s_down)
    expected = reference_moe(
        hidden, logits, dequantize_int8(q_gate_up, s_gate_up, torch.float64),
        dequantize_int8(q_down, s_down, torch.float64), 1, True,
    )
    return out, expected


def assert_close_for(dtype: torch.dtype, out: torch.Tensor, expected: torch.Tensor) -> None:
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out.double(), expected, atol=tolerance, rtol=tolerance)


def count_calls(monkeypatch: pytest.MonkeyPatch, names: list[str]) -> dict[str, int]:
    """Calls of each ``torch.<name>`` from now on (they still compute)."""
    calls = dict.fromkeys(names, 0)

    def counted(name: str, op: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            calls[name] += 1
            return op(*args, **kwargs)

        return call

    for name in names:
        monkeypatch.setattr(torch, name, counted(name, getattr(torch, name)))
    return calls


def count_converted(monkeypatch: pytest.MonkeyPatch) -> list[torch.dtype]:
    """The dtype of each weight the kernel's float GEMM receives from now on (the converted int8
    path's), whichever GEMM it takes (torch.mm or oneDNN)."""
    converted: list[torch.dtype] = []

    def counted(x: torch.Tensor, weight: torch.Tensor, out: torch.Tensor) -> None:
        converted.append(weight.dtype)
        matmul(x, weight, out)

    monkeypatch.setattr(kernel, "_matmul", counted)
    return converted


#: (tokens, hidden, intermediate, dtype) -> GEMMs expected per path (int8pack, digits, converted):
#: gate_up reads hidden columns, down reads intermediate ones; int8pack takes short bfloat16 slices
#: over multiples of 16, the digits (_int_mm) slices up to the dtype's limit, longer ones convert.
INT8_CASES = {
    "float32-one-row": ((1, 32, 16, torch.float32), (0, 2, 0)),
    "float32-digits-limit": ((DIGITS_MAX_ROWS[torch.float32], 32, 24, torch.float32), (0, 2, 0)),
    "float32-converted": ((DIGITS_MAX_ROWS[torch.float32] + 1, 32, 24, torch.float32), (0, 0, 2)),
    "bfloat16-both-int8pack": ((INT8PACK_MAX_ROWS, 32, 16, torch.bfloat16), (2, 0, 0)),
    "bfloat16-down-unaligned": ((INT8PACK_MAX_ROWS, 32, 24, torch.bfloat16), (1, 1, 0)),
    "bfloat16-digits": ((INT8PACK_MAX_ROWS + 1, 32, 16, torch.bfloat16), (0, 2, 0)),
    "bfloat16-digits-limit": ((DIGITS_MAX_ROWS[torch.bfloat16], 32, 16, torch.bfloat16), (0, 2, 0)),
    "bfloat16-converted": ((DIGITS_MAX_ROWS[torch.bfloat16] + 1, 32, 16, torch.bfloat16), (0, 0, 2)),
}


@pytest.mark.parametrize("case", sorted(INT8_CASES))
def test_int8_paths_give_the_dequantized_result(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each int8 path on either side of its limits gives the reference on the dequantized weights
    (int8pack returns NaN or crashes on widths that are not multiples of 16, so those never use it)."""
    (tokens, hidden_size, intermediate, dtype), expected_calls = INT8_CASES[case]
    calls = count_calls(monkeypatch, ["_weight_int8pack_mm", "_int_mm"])
    converted = count_converted(monkeypatch)
    hidden = torch.randn(tokens, hidden_size, generator=torch.Generator().manual_seed(2)).to(dtype)
    out, expected = single_expert_int8(hidden, intermediate)
    assert (*calls.values(), len(converted)) == expected_calls
    assert_close_for(dtype, out, expected)


def test_int8_weights_wider_than_int32_sums_allow_are_converted(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the width limit lowered to 16: gate/up (32 input columns) is converted, down (16) still
    takes the digits, and the result is unchanged."""
    monkeypatch.setattr(kernel, "DIGITS_MAX_WIDTH", 16)
    calls = count_calls(monkeypatch, ["_int_mm"])
    converted = count_converted(monkeypatch)
    hidden = torch.randn(5, 32, generator=torch.Generator().manual_seed(7))
    out, expected = single_expert_int8(hidden, 16)
    assert calls == {"_int_mm": 1} and converted == [torch.float32]
    assert_close_for(torch.float32, out, expected)


@pytest.mark.parametrize("onednn", [False, True][: 1 + kernel.ONEDNN_FLOAT32], ids=["torch-mm", "onednn"][: 1 + kernel.ONEDNN_FLOAT32])
def test_float32_gemms_take_onednn_where_torch_has_it_and_give_the_reference(onednn: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Full-precision float32 experts on the CPU: oneDNN's linear when torch has it (a torch build
    without it runs only the torch.mm case), torch.mm otherwise; both give the reference."""
    monkeypatch.setattr(kernel, "ONEDNN_FLOAT32", onednn)
    calls = count_calls(monkeypatch, ["mm"])
    generator = torch.Generator().manual_seed(3)
    hidden, logits = torch.randn(6, 32, generator=generator), torch.randn(6, 4, generator=generator)
    w_gate_up, w_down = torch.randn(4, 48, 32, generator=generator), torch.randn(4, 32, 24, generator=generator)
    out = TorchMoE().forward(hidden, logits, w_gate_up, w_down, top_k=2)
    expected = reference_moe(hidden.double(), logits.double(), w_gate_up.double(), w_down.double(), 2, True)
    assert (calls["mm"] == 0) is onednn
    assert_close_for(torch.float32, out, expected)


def test_int8_digits_keep_small_activations_beside_an_outlier() -> None:
    """A feature 10^4 times the others (LLM hidden states have such outliers) sets each row's
    fixed-point step; with float32's four digits the others keep the suite's 1e-5."""
    hidden = torch.randn(4, 32, generator=torch.Generator().manual_seed(4))
    hidden[:, 5] = 1e4
    out, expected = single_expert_int8(hidden, 16)
    assert_close_for(torch.float32, out / 1e4, expected / 1e4)
    hidden[:, 5] = 0
    out, expected = single_expert_int8(hidden, 16)
    assert_close_for(torch.float32, out, expected)


@pytest.mark.parametrize("dtype", list(ACTIVATION_DIGITS), ids=str)
def test_int8_digits_encode_within_half_a_step(dtype: torch.dtype) -> None:
    """The digits are int8, most significant first, and decode to each value within half the row's
    step, a power of two at most 2^-(8 * digits - 3) of the row's largest (so each value is off by
    at most 2^-30 of it for float32, 2^-22 for bfloat16); a zero row decodes to zeros."""
    digits = ACTIVATION_DIGITS[dtype]
    x = torch.randn(3, 40, generator=torch.Generator().manual_seed(6)) * torch.tensor([[1.0], [1e-20], [0.0]])
    x[0, 3] = -1e4
    x = x.to(dtype)
    encoded, step = _int8_digits(x, digits)
    assert encoded.dtype == torch.int8 and encoded.shape == (3 * digits, 40)
    weights = torch.tensor([256.0 ** (digits - 1 - d) for d in range(digits)], dtype=torch.float64)
    decoded = (encoded.double().view(3, digits, 40) * weights[:, None]).sum(dim=1) * step.double()
    largest = x.double().abs().amax(dim=1, keepdim=True)
    assert (step[:2].double() <= largest[:2] * 2.0 ** -(8 * digits - 3)).all()
    assert ((decoded - x.double()).abs() <= step.double() / 2).all()
    assert not decoded[2].any()


def test_int8_digits_turn_a_non_finite_row_into_nan() -> None:
    """A token whose hidden state holds inf gets NaN outputs (it has no finite fixed-point
    step); the other tokens are unaffected."""
    hidden = torch.randn(3, 32, generator=torch.Generator().manual_seed(5))
    hidden[1, 7] = float("inf")
    out, expected = single_expert_int8(hidden, 16)
    assert out[1].isnan().all()
    assert_close_for(torch.float32, out[[0, 2]], expected[[0, 2]])


def test_top_k_equal_to_experts_mixes_every_expert() -> None:
    """top_k = E: each token's output is the full softmax-weighted mixture."""
    w_gate_up, w_down = expert_weights(4, 16, 8)
    generator = torch.Generator().manual_seed(3)
    hidden, logits = torch.randn(5, 16, generator=generator), torch.randn(5, 4, generator=generator)
    with torch.inference_mode():
        out = TorchMoE().forward(hidden, logits, w_gate_up, w_down, 4, renormalize=False)
    expected = reference_moe(hidden, logits, w_gate_up, w_down, 4, False)
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", list(kernel.PACK_DTYPES), ids=str)
def test_full_precision_cpu_experts_are_packed_for_onednn_and_replace_the_stacked_ones(dtype: torch.dtype) -> None:
    w_gate_up, w_down = (w.to(dtype) for w in expert_weights(3, 32, 16))
    prepared = TorchMoE().prepare(w_gate_up, w_down)
    assert prepared is not None and not prepared.reads_stacked
    assert [len(prepared.state.gate_up), len(prepared.state.down)] == [3, 3]
    assert all(w.is_mkldnn for w in (*prepared.state.gate_up, *prepared.state.down))


def test_int8_experts_are_not_packed() -> None:
    (q_gate_up, s_gate_up), (q_down, s_down) = (quantize_int8(w) for w in expert_weights(3, 32, 16))
    assert TorchMoE().prepare(q_gate_up, q_down, w_gate_up_scale=s_gate_up, w_down_scale=s_down) is None

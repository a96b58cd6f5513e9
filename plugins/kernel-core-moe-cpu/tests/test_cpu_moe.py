"""The CPU MoE kernel: the SDK's conformance suite, then its int8 GEMM on its own (tile and panel
remainders, strided rows, every activation dtype, non-finite activations, thread counts), what
``prepare`` keeps, and how a failed build is reported."""

from __future__ import annotations

import re
from types import ModuleType

import pytest
import torch

from kernel_core.contracts.moe import dequantize_int8, quantize_int8
from kernel_core_moe_cpu import library, plugin
from kernel_core_moe_cpu.kernel import CPUMoE, Int8Panels
from kernel_core_moe_torch.kernel import PackedExperts, TorchMoE
from kernel_core_platform_cpu import native
from kernel_core_sdk.conformance import MoEKernelConformance

class TestCPUMoEConformance(MoEKernelConformance):
    @pytest.fixture
    def plugin_module(self) -> ModuleType:
        return plugin


def int8_weight(rows: int, columns: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(1, rows, columns, generator=generator) / columns**0.5
    quantized, scale = quantize_int8(weight)
    return quantized[0], scale[0]


def reference(x: torch.Tensor, quantized: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x.double() @ dequantize_int8(quantized[None], scale[None], torch.float64)[0].T


#: Builds of the GEMM beside the one for this CPU: without AVX512-BF16 (bfloat16 through the float32
#: micro-kernel) and without AVX-512 (plain loops). On a CPU that lacks them they build the same.
BUILDS = {"native": (), "no-avx512-bf16": ("-mno-avx512bf16",), "portable": ("-mno-avx512f",)}


@pytest.fixture(params=list(BUILDS))
def built(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The GEMM as built for this CPU, and its other paths."""
    if BUILDS[request.param]:
        other = library.load(native.FLAGS + BUILDS[request.param])
        assert other.error is None, other.error
        monkeypatch.setattr(library, "library", lambda: other)
    return request.param


# Rows: one, a tile's width (14) and either side of it, 16 (two tiles of 8), a row block of 256 and
# past it; channels: a whole number of 32-wide panels and a remainder under and over 16.
# Reduced widths: even, and odd (the last pair of k padded).
@pytest.mark.parametrize("rows", [1, 13, 14, 15, 16, 29, 300])
@pytest.mark.parametrize("channels", [64, 40, 7])
@pytest.mark.parametrize("width", [48, 37])
def test_float32_gemm_matches_the_dequantized_weights(rows: int, channels: int, width: int, built: str) -> None:
    quantized, scale = int8_weight(channels, width)
    x = torch.randn(rows, width, generator=torch.Generator().manual_seed(1))
    out = torch.full((rows, channels), float("nan"))
    Int8Panels.pack(quantized, scale).multiply(x, out)
    torch.testing.assert_close(out.double(), reference(x, quantized, scale), atol=1e-5, rtol=1e-5)


def test_strided_rows_in_and_out(built: str) -> None:
    """The MoE block passes the gate half of its gate/up buffer as ``x`` and a slice of its output."""
    quantized, scale = int8_weight(24, 32)
    buffer = torch.randn(5, 80)
    out_buffer = torch.zeros(5, 50)
    panels = Int8Panels.pack(quantized, scale)
    panels.multiply(buffer[:, 8:40], out_buffer[:, 10:34])
    torch.testing.assert_close(out_buffer[:, 10:34].double(), reference(buffer[:, 8:40], quantized, scale), atol=1e-5, rtol=1e-5)
    assert not out_buffer[:, :10].any() and not out_buffer[:, 34:].any()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("width", [64, 37])
def test_other_activation_dtypes_round_once(dtype: torch.dtype, width: int, built: str) -> None:
    """Accumulated in float32 and rounded once to the activations' dtype (nearest even): within
    half a unit in the last place of that dtype, plus float32's accumulation error."""
    quantized, scale = int8_weight(40, width)
    x = torch.randn(20, width, generator=torch.Generator().manual_seed(2)).to(dtype)
    out = torch.empty(20, 40, dtype=dtype)
    Int8Panels.pack(quantized, scale).multiply(x, out)
    expected = reference(x, quantized, scale)
    ulp = torch.finfo(dtype).eps if dtype != torch.float64 else torch.finfo(torch.float32).eps
    assert ((out.double() - expected).abs() <= expected.abs() * ulp / 2 * 1.01 + 1e-5).all()


def test_non_finite_activations_give_non_finite_outputs(built: str) -> None:
    quantized, scale = int8_weight(32, 16)
    x = torch.randn(3, 16)
    x[1, 4] = float("nan")
    x[2, 0] = float("inf")
    out = torch.empty(3, 32)
    Int8Panels.pack(quantized, scale).multiply(x, out)
    assert torch.isfinite(out[0]).all() and out[1].isnan().all() and not torch.isfinite(out[2]).any()


def test_thread_count_changes_no_bit(built: str) -> None:
    """Each output is one thread's sum in one order, whatever the thread count."""
    quantized, scale = int8_weight(256, 96)
    x = torch.randn(40, 96)
    panels = Int8Panels.pack(quantized, scale)
    threads = torch.get_num_threads()
    outs = []
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            out = torch.empty(40, 256)
            panels.multiply(x, out)
            outs.append(out)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(outs[0], outs[1])


def test_prepare_packs_int8_experts_and_frees_the_stacked_ones() -> None:
    generator = torch.Generator().manual_seed(3)
    (w_gate_up, s_gate_up), (w_down, s_down) = (
        quantize_int8(torch.randn(4, 24, 16, generator=generator)),
        quantize_int8(torch.randn(4, 16, 12, generator=generator)),
    )
    prepared = CPUMoE().prepare(w_gate_up, w_down, w_gate_up_scale=s_gate_up, w_down_scale=s_down)
    assert prepared is not None and not prepared.reads_stacked
    assert isinstance(prepared.state, PackedExperts) and len(prepared.state.gate_up) == len(prepared.state.down) == 4
    assert sum(panels.packed.numel() for panels in prepared.state.gate_up) == 4 * 32 * 16  # 24 rows pad to a panel of 32


def test_full_precision_experts_are_prepared_as_the_torch_kernel_does() -> None:
    w_gate_up, w_down = torch.randn(2, 8, 16), torch.randn(2, 16, 4)
    ours, theirs = CPUMoE().prepare(w_gate_up, w_down), TorchMoE().prepare(w_gate_up, w_down)
    assert (ours is None) == (theirs is None)
    if ours is not None:
        assert ours.reads_stacked == theirs.reads_stacked


def test_a_failed_build_makes_the_kernel_unavailable_with_its_reason(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    monkeypatch.setenv(native.ENV_COMPILER, "no-such-compiler")
    monkeypatch.setenv("PATH", "")
    monkeypatch.setenv("KERNEL_CORE_CACHE", str(tmp_path))
    library.library.cache_clear()
    try:
        reason = CPUMoE.unavailable_reason()
        assert reason is not None and re.search(r"int8 GEMM is not available: no C\+\+ compiler found", reason)
    finally:
        library.library.cache_clear()

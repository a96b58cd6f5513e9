"""The Triton MoE kernel: the SDK's conformance suite, then shapes that take several row blocks,
column tiles and K steps, int8 experts there, and refusals of bad input. In the interpreter on
the CPU unless a CUDA GPU is present (see conftest.py)."""

from __future__ import annotations

from types import ModuleType

import pytest
import torch

from kernel_core.contracts.moe import dequantize_int8, quantize_int8
from kernel_core_moe_triton import plugin
from kernel_core_moe_triton.moe import TritonMoE
from kernel_core_moe_triton.tiles import TILES
from kernel_core_sdk.conformance import MoEKernelConformance, TritonKernelTests, triton_test_device
from kernel_core_sdk.conformance._reference import moe as reference_moe
from kernel_core_sdk.conformance.registration import run_fresh_python

DEVICE = triton_test_device("kernel_core_moe_triton.kernels")


class TestTritonMoEConformance(TritonKernelTests, MoEKernelConformance):
    kernel_module = "kernel_core_moe_triton.kernels"

    @pytest.fixture
    def plugin_module(self) -> ModuleType:
        return plugin


def large_case(dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """40 tokens, top-2 of 3 experts: each expert gets more rows than a block, hidden and
    intermediate sizes take several K steps and column tiles with a remainder, and the hidden
    states are a strided view (every other column of a wider tensor)."""
    block = TILES[DEVICE.type][1]
    hidden_size, intermediate = 2 * block.block_k + 16, 2 * block.block_n + 8
    generator = torch.Generator().manual_seed(5)
    hidden = torch.randn(40, 2 * hidden_size, generator=generator)[:, ::2]
    logits = torch.randn(40, 3, generator=generator)
    w_gate_up = torch.randn(3, 2 * intermediate, hidden_size, generator=generator) / hidden_size**0.5
    w_down = torch.randn(3, hidden_size, intermediate, generator=generator) / intermediate**0.5
    return hidden.to(dtype), logits.to(dtype), w_gate_up.to(dtype), w_down.to(dtype)


@pytest.mark.parametrize("top_k", [1, 2])
def test_many_blocks_tiles_and_k_steps(top_k: int) -> None:
    hidden, logits, w_gate_up, w_down = large_case(torch.float32)
    out = TritonMoE().forward(*(t.to(DEVICE) for t in (hidden, logits, w_gate_up, w_down)), top_k, renormalize=top_k > 1)
    expected = reference_moe(hidden, logits, w_gate_up, w_down, top_k, top_k > 1)
    torch.testing.assert_close(out.cpu().double(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_int8_experts_over_many_tiles_match_dequantized_weights(dtype: torch.dtype) -> None:
    hidden, logits, w_gate_up, w_down = large_case(torch.float32)
    (q_gate_up, s_gate_up), (q_down, s_down) = quantize_int8(w_gate_up), quantize_int8(w_down)
    hidden, logits = hidden.to(dtype), logits.to(dtype)
    out = TritonMoE().forward(
        *(t.to(DEVICE) for t in (hidden, logits, q_gate_up, q_down)), 2,
        w_gate_up_scale=s_gate_up.to(DEVICE), w_down_scale=s_down.to(DEVICE),
    )
    expected = reference_moe(
        hidden, logits, dequantize_int8(q_gate_up, s_gate_up, torch.float64),
        dequantize_int8(q_down, s_down, torch.float64), 2, True,
    )
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out.cpu().double(), expected, atol=tolerance, rtol=tolerance)


def bad_inputs() -> dict[str, tuple[dict, str]]:
    """Case → (arguments replaced in a valid call, what the error must name)."""
    q, s = quantize_int8(torch.randn(4, 16, 8))
    return {
        "logits-width": ({"router_logits": torch.randn(3, 5)}, "router_logits has shape"),
        "gate-up-shape": ({"w_gate_up": torch.randn(4, 12, 8)}, "w_gate_up has shape"),
        "top-k-zero": ({"top_k": 0}, "top_k=0"),
        "top-k-over-experts": ({"top_k": 5}, "top_k=5"),
        "one-scale": ({"w_gate_up_scale": torch.ones(4, 16)}, "both w_gate_up_scale and w_down_scale"),
        "int8-without-scales": ({"w_gate_up": q}, "w_gate_up is torch.int8"),
        "scales-without-int8": ({"w_gate_up_scale": s, "w_down_scale": torch.ones(4, 8)}, "w_gate_up is torch.float32"),
        "hidden-1d": ({"hidden": torch.randn(8)}, "expected hidden"),
    }


@pytest.mark.parametrize("case", sorted(bad_inputs()))
def test_bad_input_is_refused_naming_it(case: str) -> None:
    replaced, message = bad_inputs()[case]
    arguments = {
        "hidden": torch.randn(3, 8), "router_logits": torch.randn(3, 4), "w_gate_up": torch.randn(4, 16, 8),
        "w_down": torch.randn(4, 8, 8), "top_k": 2, **replaced,
    }
    with pytest.raises(ValueError, match=message):
        TritonMoE().forward(**{k: v.to(DEVICE) if isinstance(v, torch.Tensor) else v for k, v in arguments.items()})


def test_cpu_tensors_outside_the_interpreter_are_refused() -> None:
    result = run_fresh_python(
        "import os, torch\n"
        "os.environ.pop('TRITON_INTERPRET', None)\n"
        "from kernel_core_moe_triton.moe import TritonMoE\n"
        "try:\n"
        "    TritonMoE().forward(torch.randn(2, 8), torch.randn(2, 4), torch.randn(4, 16, 8), torch.randn(4, 8, 8), 2)\n"
        "except RuntimeError as error:\n"
        "    print(error)\n"
    )
    assert "TRITON_INTERPRET=1" in result.stdout, result.stderr

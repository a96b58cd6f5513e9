"""Conformance suite for mixture-of-experts kernels."""

from __future__ import annotations

import pytest
import torch

from kernel_core.contracts.moe import MoEKernel
from kernel_core.contracts.records import PluginKind
from kernel_core_sdk.conformance import _reference
from kernel_core_sdk.conformance._plugin import PluginUnderTest

#: (tokens, hidden, intermediate, experts, top_k): a usual shape, one token on one of many
#: experts (most experts get nothing), and a wider top-k.
SHAPES = [(7, 16, 12, 4, 2), (1, 8, 4, 8, 1), (12, 16, 8, 8, 3)]


class MoEKernelConformance(PluginUnderTest):
    """Subclass as ``TestMyKernel(MoEKernelConformance)`` to check a mixture-of-experts kernel.

    Fixtures you supply:

    - ``plugin_module``: the imported entry-point module.
    - ``plugin_name`` (optional): the kernel's record name, when the module registers several.

    Fixtures you may override:

    - ``moe_kernel``: the instance under test; defaults to the class called with no arguments.
    - ``device``: where the kernel runs (default CPU). The reference runs on the CPU in float64.

    Outputs must match a per-token reference (softmax over the router logits, top-k,
    optional renormalisation, SwiGLU experts) within 1e-5 in float32.
    """

    kind = PluginKind.MOE_KERNEL
    contract = MoEKernel

    @pytest.fixture
    def moe_kernel(self, implementation: type[MoEKernel]) -> MoEKernel:
        return implementation()

    @pytest.mark.parametrize("renormalize", [True, False], ids=["renormalize", "raw-weights"])
    @pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}-H{}-I{}-E{}-k{}".format(*s))
    def test_matches_per_token_reference(
        self, moe_kernel: MoEKernel, device: torch.device, shape: tuple[int, ...], renormalize: bool
    ) -> None:
        tokens, hidden_size, intermediate, experts, top_k = shape
        generator = torch.Generator().manual_seed(sum(shape))
        hidden = torch.randn(tokens, hidden_size, generator=generator)
        logits = torch.randn(tokens, experts, generator=generator)
        w_gate_up = torch.randn(experts, 2 * intermediate, hidden_size, generator=generator) / hidden_size**0.5
        w_down = torch.randn(experts, hidden_size, intermediate, generator=generator) / intermediate**0.5
        inputs = [t.to(device) for t in (hidden, logits, w_gate_up, w_down)]
        kept = [t.clone() for t in inputs]

        out = moe_kernel.forward(*inputs, top_k=top_k, renormalize=renormalize)

        assert out.shape == hidden.shape and out.dtype == hidden.dtype and out.device.type == device.type
        expected = _reference.moe(hidden, logits, w_gate_up, w_down, top_k, renormalize)
        torch.testing.assert_close(out.cpu(), expected, atol=1e-5, rtol=1e-5)
        assert all(torch.equal(a, b) for a, b in zip(inputs, kept)), "forward must not modify its inputs"

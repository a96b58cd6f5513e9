"""Conformance suite for mixture-of-experts kernels."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from kernel_core.contracts.moe import MoEKernel, dequantize_int8, quantize_int8
from kernel_core.contracts.records import MoEKernelSpec, PluginKind
from kernel_core_sdk.conformance import _reference
from kernel_core_sdk.conformance._plugin import PluginUnderTest


@dataclass(frozen=True)
class Shape:
    """One call's sizes; ``idle`` experts get logits so low that no token routes to them."""

    tokens: int
    hidden: int
    intermediate: int
    experts: int
    top_k: int
    idle: tuple[int, ...] = ()


#: Top-k 1, 2 and 3; one token (most experts get nothing); many tokens, so that each expert
#: gets a long run of them; and experts that get no token at either end of the range and inside.
SHAPES: dict[str, Shape] = {
    "top1": Shape(7, 16, 12, 4, 1),
    "top2": Shape(9, 16, 12, 4, 2),
    "top3": Shape(12, 16, 8, 8, 3),
    "single-token": Shape(1, 8, 4, 8, 2),
    "many-tokens": Shape(80, 16, 8, 6, 2),
    "idle-experts": Shape(16, 16, 8, 7, 2, idle=(0, 3, 6)),
}
#: Tolerances by activation dtype, against the float64 reference computed from the very
#: (rounded) inputs the kernel received. bfloat16 keeps 8 significant bits, so each rounding a
#: kernel does (gate/up GEMM output, the activation product, the down GEMM output, the
#: weighted sum) costs up to 2**-9 relative (0.2%); outputs and intermediates are of order 1,
#: and these errors add up to about 1% at worst. 2e-2 leaves room for that and for a kernel's
#: own accumulation order, and still fails a wrong expert, weight or renormalisation (errors
#: of order 1).
TOLERANCE: dict[torch.dtype, float] = {torch.float32: 1e-5, torch.bfloat16: 2e-2}
DTYPE_IDS = {torch.float32: "float32", torch.bfloat16: "bfloat16"}


@dataclass
class Case:
    """A call's inputs on the device, in the order of :meth:`MoEKernel.forward`, with the
    scales when the weights are int8, and a copy of every tensor taken before the call."""

    hidden: torch.Tensor
    router_logits: torch.Tensor
    w_gate_up: torch.Tensor
    w_down: torch.Tensor
    scales: dict[str, torch.Tensor]
    before: dict[str, torch.Tensor]

    def tensors(self) -> dict[str, torch.Tensor]:
        names = ("hidden", "router_logits", "w_gate_up", "w_down")
        return {**dict(zip(names, (self.hidden, self.router_logits, self.w_gate_up, self.w_down))), **self.scales}

    def expected(self, top_k: int, renormalize: bool) -> torch.Tensor:
        """The float64 reference on the CPU; for int8 weights, from their dequantized values."""
        w_gate_up, w_down = self.w_gate_up.cpu(), self.w_down.cpu()
        if self.scales:
            w_gate_up = dequantize_int8(w_gate_up, self.scales["w_gate_up_scale"].cpu(), torch.float64)
            w_down = dequantize_int8(w_down, self.scales["w_down_scale"].cpu(), torch.float64)
        return _reference.moe(self.hidden.cpu(), self.router_logits.cpu(), w_gate_up, w_down, top_k, renormalize)


def make_case(shape: Shape, dtype: torch.dtype, device: torch.device, *, int8: bool = False) -> Case:
    """Random inputs of ``shape``: activations and logits in ``dtype``, expert weights in
    ``dtype`` or (``int8``) quantized with float32 scales; weights scaled so that every
    intermediate value is of order 1."""
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(shape.tokens, shape.hidden, generator=generator)
    logits = torch.randn(shape.tokens, shape.experts, generator=generator)
    logits[:, list(shape.idle)] -= 30.0
    w_gate_up = torch.randn(shape.experts, 2 * shape.intermediate, shape.hidden, generator=generator)
    w_down = torch.randn(shape.experts, shape.hidden, shape.intermediate, generator=generator)
    w_gate_up, w_down = w_gate_up / shape.hidden**0.5, w_down / shape.intermediate**0.5
    scales: dict[str, torch.Tensor] = {}
    if int8:
        (w_gate_up, gate_up_scale), (w_down, down_scale) = quantize_int8(w_gate_up), quantize_int8(w_down)
        scales = {"w_gate_up_scale": gate_up_scale.to(device), "w_down_scale": down_scale.to(device)}
    else:
        w_gate_up, w_down = w_gate_up.to(dtype), w_down.to(dtype)
    case = Case(
        hidden.to(device=device, dtype=dtype),
        logits.to(device=device, dtype=dtype),
        w_gate_up.to(device),
        w_down.to(device),
        scales,
        before={},
    )
    case.before = {name: tensor.clone() for name, tensor in case.tensors().items()}
    return case


def bits(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes, so that comparing them compares bit for bit (NaN, -0.0 included)."""
    return tensor.detach().cpu().contiguous().view(torch.uint8)


class MoEKernelConformance(PluginUnderTest):
    """Subclass as ``TestMyKernel(MoEKernelConformance)`` to check a mixture-of-experts kernel.

    Fixtures you supply:

    - ``plugin_module``: the imported entry-point module.
    - ``plugin_name`` (optional): the kernel's record name, when the module registers several.

    Fixtures you may override:

    - ``moe_kernel``: the instance under test; defaults to the class called with no arguments.
    - ``device``: where the kernel runs (default CPU); the suite skips when the record's
      ``device_types`` exclude it. The reference runs on the CPU in float64.

    Outputs must match a per-token reference (softmax over the router logits, top-k, optional
    renormalisation, SwiGLU experts) within 1e-5 in float32 and 2e-2 in bfloat16, for top-k 1,
    2 and 3, one token, 80 tokens and experts that receive no token, with the output in the
    activations' dtype, shape and device, and no input modified. When the record lists
    ``"int8"`` in ``quantizations``, the same holds for int8 expert weights with their scales,
    against the reference on the dequantized weights. Every call goes as a model's MoE layer makes
    it: ``prepare`` first, and what it returns passed as ``prepared`` (with ``meta`` tensors for
    the stacked weights when it no longer reads them), so a kernel's prepared form is checked too.
    """

    kind = PluginKind.MOE_KERNEL
    contract = MoEKernel

    @pytest.fixture
    def moe_kernel(
        self,
        construct: Callable[..., MoEKernel],
        plugin_spec: MoEKernelSpec,
        device: torch.device,
        device_types: frozenset[str],
    ) -> MoEKernel:
        if device.type not in device_types:
            pytest.skip(f"{plugin_spec.name!r} does not run on {device.type} ({sorted(device_types)})")
        return construct()

    def test_idle_experts_get_no_token(self) -> None:
        """The ``idle`` experts of :data:`SHAPES` really receive nothing (a check of the suite)."""
        for shape in SHAPES.values():
            case = make_case(shape, torch.float32, torch.device("cpu"))
            chosen = case.router_logits.topk(shape.top_k, dim=-1).indices
            assert not set(chosen.flatten().tolist()) & set(shape.idle)
        single = SHAPES["single-token"]
        assert single.tokens * single.top_k < single.experts

    @pytest.mark.parametrize("dtype", list(TOLERANCE), ids=DTYPE_IDS.get)
    @pytest.mark.parametrize("renormalize", [True, False], ids=["renormalize", "raw-weights"])
    @pytest.mark.parametrize("shape", sorted(SHAPES))
    def test_matches_per_token_reference(
        self, moe_kernel: MoEKernel, device: torch.device, shape: str, renormalize: bool, dtype: torch.dtype
    ) -> None:
        case = make_case(SHAPES[shape], dtype, device)
        run_and_check(moe_kernel, case, SHAPES[shape].top_k, renormalize, dtype, device)

    @pytest.mark.parametrize("dtype", list(TOLERANCE), ids=DTYPE_IDS.get)
    @pytest.mark.parametrize("renormalize", [True, False], ids=["renormalize", "raw-weights"])
    @pytest.mark.parametrize("shape", ["top1", "top3", "single-token", "idle-experts"])
    def test_int8_weights_match_dequantized_reference(
        self,
        moe_kernel: MoEKernel,
        plugin_spec: MoEKernelSpec,
        device: torch.device,
        shape: str,
        renormalize: bool,
        dtype: torch.dtype,
    ) -> None:
        if "int8" not in plugin_spec.quantizations:
            pytest.skip(f"{plugin_spec.name!r} does not list int8 in its quantizations")
        case = make_case(SHAPES[shape], dtype, device, int8=True)
        run_and_check(moe_kernel, case, SHAPES[shape].top_k, renormalize, dtype, device)


def run_and_check(
    kernel: MoEKernel, case: Case, top_k: int, renormalize: bool, dtype: torch.dtype, device: torch.device
) -> None:
    """Call ``prepare`` then ``forward`` on the case, as a layer does; the output matches the
    reference and no input changed."""
    with torch.inference_mode():
        prepare = getattr(kernel, "prepare", None)  # absent from kernels of API 1.3 not subclassing MoEKernel
        prepared = None if prepare is None else prepare(case.w_gate_up, case.w_down, **case.scales)
        stacked: dict[str, torch.Tensor] = {"w_gate_up": case.w_gate_up, "w_down": case.w_down, **case.scales}
        extra: dict[str, Any] = {}
        if prepared is not None:
            extra["prepared"] = prepared.state
            if not prepared.reads_stacked:  # what the layer keeps: shapes and dtypes, no data
                stacked = {name: tensor.to("meta") for name, tensor in stacked.items()}
        out = kernel.forward(
            case.hidden, case.router_logits, stacked.pop("w_gate_up"), stacked.pop("w_down"), top_k, renormalize,
            **stacked, **extra,
        )
    assert out.shape == case.hidden.shape, f"output shape {tuple(out.shape)}, expected {tuple(case.hidden.shape)}"
    assert out.dtype == dtype, f"output dtype {out.dtype}, expected the activations' {dtype}"
    assert out.device.type == device.type, f"output on {out.device}, expected {device}"
    tolerance = TOLERANCE[dtype]
    torch.testing.assert_close(
        out.cpu().double(), case.expected(top_k, renormalize), atol=tolerance, rtol=tolerance,
        msg=lambda m: f"output must be the routing-weighted sum of each token's top-{top_k} experts: {m}",
    )
    for name, tensor in case.tensors().items():
        assert torch.equal(bits(tensor), bits(case.before[name])), f"forward must not modify {name}"

"""The fused mixture-of-experts kernel: routing and the expert-sorted row order in torch, the
expert GEMMs in Triton (:mod:`kernel_core_moe_triton.kernels`), the sum over top-k in torch."""

from __future__ import annotations

import torch

from kernel_core.contracts.moe import MoEKernel
from kernel_core_moe_triton.align import align_block_size
from kernel_core_moe_triton.kernels import INTERPRETED, expert_gemm
from kernel_core_moe_triton.tiles import tiles_for


class TritonMoE(MoEKernel):
    """vLLM's fused_moe design: no per-expert copy of the hidden states, SiLU fused into the
    gate/up GEMM, the routing weight into the down GEMM."""

    def forward(
        self,
        hidden: torch.Tensor,
        router_logits: torch.Tensor,
        w_gate_up: torch.Tensor,
        w_down: torch.Tensor,
        top_k: int,
        renormalize: bool = True,
        *,
        w_gate_up_scale: torch.Tensor | None = None,
        w_down_scale: torch.Tensor | None = None,
    ) -> torch.Tensor:
        check_inputs(hidden, router_logits, w_gate_up, w_down, top_k, w_gate_up_scale, w_down_scale)
        tokens, hidden_size = hidden.shape
        num_experts, _, intermediate = w_down.shape
        probs = torch.softmax(router_logits, dim=-1, dtype=torch.float32)
        weights, experts = probs.topk(top_k, dim=-1)
        if renormalize:
            weights = weights / weights.sum(dim=-1, keepdim=True)

        tiles = tiles_for(hidden.device.type, tokens * top_k, num_experts)
        aligned = align_block_size(experts, num_experts, tiles.block_m)
        activated = hidden.new_empty(tokens * top_k, intermediate)
        expert_gemm(hidden, w_gate_up, w_gate_up_scale, activated, aligned, tiles, pairs_per_a_row=top_k, silu_and_mul=True)
        per_pair = hidden.new_empty(tokens * top_k, hidden_size)
        expert_gemm(activated, w_down, w_down_scale, per_pair, aligned, tiles, pairs_per_a_row=1, routing_weights=weights.flatten())
        return per_pair.view(tokens, top_k, hidden_size).sum(dim=1)


def check_inputs(
    hidden: torch.Tensor,
    router_logits: torch.Tensor,
    w_gate_up: torch.Tensor,
    w_down: torch.Tensor,
    top_k: int,
    w_gate_up_scale: torch.Tensor | None,
    w_down_scale: torch.Tensor | None,
) -> None:
    """Refuse, naming the argument, what the kernels would misread: shapes that disagree, a top-k
    out of range, int8 weights without their scales (or scales without int8 weights), tensors on
    different devices, or CPU tensors outside Triton's interpreter."""
    if hidden.dim() != 2 or w_gate_up.dim() != 3 or w_down.dim() != 3:
        raise ValueError(
            f"expected hidden [T, H], w_gate_up [E, 2I, H], w_down [E, H, I]; got {tuple(hidden.shape)}, "
            f"{tuple(w_gate_up.shape)}, {tuple(w_down.shape)}"
        )
    tokens, hidden_size = hidden.shape
    num_experts, _, intermediate = w_down.shape
    expected = {
        "router_logits": (router_logits, (tokens, num_experts)),
        "w_gate_up": (w_gate_up, (num_experts, 2 * intermediate, hidden_size)),
        "w_down": (w_down, (num_experts, hidden_size, intermediate)),
    }
    if (w_gate_up_scale is None) != (w_down_scale is None):
        raise ValueError("int8 experts need both w_gate_up_scale and w_down_scale")
    if w_gate_up_scale is not None and w_down_scale is not None:
        expected["w_gate_up_scale"] = (w_gate_up_scale, (num_experts, 2 * intermediate))
        expected["w_down_scale"] = (w_down_scale, (num_experts, hidden_size))
    for name, (tensor, shape) in expected.items():
        if tuple(tensor.shape) != shape:
            raise ValueError(f"{name} has shape {tuple(tensor.shape)}, expected {shape}")
        if tensor.device != hidden.device:
            raise ValueError(f"{name} is on {tensor.device}, hidden on {hidden.device}")
    if not 1 <= top_k <= num_experts:
        raise ValueError(f"top_k={top_k} must be between 1 and the number of experts ({num_experts})")
    quantized = w_gate_up_scale is not None
    for name, weight in (("w_gate_up", w_gate_up), ("w_down", w_down)):
        if (weight.dtype == torch.int8) != quantized:
            raise ValueError(
                f"{name} is {weight.dtype}: int8 weights come with their scales, and only they"
            )
    if hidden.device.type == "cpu" and not INTERPRETED:
        raise RuntimeError(
            "the Triton MoE kernel runs on cuda or xpu; on CPU tensors only in Triton's interpreter "
            "(TRITON_INTERPRET=1 set before kernel_core_moe_triton.kernels is imported)"
        )

"""Mixture-of-experts in plain torch: tokens sorted by expert, one GEMM pair per expert.

The (token, choice) pairs are sorted by expert with one argsort, so each expert's tokens form one
contiguous slice of a gathered copy of the hidden states; the Python loop runs over the experts
that received tokens (never over tokens), each computing gate and up in one GEMM, SiLU times up
in place, and down. The routing weights scale the slices, and one ``index_add_`` sums each
token's experts back into its row.

int8 experts: with bfloat16 activations on the CPU, a slice of at most
:data:`INT8PACK_MAX_ROWS` rows goes through ``torch._weight_int8pack_mm``, which reads the int8
weights directly (half of bfloat16's bytes, and decode steps are bound by those bytes), when
the input width is a multiple of 16 as it requires. Otherwise the expert's weights are
converted to the activations' dtype (exact: int8 values fit both float32 and bfloat16) and the
per-channel scales multiply the GEMM's output rather than the weights. Only experts that
received tokens are converted.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernel_core.contracts.moe import MoEKernel

#: Largest slice computed by ``torch._weight_int8pack_mm``; on a 2-core Xeon (AMX) it beat
#: converting the weights up to 8 rows and lost from 16 on (it does not block over rows).
INT8PACK_MAX_ROWS = 8
#: ``torch._weight_int8pack_mm`` (a private op) reads the reduced dimension in blocks of 16 with no
#: remainder: torch 2.13 returns NaN for 8 or 24 and crashes for 12; other widths are converted.
INT8PACK_ALIGNMENT = 16


class TorchMoE(MoEKernel):
    """Top-k softmax routing, tokens grouped by expert, a SwiGLU GEMM pair per active expert."""

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
        weights, experts = torch.softmax(router_logits, dim=-1, dtype=torch.float32).topk(top_k, dim=-1)
        if renormalize:
            weights /= weights.sum(dim=-1, keepdim=True)
        chosen = experts.flatten()
        order = chosen.argsort(stable=True)
        counts = torch.bincount(chosen, minlength=w_gate_up.shape[0]).tolist()
        tokens = order.div(top_k, rounding_mode="floor")
        x = hidden.index_select(0, tokens)
        out = torch.empty_like(x)
        intermediate = w_down.shape[2]
        start = 0
        for expert, count in enumerate(counts):
            if not count:
                continue
            rows = slice(start, start + count)
            start += count
            gate_up = _project(x[rows], w_gate_up[expert], None if w_gate_up_scale is None else w_gate_up_scale[expert])
            gate = gate_up[:, :intermediate]
            F.silu(gate, inplace=True).mul_(gate_up[:, intermediate:])
            out[rows] = _project(gate, w_down[expert], None if w_down_scale is None else w_down_scale[expert])
        out.mul_(weights.flatten()[order].unsqueeze(1).to(out.dtype))
        return torch.zeros_like(hidden).index_add_(0, tokens, out)


def _project(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """``x @ weight.T`` for one expert; with ``scale``, ``weight`` is int8 and the real weight
    is ``weight * scale[:, None]``."""
    if scale is None:
        return F.linear(x, weight)
    if (
        x.device.type == "cpu"
        and x.dtype == torch.bfloat16
        and x.shape[0] <= INT8PACK_MAX_ROWS
        and weight.shape[1] % INT8PACK_ALIGNMENT == 0
    ):
        return torch._weight_int8pack_mm(x.contiguous(), weight, scale.to(x.dtype))
    return F.linear(x, weight.to(x.dtype)).mul_(scale.to(x.dtype))

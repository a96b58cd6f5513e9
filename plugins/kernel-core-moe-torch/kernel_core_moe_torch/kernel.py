"""Mixture-of-experts in plain torch: tokens sorted by expert, one GEMM pair per expert.

The (token, choice) pairs are sorted by expert with one argsort, so each expert's tokens form one
contiguous slice of a gathered copy of the hidden states; the Python loop runs over the experts
that received tokens (never over tokens), each computing gate and up in one GEMM into a buffer
shared by all experts, SiLU times up in place, and down straight into its slice of the output.
The routing weights scale the slices, and one ``index_add_`` sums each token's experts back into
its row.

int8 experts: with bfloat16 activations on the CPU, a slice of at most
:data:`INT8PACK_MAX_ROWS` rows goes through ``torch._weight_int8pack_mm``, which reads the int8
weights directly (half of bfloat16's bytes, and decode steps are bound by those bytes), when
the input width is a multiple of 16 as it requires. Otherwise the expert's weights are
converted to the activations' dtype (exact: int8 values fit both float32 and bfloat16) into a
scratch buffer reused by every expert, and the per-channel scales multiply the GEMM's output
rather than the weights. A float32 slice of at most :data:`DEQUANT_BLOCK_MAX_ROWS` rows on the
CPU converts and multiplies :data:`DEQUANT_BLOCK_BYTES` of output channels at a time, so the
converted block is read back from the core's L2 cache rather than written to and reread from
memory: those slices are bound by the bytes of weights read, a quarter of float32's in int8.
Only experts that received tokens are converted.
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
#: Bytes of converted float32 weights per block: on a 2-core Xeon (2 MiB of L2 per core) 1 MiB was
#: the fastest of 0.5 to 4 MiB for slices of 1 to 4 rows, 1.5x the whole-expert conversion.
DEQUANT_BLOCK_BYTES = 1 << 20
#: Largest float32 slice converted block by block: from 32 rows on, the whole-expert conversion was
#: as fast or faster (each block's GEMM packs the slice again). bfloat16 GEMMs (oneDNN) lost 10-20%
#: to blocks at every size measured, so bfloat16 always converts the whole expert.
DEQUANT_BLOCK_MAX_ROWS = 16


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
        gate_up_rows = x.new_empty(max(counts), 2 * intermediate)
        scratch = None if w_gate_up_scale is None else x.new_empty(max(w_gate_up[0].numel(), w_down[0].numel()))
        start = 0
        for expert, count in enumerate(counts):
            if not count:
                continue
            rows = slice(start, start + count)
            start += count
            gate_up = gate_up_rows[:count]
            _project(x[rows], w_gate_up[expert], _expert(w_gate_up_scale, expert), gate_up, scratch)
            gate = gate_up[:, :intermediate]
            F.silu(gate, inplace=True).mul_(gate_up[:, intermediate:])
            _project(gate, w_down[expert], _expert(w_down_scale, expert), out[rows], scratch)
        out.mul_(weights.flatten()[order].unsqueeze(1).to(out.dtype))
        return torch.zeros_like(hidden).index_add_(0, tokens, out)


def _expert(scale: torch.Tensor | None, expert: int) -> torch.Tensor | None:
    return None if scale is None else scale[expert]


def _project(
    x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None, out: torch.Tensor, scratch: torch.Tensor | None
) -> None:
    """``out = x @ weight.T`` for one expert; with ``scale``, ``weight`` is int8, the real weight
    is ``weight * scale[:, None]``, and ``scratch`` holds at least one expert's converted weights."""
    if scale is None:
        torch.mm(x, weight.t(), out=out)
        return
    if (
        x.device.type == "cpu"
        and x.dtype == torch.bfloat16
        and x.shape[0] <= INT8PACK_MAX_ROWS
        and weight.shape[1] % INT8PACK_ALIGNMENT == 0
    ):
        out.copy_(torch._weight_int8pack_mm(x.contiguous(), weight, scale.to(x.dtype)))
        return
    channels, width = weight.shape
    block = _dequant_block_channels(x, weight)
    for first in range(0, channels, block):
        last = min(first + block, channels)
        dense = scratch[: (last - first) * width].view(last - first, width)
        dense.copy_(weight[first:last])
        torch.mm(x, dense.t(), out=out[:, first:last])
    out.mul_(scale.to(out.dtype))


def _dequant_block_channels(x: torch.Tensor, weight: torch.Tensor) -> int:
    """Output channels of ``weight`` converted per block for a GEMM over ``x``'s rows: all of them
    unless ``x`` is a short float32 slice on the CPU (see :data:`DEQUANT_BLOCK_BYTES`)."""
    channels, width = weight.shape
    if x.device.type == "cpu" and x.dtype == torch.float32 and x.shape[0] <= DEQUANT_BLOCK_MAX_ROWS:
        return max(1, DEQUANT_BLOCK_BYTES // (width * x.element_size()))
    return channels

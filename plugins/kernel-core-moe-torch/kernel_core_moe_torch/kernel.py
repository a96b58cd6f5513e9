"""Mixture-of-experts in plain torch: tokens sorted by expert, one GEMM pair per expert.

The (token, choice) pairs are sorted by expert with one argsort, so each expert's tokens form one
contiguous slice of a gathered copy of the hidden states; the Python loop runs over the experts
that received tokens (never over tokens), each computing gate and up in one GEMM into a buffer
shared by all experts, SiLU times up in place, and down straight into its slice of the output.
The routing weights scale the slices, and one ``index_add_`` sums each token's experts back into
its row. float32 GEMMs on the CPU go through oneDNN's linear when torch has it (see
:data:`ONEDNN_FLOAT32`); bfloat16 ones already do inside ``torch.mm``. Full-precision experts on the
CPU are packed for oneDNN once at load (:meth:`TorchMoE.prepare`, :data:`PACK_DTYPES`): each
expert's gate/up and down weights in oneDNN's blocked layout, replacing the stacked copy.

int8 experts on the CPU are multiplied as int8, without converting the weights: each activation
row is written as a few signed base-256 digits of a fixed-point integer (a power-of-two step per
row), ``torch._int_mm`` multiplies all the digits by the int8 weights in one integer GEMM with
int32 sums (exact up to :data:`DIGITS_MAX_WIDTH` columns), and the digits' products are
recombined, times the row's step and the channels' scales. Four digits (30 bits) for float32 and
three (22 bits) for bfloat16 round each activation by at most 2^-30 / 2^-22 of its row's
largest: on random activations, with and without a feature at 10^4, the output's error was 5-9x
below a float32 GEMM's on the dequantized weights, and below a bfloat16 GEMM's. The weights are
read as int8 (a quarter of float32's bytes, half of bfloat16's) and the GEMM runs on the int8
units. bfloat16 slices of at most :data:`INT8PACK_MAX_ROWS` rows go through
``torch._weight_int8pack_mm`` instead. Slices longer than :data:`DIGITS_MAX_ROWS` for their
dtype (where one float GEMM beats the integer GEMM of several digits), wider weights, other dtypes
and other devices convert the expert's weights to the activations' dtype (exact) into a scratch buffer
reused by every expert and scale the GEMM's output per channel. Only experts that received
tokens are read.

Tried and not kept (docs/benchmarks.md, "int8 experts through oneDNN's int8 linear"): laying the
int8 experts out at load for oneDNN's int8 linear (``torch.ops.onednn.qlinear_pointwise``, the
digits as uint8 with zero point 128, on AVX-512 VNNI). It needs the weights transposed (``[in,
out]``); with only that form kept (no extra memory), the converted path for long slices reads them
transposed, and on the 2-core AMD EPYC the layer at 2,048 tokens (a prefill chunk) became 1.2-1.4x
float32's time where the stacked weights gave 0.8-1.15x, more than the digits gained at 8-128
tokens (1.00-1.48x instead of 1.22-1.76x); serving W1's first 32 prompts (one thread, under other
load) int8 took 1.30x float32's time, against 1.03x with the stacked weights. Its blocked layout (``qlinear_prepack``) was faster
still on one to four rows but cannot give plain weights back cheaply (2.4-10 ms per projection).
``torch._weight_int8pack_mm`` takes float32 activations too, but 5-160x slower than float32's GEMM.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dataclasses import dataclass
from typing import Any

from kernel_core.contracts.moe import MoEKernel, PreparedExperts

#: Largest bfloat16 slice computed by ``torch._weight_int8pack_mm``: on a 2-core Xeon (AMX) it beat
#: the digits by 25% at 1 and 2 rows, tied at 4 and lost from 8 on (it does not block over rows).
INT8PACK_MAX_ROWS = 2
#: ``torch._weight_int8pack_mm`` (a private op) reads the reduced dimension in blocks of 16 with no
#: remainder: torch 2.13 returns NaN for 8 or 24 and crashes for 12; other widths take the digits.
INT8PACK_ALIGNMENT = 16
#: Base-256 digits per activation on the CPU's int8 path, by activation dtype (others convert).
ACTIVATION_DIGITS = {torch.float32: 4, torch.bfloat16: 3}
#: Widest reduced dimension whose int32 sums of digit times weight products (each at most 128 * 128
#: in magnitude) cannot overflow; wider weights are converted.
DIGITS_MAX_WIDTH = (2**31 - 1) // (128 * 128)
#: Longest slice multiplied as digits, by activation dtype; longer ones convert the weights. bfloat16:
#: on a 2-core Xeon (AMX) converting and a bfloat16 GEMM was as fast at 32 rows and twice as fast
#: from 64. float32: on that Xeon the digits won at every size measured (up to 256 rows, against
#: MKL); on a 2-core AMD EPYC (Zen 5), against oneDNN's float32 GEMM, they won up to 128 rows and
#: lost from 256 (1.3x slower at 256, 2.2-2.8x at 512-1024: a gate/up projection of one expert, one thread).
DIGITS_MAX_ROWS = {torch.float32: 128, torch.bfloat16: 32}
#: Whether float32 expert GEMMs on the CPU call oneDNN's linear (``torch.ops.mkldnn._linear_pointwise``,
#: a private op of torch's CPU builds with oneDNN) rather than ``torch.mm``, which takes MKL's sgemm: on
#: a 2-core AMD EPYC (Zen 5, AVX-512, no AMX), one thread, the whole layer ran 2.0-2.4x faster from 16
#: to 1024 tokens (outputs within 2e-6 of the loop's). Checked once, at import.
ONEDNN_FLOAT32 = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
#: Dtypes whose full-precision experts :meth:`TorchMoE.prepare` packs for oneDNN on the CPU (torch's
#: ``mkldnn._reorder_linear_weight``, a private op; used only where torch has it). The whole layer of
#: ``kcore bench moe`` (8 experts, hidden 1024, width 3584, top-2), packed against unpacked, on a
#: 2-core AMD EPYC (Zen 5), one thread, side by side under other load: float32 1.6x at 1 token,
#: 1.3-1.4x at 16-64, 1.2x at 256, 1.06x at 1024; bfloat16 3.9x at 1, 1.5x at 16, 1.2x at 64,
#: 1.1x at 256, 0.88x and 1.07x at 1024 (two runs), 1.03x at 2048.
PACK_DTYPES = (torch.float32, torch.bfloat16) if ONEDNN_FLOAT32 and hasattr(torch.ops.mkldnn, "_reorder_linear_weight") else ()
#: The row count oneDNN lays packed weights out for (a hint: every row count computes correctly). One
#: bfloat16 gate/up GEMM on that EPYC: a pack for 64 rows took 0.8 ms at one row where a pack for 1
#: took 4.6, and 186 ms at 2,048 rows where a pack for 1,024 took 167.
PACK_ROWS_HINT = 64


@dataclass(frozen=True)
class PackedExperts:
    """Each expert's ``gate_up`` and ``down`` weights as oneDNN-packed tensors."""

    gate_up: list[torch.Tensor]
    down: list[torch.Tensor]


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
        prepared: PackedExperts | None = None,
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
        converts = w_gate_up_scale is not None and prepared is None
        scratch = x.new_empty(max(w_gate_up[0].numel(), w_down[0].numel())) if converts else None
        weights_up, weights_down = (w_gate_up, w_down) if prepared is None else (prepared.gate_up, prepared.down)
        start = 0
        for expert, count in enumerate(counts):
            if not count:
                continue
            rows = slice(start, start + count)
            start += count
            gate_up = gate_up_rows[:count]
            self.project(x[rows], weights_up[expert], _expert(w_gate_up_scale, expert), gate_up, scratch)
            gate = gate_up[:, :intermediate]
            F.silu(gate, inplace=True).mul_(gate_up[:, intermediate:])
            self.project(gate, weights_down[expert], _expert(w_down_scale, expert), out[rows], scratch)
        out.mul_(weights.flatten()[order].unsqueeze(1).to(out.dtype))
        return torch.zeros_like(hidden).index_add_(0, tokens, out)

    def project(
        self, x: torch.Tensor, weight: Any, scale: torch.Tensor | None, out: torch.Tensor, scratch: torch.Tensor | None
    ) -> None:
        """``out = x @ weight.T`` for one expert's slice of rows: ``weight`` is a stacked slice, or what
        :meth:`prepare` made of one. A subclass whose ``prepare`` lays experts out otherwise overrides
        this for its form and keeps the routing, grouping and weighted sum of :meth:`forward`."""
        _project(x, weight, scale, out, scratch)

    def prepare(
        self,
        w_gate_up: torch.Tensor,
        w_down: torch.Tensor,
        *,
        w_gate_up_scale: torch.Tensor | None = None,
        w_down_scale: torch.Tensor | None = None,
    ) -> PreparedExperts | None:
        """Full-precision experts on the CPU in a dtype of :data:`PACK_DTYPES`: every expert's
        weights packed for oneDNN, replacing the stacked ones (``reads_stacked=False``); others
        (int8 experts, other devices) keep the stacked tensors."""
        if w_gate_up_scale is not None or w_gate_up.device.type != "cpu" or w_gate_up.dtype not in PACK_DTYPES:
            return None
        packed = PackedExperts(*([torch.ops.mkldnn._reorder_linear_weight(w, PACK_ROWS_HINT) for w in stacked] for stacked in (w_gate_up, w_down)))
        return PreparedExperts(packed, reads_stacked=False)


def _expert(scale: torch.Tensor | None, expert: int) -> torch.Tensor | None:
    return None if scale is None else scale[expert]


def _project(
    x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None, out: torch.Tensor, scratch: torch.Tensor | None
) -> None:
    """``out = x @ weight.T`` for one expert; with ``scale``, ``weight`` is int8, the real weight
    is ``weight * scale[:, None]``, and ``scratch`` holds at least one expert's converted weights."""
    if scale is None:
        _matmul(x, weight, out)
    elif x.device.type != "cpu":
        _project_converted(x, weight, scale, out, scratch)
    elif x.dtype == torch.bfloat16 and x.shape[0] <= INT8PACK_MAX_ROWS and weight.shape[1] % INT8PACK_ALIGNMENT == 0:
        out.copy_(torch._weight_int8pack_mm(x.contiguous(), weight, scale.to(x.dtype)))
    elif _digits_apply(x, weight):
        _project_digits(x, weight, scale, out, ACTIVATION_DIGITS[x.dtype])
    else:
        _project_converted(x, weight, scale, out, scratch)


def _matmul(x: torch.Tensor, weight: torch.Tensor, out: torch.Tensor) -> None:
    """``out = x @ weight.T`` in ``x``'s dtype: oneDNN's linear for a packed ``weight`` and for
    float32 on the CPU where torch has it (:data:`ONEDNN_FLOAT32`), else ``torch.mm``."""
    if weight.is_mkldnn or (ONEDNN_FLOAT32 and x.dtype == torch.float32 and x.device.type == "cpu"):
        out.copy_(torch.ops.mkldnn._linear_pointwise(x, weight, None, "none", [], ""))
    else:
        torch.mm(x, weight.t(), out=out)


def _digits_apply(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the CPU's int8 GEMM of ``x`` by ``weight`` goes through activation digits."""
    if x.dtype not in ACTIVATION_DIGITS or weight.shape[1] > DIGITS_MAX_WIDTH:
        return False
    return x.shape[0] <= DIGITS_MAX_ROWS[x.dtype]


def _project_converted(
    x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, out: torch.Tensor, scratch: torch.Tensor
) -> None:
    """The int8 ``weight`` converted to ``x``'s dtype into ``scratch`` (exact), scales on the output."""
    dense = scratch[: weight.numel()].view(weight.shape).copy_(weight)
    _matmul(x, dense, out)
    out.mul_(scale.to(out.dtype))


def _project_digits(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, out: torch.Tensor, digits: int) -> None:
    """``x`` as ``digits`` int8 digits per value, one integer GEMM, the products recombined in float32."""
    rows = x.shape[0]
    encoded, step = _int8_digits(x, digits)
    products = torch._int_mm(encoded, weight.t()).view(rows, digits, -1)
    total = out if out.dtype == torch.float32 else torch.empty(out.shape, device=out.device)
    total.copy_(products[:, 0])
    for digit in range(1, digits):
        torch.add(products[:, digit], total, alpha=256, out=total)
    total.mul_(step).mul_(scale)
    if total is not out:
        out.copy_(total)


def _int8_digits(x: torch.Tensor, digits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` ``[M, K]`` as ``[M * digits, K]`` int8: row ``r``'s digits (most significant first) at
    rows ``r * digits ...``, each in [-128, 127], of the integer ``round(x[r] / step[r])``, whose
    magnitude stays under ``2**(8 * digits - 2)``; ``step`` ``[M, 1]`` float32 is a power of two
    (NaN for a row holding inf or NaN, so its outputs are NaN)."""
    rows, width = x.shape
    bits = 8 * digits - 2
    largest = x.abs().amax(dim=1, keepdim=True).float()
    finite = torch.isfinite(largest)
    # largest < 2**exponent; the floor keeps 2**(bits - exponent) a finite float32.
    exponent = torch.frexp(largest).exponent.clamp_(min=-90)
    one = torch.ones_like(largest)
    value = torch.where(finite, x * torch.ldexp(one, bits - exponent), 0.0).round_().to(torch.int32)
    encoded = torch.empty(rows, digits, width, dtype=torch.int8, device=x.device)
    for digit in range(digits - 1, 0, -1):
        carry = (value + 128).bitwise_right_shift_(8)
        encoded[:, digit] = value.sub_(carry * 256)
        value = carry
    encoded[:, 0] = value
    step = torch.where(finite, torch.ldexp(one, exponent - bits), float("nan"))
    return encoded.view(rows * digits, width), step

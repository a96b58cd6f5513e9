"""The expert GEMM Triton kernel, launched twice per forward (gate/up, then down).

Each program takes ``BLOCK_M`` rows of the expert-sorted pair order of
:mod:`kernel_core_moe_triton.align` (one expert per block) and ``BLOCK_N`` output columns. It
reads its input rows through the pair ids, so the hidden states are never copied per expert,
loads the expert's weight tiles (int8 ones converted to the activations' dtype), multiplies with
``tl.dot`` into float32 accumulators, and in the epilogue applies the per-output-channel int8
scales, then either SiLU(gate) * up (the gate/up launch: the intermediate is written once, already
activated) or the pair's routing weight (the down launch). Rows are written per pair.

Triton reads ``TRITON_INTERPRET`` when ``@triton.jit`` decorates a kernel, that is when this
module is first imported: set then, the kernel runs in Triton's interpreter on CPU tensors.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernel_core_moe_triton.align import AlignedPairs
from kernel_core_moe_triton.tiles import Tiles


@triton.jit
def _expert_gemm_kernel(
    a_ptr,
    w_ptr,
    scale_ptr,
    routing_ptr,
    out_ptr,
    sorted_pair_ids_ptr,
    block_experts_ptr,
    num_padded_ptr,
    num_pairs,
    pairs_per_a_row,
    n_out,
    k_in,
    stride_am,
    stride_ak,
    stride_we,
    stride_wn,
    stride_wk,
    stride_se,
    stride_sn,
    stride_om,
    stride_on,
    HAS_SCALE: tl.constexpr,
    SILU_AND_MUL: tl.constexpr,
    MUL_ROUTING_WEIGHT: tl.constexpr,
    DOT_IN_FLOAT32: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """``out[pair, n] = epilogue(sum_k a[pair // pairs_per_a_row, k] * w[expert, n, k])``; with
    ``SILU_AND_MUL`` the weight holds gate rows ``[0, n_out)`` then up rows ``[n_out, 2 n_out)``."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    if pid_m * BLOCK_M >= tl.load(num_padded_ptr):
        return
    pairs = tl.load(sorted_pair_ids_ptr + pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    row_ok = pairs < num_pairs
    expert = tl.load(block_experts_ptr + pid_m).to(tl.int64)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < n_out
    ks = tl.arange(0, BLOCK_K)

    a_ptrs = a_ptr + (pairs // pairs_per_a_row)[:, None] * stride_am + ks[None, :] * stride_ak
    w_ptrs = w_ptr + expert * stride_we + cols[None, :] * stride_wn + ks[:, None] * stride_wk
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if SILU_AND_MUL:
        up_ptrs = w_ptrs + n_out * stride_wn
        up_acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k_start in range(0, k_in, BLOCK_K):
        k_ok = ks < k_in - k_start
        a = tl.load(a_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        if DOT_IN_FLOAT32:
            a = a.to(tl.float32)
        w_mask = k_ok[:, None] & col_ok[None, :]
        acc = tl.dot(a, tl.load(w_ptrs, mask=w_mask, other=0).to(a.dtype), acc, input_precision=DOT_PRECISION)
        w_ptrs += BLOCK_K * stride_wk
        if SILU_AND_MUL:
            up = tl.load(up_ptrs, mask=w_mask, other=0).to(a.dtype)
            up_acc = tl.dot(a, up, up_acc, input_precision=DOT_PRECISION)
            up_ptrs += BLOCK_K * stride_wk
        a_ptrs += BLOCK_K * stride_ak

    if HAS_SCALE:
        scale_ptrs = scale_ptr + expert * stride_se + cols * stride_sn
        acc *= tl.load(scale_ptrs, mask=col_ok, other=0.0)[None, :]
        if SILU_AND_MUL:
            up_acc *= tl.load(scale_ptrs + n_out * stride_sn, mask=col_ok, other=0.0)[None, :]
    if SILU_AND_MUL:
        acc = acc * tl.sigmoid(acc) * up_acc
    if MUL_ROUTING_WEIGHT:
        acc *= tl.load(routing_ptr + pairs, mask=row_ok, other=0.0)[:, None]
    out_ptrs = out_ptr + pairs[:, None] * stride_om + cols[None, :] * stride_on
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


#: Whether the kernel was decorated under ``TRITON_INTERPRET=1`` (it then runs on CPU tensors).
INTERPRETED = not isinstance(_expert_gemm_kernel, triton.runtime.JITFunction)


def expert_gemm(
    a: torch.Tensor,
    weight: torch.Tensor,
    scale: torch.Tensor | None,
    out: torch.Tensor,
    aligned: AlignedPairs,
    tiles: Tiles,
    *,
    pairs_per_a_row: int,
    routing_weights: torch.Tensor | None = None,
    silu_and_mul: bool = False,
) -> None:
    """Write ``out`` (``[pairs, N]``) from ``a`` (rows read at ``pair // pairs_per_a_row``) and the
    stacked expert weights ``[E, N or 2N, K]`` (``silu_and_mul``: gate rows then up rows), scaled
    by ``scale`` ``[E, N or 2N]`` when given and by ``routing_weights`` ``[pairs]`` when given."""
    n_out = out.shape[1]
    grid = (aligned.block_experts.numel(), triton.cdiv(n_out, tiles.block_n))
    # Unused pointers still need a tensor: the kernel never loads them (their flag is off).
    scale_arg = weight if scale is None else scale
    routing_arg = out if routing_weights is None else routing_weights
    _expert_gemm_kernel[grid](
        a,
        weight,
        scale_arg,
        routing_arg,
        out,
        aligned.sorted_pair_ids,
        aligned.block_experts,
        aligned.num_padded,
        out.shape[0],
        pairs_per_a_row,
        n_out,
        a.shape[1],
        a.stride(0),
        a.stride(1),
        weight.stride(0),
        weight.stride(1),
        weight.stride(2),
        scale_arg.stride(0),
        scale_arg.stride(1),
        out.stride(0),
        out.stride(1),
        HAS_SCALE=scale is not None,
        SILU_AND_MUL=silu_and_mul,
        MUL_ROUTING_WEIGHT=routing_weights is not None,
        # Triton's interpreter (3.9) multiplies bfloat16 tiles as their raw 16-bit patterns in
        # tl.dot; in float32 the products are the same exact ones a GPU accumulates.
        DOT_IN_FLOAT32=INTERPRETED,
        # float32 activations stay float32 in tl.dot (no TF32), as the contract's 1e-5 asks;
        # bfloat16 and float16 take the device's default, exact products into float32.
        DOT_PRECISION="ieee" if a.dtype == torch.float32 else None,
        BLOCK_M=tiles.block_m,
        BLOCK_N=tiles.block_n,
        BLOCK_K=tiles.block_k,
        num_warps=tiles.num_warps,
        num_stages=tiles.num_stages,
    )

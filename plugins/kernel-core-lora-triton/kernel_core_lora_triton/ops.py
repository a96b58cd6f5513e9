"""The shrink and expand Triton kernels (Punica's SGMV), one launch each per projection.

Both take the step's *row blocks*: ``blocks`` is ``[3, num_blocks]`` int32 (first row, end row,
slot) of at most ``BLOCK_M`` consecutive rows sharing one slot, cut from the batch's segments, so
each program reads its rows as one contiguous run and one slot's factor tiles, which ``tl.dot``
multiplies against all of them. Rows without a slot are in no block: never read, never written.

- shrink: ``inter[rows, r] = sum_k x[rows, k] * lora_a[slot, r, k]`` into a float32 ``[T, R]``
  intermediate; grid ``(blocks, rank tiles, split_k)``. With ``SPLIT_K > 1`` each program sums
  every ``SPLIT_K``-th ``BLOCK_K`` step and adds its part atomically (the intermediate is zeroed).
- expand: ``output[rows, n] += sum_r inter[rows, r] * lora_b[slot, n, r]``, accumulated in float32
  and added to the output tile read back, stored in the output's dtype; grid ``(blocks, out tiles)``.

Triton reads ``TRITON_INTERPRET`` when ``@triton.jit`` decorates a kernel, that is when this
module is first imported: set then, the kernels run in Triton's interpreter on CPU tensors.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _shrink_kernel(
    x_ptr,
    a_ptr,
    inter_ptr,
    blocks_ptr,
    num_blocks,
    rank,
    k_in,
    stride_xm,
    stride_xk,
    stride_as,
    stride_ar,
    stride_ak,
    stride_im,
    stride_ir,
    SPLIT_K: tl.constexpr,
    DOT_IN_FLOAT32: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """``inter[rows, r] (+)= x[rows] @ lora_a[slot, r].T`` for one row block and rank tile."""
    pid_block = tl.program_id(0)
    pid_r = tl.program_id(1)
    pid_k = tl.program_id(2)
    start = tl.load(blocks_ptr + pid_block)
    end = tl.load(blocks_ptr + num_blocks + pid_block)
    slot = tl.load(blocks_ptr + 2 * num_blocks + pid_block).to(tl.int64)
    rows = start + tl.arange(0, BLOCK_M)
    row_ok = rows < end
    rows = rows.to(tl.int64)
    rs = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    r_ok = rs < rank

    acc = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
    for step in range(0, tl.cdiv(k_in, BLOCK_K * SPLIT_K)):
        ks = (step * SPLIT_K + pid_k) * BLOCK_K + tl.arange(0, BLOCK_K)
        k_ok = ks < k_in
        x = tl.load(
            x_ptr + rows[:, None] * stride_xm + ks[None, :] * stride_xk, mask=row_ok[:, None] & k_ok[None, :], other=0.0
        )
        a = tl.load(
            a_ptr + slot * stride_as + rs[None, :] * stride_ar + ks[:, None] * stride_ak,
            mask=k_ok[:, None] & r_ok[None, :],
            other=0.0,
        )
        if DOT_IN_FLOAT32:
            x = x.to(tl.float32)
            a = a.to(tl.float32)
        acc = tl.dot(x, a, acc, input_precision=DOT_PRECISION)

    inter_ptrs = inter_ptr + rows[:, None] * stride_im + rs[None, :] * stride_ir
    mask = row_ok[:, None] & r_ok[None, :]
    if SPLIT_K == 1:
        tl.store(inter_ptrs, acc, mask=mask)
    else:
        tl.atomic_add(inter_ptrs, acc, mask=mask)


@triton.jit
def _expand_kernel(
    inter_ptr,
    b_ptr,
    out_ptr,
    blocks_ptr,
    num_blocks,
    rank,
    n_out,
    stride_im,
    stride_ir,
    stride_bs,
    stride_bn,
    stride_br,
    stride_om,
    stride_on,
    DOT_IN_FLOAT32: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    """``output[rows, n] += inter[rows] @ lora_b[slot, n].T`` for one row block and output tile."""
    pid_block = tl.program_id(0)
    pid_n = tl.program_id(1)
    start = tl.load(blocks_ptr + pid_block)
    end = tl.load(blocks_ptr + num_blocks + pid_block)
    slot = tl.load(blocks_ptr + 2 * num_blocks + pid_block).to(tl.int64)
    rows = start + tl.arange(0, BLOCK_M)
    row_ok = rows < end
    rows = rows.to(tl.int64)
    ns = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = ns < n_out

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for r_start in range(0, rank, BLOCK_R):
        rs = r_start + tl.arange(0, BLOCK_R)
        r_ok = rs < rank
        inter = tl.load(
            inter_ptr + rows[:, None] * stride_im + rs[None, :] * stride_ir, mask=row_ok[:, None] & r_ok[None, :], other=0.0
        )
        b = tl.load(
            b_ptr + slot * stride_bs + ns[None, :] * stride_bn + rs[:, None] * stride_br,
            mask=r_ok[:, None] & n_ok[None, :],
            other=0.0,
        )
        if DOT_IN_FLOAT32:
            b = b.to(tl.float32)
        else:
            inter = inter.to(b.dtype)
        acc = tl.dot(inter, b, acc, input_precision=DOT_PRECISION)

    out_ptrs = out_ptr + rows[:, None] * stride_om + ns[None, :] * stride_on
    mask = row_ok[:, None] & n_ok[None, :]
    before = tl.load(out_ptrs, mask=mask, other=0.0)
    tl.store(out_ptrs, (before.to(tl.float32) + acc).to(out_ptr.dtype.element_ty), mask=mask)


#: Whether the kernels were decorated under ``TRITON_INTERPRET=1`` (they then run on CPU tensors).
INTERPRETED = not isinstance(_shrink_kernel, triton.runtime.JITFunction)


def _dot_options(dtype: torch.dtype) -> dict[str, object]:
    """Triton's interpreter (3.9) multiplies bfloat16 tiles as their raw 16-bit patterns in
    ``tl.dot``, so there both operands go to float32 (the same exact products a GPU accumulates
    in float32). float32 stays float32 in ``tl.dot`` (no TF32), as the contract's 1e-5 asks;
    bfloat16 and float16 take the device's default, exact products into float32."""
    return {"DOT_IN_FLOAT32": INTERPRETED, "DOT_PRECISION": "ieee" if dtype == torch.float32 else None}


def shrink(
    x: torch.Tensor,
    lora_a: torch.Tensor,
    inter: torch.Tensor,
    blocks: torch.Tensor,
    *,
    block_m: int,
    block_r: int,
    block_k: int,
    split_k: int,
    num_warps: int,
) -> None:
    """Write ``inter`` (float32 ``[T, R]``; zeroed by the caller when ``split_k > 1``) on the rows of
    ``blocks`` from ``x`` ``[T, in]`` and ``lora_a`` ``[slots, R, in]``."""
    num_blocks, rank = blocks.shape[1], lora_a.shape[1]
    grid = (num_blocks, triton.cdiv(rank, block_r), split_k)
    _shrink_kernel[grid](
        x, lora_a, inter, blocks, num_blocks, rank, x.shape[1],
        x.stride(0), x.stride(1), lora_a.stride(0), lora_a.stride(1), lora_a.stride(2), inter.stride(0), inter.stride(1),
        SPLIT_K=split_k, BLOCK_M=block_m, BLOCK_R=block_r, BLOCK_K=block_k, num_warps=num_warps, **_dot_options(x.dtype),
    )


def expand(
    inter: torch.Tensor,
    lora_b: torch.Tensor,
    output: torch.Tensor,
    blocks: torch.Tensor,
    *,
    block_m: int,
    block_n: int,
    block_r: int,
    num_warps: int,
) -> None:
    """Add ``inter @ lora_b[slot].T`` into ``output`` ``[T, out]`` in place on the rows of ``blocks``."""
    num_blocks, n_out, rank = blocks.shape[1], lora_b.shape[1], lora_b.shape[2]
    grid = (num_blocks, triton.cdiv(n_out, block_n))
    _expand_kernel[grid](
        inter, lora_b, output, blocks, num_blocks, rank, n_out,
        inter.stride(0), inter.stride(1), lora_b.stride(0), lora_b.stride(1), lora_b.stride(2),
        output.stride(0), output.stride(1),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_R=block_r, num_warps=num_warps, **_dot_options(output.dtype),
    )

"""The paged-attention Triton kernel: one launch per layer for every row of a mixed step.

Grid ``(query blocks, KV heads)``. A program takes ``BLOCK_Q`` consecutive query tokens of one
request times the ``GROUP`` query heads sharing one KV head: ``BLOCK_M = BLOCK_Q * GROUP`` rows
(padded to a power of two), so each key and value tile read from the cache serves every query
head of its group. It finds its request by a binary search over ``query_start_loc`` (no per-step
index tensor is built on the host), then walks the request's context ``BLOCK_N`` positions at a
time through its block table (a tile may span several cache blocks, or part of one), with an
online softmax in float32. Causality and the sliding window are applied per row (a query at
position q sees keys p with ``q - window < p <= q``); loads are masked to positions below the
row block's last visible key, never past ``seq_lens``, so unused cache slots (NaN) are never read.

The number of query blocks is bounded without a device sync: request ``i``'s blocks are
numbered from ``query_start_loc[i] // BLOCK_Q + i``, so ``T // BLOCK_Q + B`` programs cover every
request; those past a request's last query return at once (vLLM's unified attention does the
same).

Triton reads ``TRITON_INTERPRET`` when ``@triton.jit`` decorates a kernel, that is when this
module is first imported: set then, the kernel runs in Triton's interpreter on CPU tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl


@triton.jit
def _rounded(x, dtype: tl.constexpr, INTERPRETER: tl.constexpr):
    """``x`` (float32) in ``dtype``, rounded to nearest even as GPUs round. Triton's interpreter (3.9)
    truncates float32 to bfloat16: there the bits are rounded first, so that its cast is exact."""
    if INTERPRETER and dtype == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
        x = bits.to(tl.float32, bitcast=True)
    return x.to(dtype)


@triton.jit
def _paged_attention_kernel(
    out_ptr,
    q_ptr,
    cache_ptr,
    block_tables_ptr,
    seq_lens_ptr,
    query_start_loc_ptr,
    num_requests,
    scale,
    window,
    block_size,
    head_size,
    stride_qt,
    stride_qh,
    stride_qd,
    stride_ot,
    stride_oh,
    stride_od,
    stride_ckv,
    stride_cb,
    stride_cs,
    stride_ch,
    stride_cd,
    stride_bt,
    GROUP: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HEAD_PAD: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
    INTERPRETER: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """``out[t, h] = softmax(scale * q[t, h] . K_visible) V_visible`` for the rows of one program."""
    q_block = tl.program_id(0)
    kv_head = tl.program_id(1)

    # The last request whose first query block is at or before this one.
    low = 0
    high = num_requests
    while low < high:
        mid = (low + high) // 2
        if tl.load(query_start_loc_ptr + mid) // BLOCK_Q + mid <= q_block:
            low = mid + 1
        else:
            high = mid
    request = low - 1

    q_start = tl.load(query_start_loc_ptr + request)
    q_len = tl.load(query_start_loc_ptr + request + 1) - q_start
    first = (q_block - (q_start // BLOCK_Q + request)) * BLOCK_Q  # the program's first query, in the request
    if first >= q_len:
        return
    seq_len = tl.load(seq_lens_ptr + request)
    context = seq_len - q_len  # positions cached before this step

    rows = tl.arange(0, BLOCK_M)
    local = first + rows // GROUP
    head = kv_head * GROUP + rows % GROUP
    row_ok = (rows < BLOCK_Q * GROUP) & (local < q_len)
    q_pos = context + local
    dims = tl.arange(0, HEAD_PAD)
    dim_ok = dims < head_size
    token = (q_start + local).to(tl.int64)
    q = tl.load(
        q_ptr + token[:, None] * stride_qt + head[:, None] * stride_qh + dims[None, :] * stride_qd,
        mask=row_ok[:, None] & dim_ok[None, :],
        other=0.0,
    )
    if INTERPRETER:
        q = q.to(tl.float32)

    # Keys [begin, end): up to the block's last query, from the first one's window.
    end = context + tl.minimum(first + BLOCK_Q, q_len)
    begin = 0
    if HAS_WINDOW:
        begin = tl.maximum(context + first - window + 1, 0)

    m = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    total = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_PAD], dtype=tl.float32)
    cols = tl.arange(0, BLOCK_N)
    k_base = cache_ptr + kv_head.to(tl.int64) * stride_ch
    v_base = k_base + stride_ckv
    table = block_tables_ptr + request * stride_bt
    for start in range(begin, end, BLOCK_N):
        k_pos = start + cols
        k_ok = k_pos < end
        block = tl.load(table + k_pos // block_size, mask=k_ok, other=0).to(tl.int64)
        slot = block * stride_cb + (k_pos % block_size).to(tl.int64) * stride_cs
        k = tl.load(
            k_base + slot[None, :] + dims[:, None] * stride_cd, mask=dim_ok[:, None] & k_ok[None, :], other=0.0
        )
        if INTERPRETER:
            k = k.to(tl.float32)
        scores = tl.dot(q, k, input_precision=DOT_PRECISION) * scale
        visible = k_ok[None, :] & (k_pos[None, :] <= q_pos[:, None])
        if HAS_WINDOW:
            visible = visible & (k_pos[None, :] > q_pos[:, None] - window)
        scores = tl.where(visible, scores, float("-inf"))

        m_new = tl.maximum(m, tl.max(scores, axis=1))
        # Rows that saw no key yet (padding rows, or window starts past this tile) keep a finite
        # reference, so that exp(-inf - reference) is 0 rather than NaN.
        reference = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp(scores - reference[:, None])
        alpha = tl.exp(m - reference)
        total = total * alpha + tl.sum(p, axis=1)

        v = tl.load(
            v_base + slot[:, None] + dims[None, :] * stride_cd, mask=k_ok[:, None] & dim_ok[None, :], other=0.0
        )
        # Probabilities weigh V in V's dtype, as GPU flash kernels do (float32 products of two
        # bfloat16 are exact, so the interpreter's float32 dot equals a GPU's bfloat16 one).
        p = _rounded(p, v.dtype, INTERPRETER)
        if INTERPRETER:
            p = p.to(tl.float32)
            v = v.to(tl.float32)
        acc = acc * alpha[:, None] + tl.dot(p, v, input_precision=DOT_PRECISION)
        m = m_new

    out = acc / tl.where(total == 0.0, 1.0, total)[:, None]
    tl.store(
        out_ptr + token[:, None] * stride_ot + head[:, None] * stride_oh + dims[None, :] * stride_od,
        _rounded(out, out_ptr.dtype.element_ty, INTERPRETER),
        mask=row_ok[:, None] & dim_ok[None, :],
    )


#: Whether the kernel was decorated under ``TRITON_INTERPRET=1`` (it then runs on CPU tensors).
INTERPRETED = not isinstance(_paged_attention_kernel, triton.runtime.JITFunction)


@dataclass(frozen=True)
class Tiles:
    """One launch configuration of the kernel."""

    block_m: int  #: rows per program (query tokens x query heads of one KV head), at least the group
    block_n: int  #: context positions per loop step
    num_warps: int


def paged_attention(
    query: torch.Tensor,
    kv_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    query_start_loc: torch.Tensor,
    scale: float,
    window: int | None,
    out: torch.Tensor,
    tiles: Tiles,
) -> None:
    """Launch the kernel once for the whole step, writing ``out`` ``[T, H, D]``; the step's keys and
    values must already be in ``kv_cache`` (the default layout ``(2, blocks, block_size, KVH, D)``)."""
    num_tokens, num_heads, head_size = query.shape
    num_kv_heads = kv_cache.shape[3]
    group = num_heads // num_kv_heads
    block_m = max(tiles.block_m, triton.next_power_of_2(group))
    block_q = block_m // group
    num_requests = seq_lens.shape[0]
    grid = (num_tokens // block_q + num_requests, num_kv_heads)
    _paged_attention_kernel[grid](
        out,
        query,
        kv_cache,
        block_tables,
        seq_lens,
        query_start_loc,
        num_requests,
        scale,
        window or 0,
        kv_cache.shape[2],
        head_size,
        *query.stride(),
        *out.stride(),
        kv_cache.stride(0),
        kv_cache.stride(1),
        kv_cache.stride(2),
        kv_cache.stride(3),
        kv_cache.stride(4),
        block_tables.stride(0),
        GROUP=group,
        BLOCK_Q=block_q,
        BLOCK_M=block_m,
        BLOCK_N=tiles.block_n,
        # tl.dot takes no dimension under 16 on GPUs: small heads are padded with masked columns.
        HEAD_PAD=max(16, triton.next_power_of_2(head_size)),
        HAS_WINDOW=window is not None,
        # Triton's interpreter (3.9) multiplies bfloat16 tiles as their raw 16-bit patterns in tl.dot
        # and truncates float32 to bfloat16: the kernel works around both there.
        INTERPRETER=INTERPRETED,
        # float32 stays float32 in tl.dot (no TF32), as the contract's 1e-5 asks.
        DOT_PRECISION="ieee" if query.dtype == torch.float32 else None,
        num_warps=tiles.num_warps,
    )

"""The torch backend with its decode and prefill paths replaced by compiled kernels reading the paged cache in place."""

from __future__ import annotations

import ctypes

import torch

from kernel_core.contracts.attention import AttentionMetadata
from kernel_core_attn_cpu.build import Layout, kernel
from kernel_core_attn_torch.backend import DecodeKernel, TorchAttention

#: dtype → the decode kernel's entry point for it (the prefill kernel's is float32 only).
_ENTRY_POINTS = {torch.float32: "kc_decode_f32", torch.bfloat16: "kc_decode_bf16"}


class CPUAttention(TorchAttention):
    """Decode requests go to ``paged_attention.cpp``: per (request, KV head), one walk over its
    block table with an online softmax, the query heads sharing the KV head scored together, so
    each key and value row is read once from the cache and never copied. The torch backend's
    per-step gather of every decode request's keys into a padded buffer, and its padding, are gone.

    float32 prefill chunks go to the same file's prefill kernel where it is built (AVX-512, head
    sizes 64 and 128): tiles of up to 24 query rows against each cache block's keys and values,
    1.5-2.7x torch's ``scaled_dot_product_attention`` from 128 to 2,048 tokens on one core.
    bfloat16 prompts stay with SDPA, the computation HF transformers runs: the kernel (as fast
    there) sums each score in another order, and the bfloat16 ties that flips cost greedy
    agreement with HF on the oracle prompts (90.1% of tokens against 97.9%). What the kernels do not
    cover (float16, over 64 query heads, heads over 256; prefill without AVX-512) takes the torch
    backend's path.
    """

    supports_sliding_window = True

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Why the kernel cannot run here (it did not build or load); None when it can."""
        error = kernel().error
        return None if error is None else f"its decode kernel is unavailable: {error}"

    def decode_kernel(self, query: torch.Tensor, kv_cache: torch.Tensor) -> DecodeKernel | None:
        return self._decode if _fits(query, kv_cache) else None

    def prefill_kernel(
        self, query: torch.Tensor, kv_cache: torch.Tensor, metadata: AttentionMetadata
    ) -> DecodeKernel | None:
        built = kernel()
        fits = (
            query.dtype == torch.float32  # bfloat16 prompts: SDPA, as HF computes them (see the class)
            and _fits(query, kv_cache)
            and built.has_prefill(query.shape[2], query.shape[1] // kv_cache.shape[-2])
            and len(metadata.query_lens_host) <= built.max_prefill_chunks
        )
        return self._prefill if fits else None

    def _decode(
        self, query: torch.Tensor, kv_cache: torch.Tensor, metadata: AttentionMetadata, out: torch.Tensor
    ) -> None:
        requests, rows, _, tables, seq_lens = _requests(metadata, prefill=False)
        if not len(requests):
            return
        _, num_blocks, block_size = kv_cache.shape[:3]
        entry = getattr(kernel().library, _ENTRY_POINTS[query.dtype])
        with torch.profiler.record_function("kernel_core_attn_cpu::paged_decode"):  # ctypes calls are no aten op
            entry(
                query.data_ptr(), kv_cache.data_ptr(), num_blocks * block_size, tables.data_ptr(), seq_lens.data_ptr(),
                requests.data_ptr(), rows.data_ptr(), len(requests), ctypes.byref(_layout(query, kv_cache, tables, metadata, out)),
                out.data_ptr(), torch.get_num_threads(),
            )

    def _prefill(
        self, query: torch.Tensor, kv_cache: torch.Tensor, metadata: AttentionMetadata, out: torch.Tensor
    ) -> None:
        requests, rows, counts, tables, seq_lens = _requests(metadata, prefill=True)
        _, num_blocks, block_size = kv_cache.shape[:3]
        entry = kernel().library.kc_prefill_f32
        with torch.profiler.record_function("kernel_core_attn_cpu::paged_prefill"):
            entry(
                query.data_ptr(), kv_cache.data_ptr(), num_blocks * block_size, tables.data_ptr(), seq_lens.data_ptr(),
                requests.data_ptr(), rows.data_ptr(), counts.data_ptr(), len(requests),
                ctypes.byref(_layout(query, kv_cache, tables, metadata, out)), out.data_ptr(), torch.get_num_threads(),
            )


def _fits(query: torch.Tensor, kv_cache: torch.Tensor) -> bool:
    """Whether the built kernel takes these tensors (device, dtype, layout, head counts and size)."""
    built = kernel()
    num_heads, head_size = query.shape[1:]
    return (
        built.library is not None
        and query.device.type == "cpu"
        and query.dtype in _ENTRY_POINTS
        and kv_cache.dtype == query.dtype
        and kv_cache.is_contiguous()
        and query.stride(-1) == 1
        and num_heads <= built.max_heads
        and head_size <= built.max_head
    )


def _layout(
    query: torch.Tensor, kv_cache: torch.Tensor, tables: torch.Tensor, metadata: AttentionMetadata, out: torch.Tensor
) -> Layout:
    """The kernel's view of the tensors' strides and the layer's heads, blocks and window."""
    _, _, block_size, num_kv_heads, head_size = kv_cache.shape
    return Layout(
        q_token_stride=query.stride(0),
        q_head_stride=query.stride(1),
        out_token_stride=out.stride(0),
        out_head_stride=out.stride(1),
        num_heads=query.shape[1],
        num_kv_heads=num_kv_heads,
        head_size=head_size,
        block_size=block_size,
        table_stride=tables.stride(0),
        window=metadata.sliding_window or 0,
        scale=metadata.scale,
    )


def _requests(
    metadata: AttentionMetadata, prefill: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The step's decode requests (one new token), or its prefill chunks (several): their indices,
    first query rows and new-token counts (int64), with the block tables and context lengths as
    contiguous int32; made on the first layer and kept in the step's scratch."""
    key = ("kernel_core_attn_cpu.requests", prefill)
    found = metadata.scratch.get(key)
    if found is None:
        requests, rows, counts, start = [], [], [], 0
        for i, length in enumerate(metadata.query_lens_host):
            if (length > 1) == prefill and length > 0:
                requests.append(i)
                rows.append(start)
                counts.append(length)
            start += length
        found = (
            torch.tensor(requests, dtype=torch.int64),
            torch.tensor(rows, dtype=torch.int64),
            torch.tensor(counts, dtype=torch.int64),
            metadata.block_tables.to(torch.int32).contiguous(),
            metadata.seq_lens.to(torch.int32).contiguous(),
        )
        metadata.scratch[key] = found
    return found

"""Causal attention over the paged KV cache in plain torch, batched across decode requests."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field

from kernel_core.contracts.attention import AttentionBackend, AttentionMetadata
from kernel_core.contracts.settings import PluginSettings
from kernel_core_attn_torch.plan import BUCKET_BYTES, DecodeBucket, PrefillChunk, step_plan


class TorchAttentionSettings(PluginSettings):
    """``--plugin-option attention-backend.torch.KEY=VALUE`` (and ``attention-backend.cpu``, which
    shares this path for prefill and what its kernel does not cover)."""

    bucket_bytes: int = Field(
        default=BUCKET_BYTES,
        ge=1,
        description="Most bytes of gathered keys one decode bucket holds: smaller buckets stay in the "
        "CPU's cache, larger ones take fewer batched calls.",
    )


class TorchAttention(AttentionBackend):
    """Writes the step's keys and values into their slots, then attends.

    Decode requests go in buckets: one gather of their keys from the cache into a buffer shared
    by all layers of the step, one batched matmul for the scores, one softmax, and one
    ``embedding_bag`` that sums the values weighted by the probabilities straight from the
    cache, whatever the number of requests. Grouped-query heads are never repeated: the queries
    sharing a KV head are the rows of one matrix against that head's keys. Each prefill chunk is
    one ``scaled_dot_product_attention`` call. A layer's sliding window limits what both read:
    a decode request gathers only the window's positions, a prefill chunk gets a banded mask.
    """

    supports_sliding_window = True
    Settings: ClassVar[type[PluginSettings]] = TorchAttentionSettings

    def __init__(self, settings: TorchAttentionSettings | None = None) -> None:
        #: Cap on one decode bucket's gathered keys; see :mod:`kernel_core_attn_torch.plan`.
        self.bucket_bytes = (settings or TorchAttentionSettings()).bucket_bytes

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        kv_cache: torch.Tensor,
        metadata: AttentionMetadata,
    ) -> torch.Tensor:
        num_kv_heads, head_size = key.shape[1:]
        keys = kv_cache[0].view(-1, num_kv_heads, head_size)  # one row per slot
        values = kv_cache[1].view(-1, num_kv_heads, head_size)
        keys.index_copy_(0, metadata.slot_mapping, key)
        values.index_copy_(0, metadata.slot_mapping, value)

        kernel = self.decode_kernel(query, kv_cache)
        plan = step_plan(
            metadata, query.shape[1], num_kv_heads, head_size, query.dtype, self.bucket_bytes, kernel is None
        )
        out = torch.empty_like(query)
        if kernel is not None:
            kernel(query, kv_cache, metadata, out)
        elif plan.decode:
            buffer = _key_buffer(metadata, plan.buffer_numel, kv_cache)
            for bucket in plan.decode:
                out.index_copy_(0, bucket.rows, _decode(query, keys, values, bucket, buffer, metadata.scale))
        prefill = self.prefill_kernel(query, kv_cache, metadata) if plan.prefill else None
        if prefill is not None:
            prefill(query, kv_cache, metadata, out)
            return out
        for chunk in plan.prefill:
            out[chunk.start : chunk.stop] = _prefill(query, key, value, keys, values, chunk, metadata.scale)
        return out

    def decode_kernel(self, query: torch.Tensor, kv_cache: torch.Tensor) -> DecodeKernel | None:
        """A kernel that attends this call's decode requests (one new token each) instead of the
        batched torch path, for a subclass that has one for these tensors; None here.

        It is called as ``kernel(query, kv_cache, metadata, out)`` after the new keys and values are
        written, and fills the decode requests' rows of ``out``; prefill chunks stay with torch.
        """
        return None

    def prefill_kernel(
        self, query: torch.Tensor, kv_cache: torch.Tensor, metadata: AttentionMetadata
    ) -> DecodeKernel | None:
        """A kernel that attends this call's prefill chunks (several new tokens of a request, over
        its cached context and causally over each other) instead of one
        ``scaled_dot_product_attention`` call per chunk, for a subclass that has one for these
        tensors; None here. Called like :meth:`decode_kernel`'s, after the new keys and values
        are written; it fills the prefill chunks' rows of ``out``."""
        return None


#: ``kernel(query, kv_cache, metadata, out)``: see :meth:`TorchAttention.decode_kernel` and
#: :meth:`TorchAttention.prefill_kernel`.
DecodeKernel = Callable[[torch.Tensor, torch.Tensor, AttentionMetadata, torch.Tensor], None]


def _key_buffer(metadata: AttentionMetadata, numel: int, kv_cache: torch.Tensor) -> torch.Tensor:
    """The keys' gather buffer, allocated once per step: a fresh allocation per layer costs more
    than the gather itself on a CPU (the pages are faulted in anew each time)."""
    key = ("kernel_core_attn_torch.buffers", kv_cache.dtype, kv_cache.device)
    buffer = metadata.scratch.get(key)
    if buffer is None or buffer.numel() < numel:
        buffer = torch.empty(numel, dtype=kv_cache.dtype, device=kv_cache.device)
        metadata.scratch[key] = buffer
    return buffer


def _decode(
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    bucket: DecodeBucket,
    buffer: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Outputs ``[n, heads, head]`` of one bucket's decode requests.

    The values are never gathered: ``embedding_bag`` reads each bag's rows of the cache and sums
    them weighted by the probabilities in one pass, which saves writing and re-reading a copy.
    """
    num_kv_heads, head_size = keys.shape[1:]
    n, num_heads = len(bucket.rows), query.shape[1]
    group = num_heads // num_kv_heads
    shape = (num_kv_heads * n, bucket.width, head_size)  # per (KV head, request): its context
    k_buffer = buffer[: len(bucket.kv_rows) * head_size].view(-1, head_size)
    k = torch.index_select(keys.view(-1, head_size), 0, bucket.kv_rows, out=k_buffer).view(shape)
    # Query head h uses KV head h // group: [n, kv_heads, group, head] -> [kv_heads * n, group, head].
    q = query.index_select(0, bucket.rows).view(n, num_kv_heads, group, head_size).transpose(0, 1)
    scores = torch.baddbmm(bucket.mask, q.reshape(-1, group, head_size), k.transpose(1, 2), alpha=scale)
    probs = torch.softmax(scores, dim=-1)  # [kv_heads * n, group, width]: one bag per row
    weights = probs.view(-1, bucket.width)
    out = F.embedding_bag(bucket.bag_rows, values.view(-1, head_size), per_sample_weights=weights, mode="sum")
    return out.view(num_kv_heads, n, group, head_size).transpose(0, 1).reshape(n, num_heads, head_size)


def _prefill(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    chunk: PrefillChunk,
    scale: float,
) -> torch.Tensor:
    """Outputs ``[new, heads, head]`` of one prefill chunk."""
    rows = slice(chunk.start, chunk.stop)
    if chunk.slots is None:  # a whole prompt: its own keys and values, plainly causal
        k, v = key[rows], value[rows]
    else:  # a chunk continuing a cached context: read the context back from the cache
        k, v = keys.index_select(0, chunk.slots), values.index_select(0, chunk.slots)
    # 4-D inputs (a batch of one): with 3-D ones torch takes its slow math path on CPU (12x).
    out = F.scaled_dot_product_attention(
        query[rows].transpose(0, 1)[None],
        k.transpose(0, 1)[None],
        v.transpose(0, 1)[None],
        attn_mask=chunk.mask,
        is_causal=chunk.mask is None,
        scale=scale,
        enable_gqa=True,
    )
    return out[0].transpose(0, 1)

"""Where each request of a step reads its keys and values: worked out once per step, on the
first layer, and reused by every other layer (they share the step's metadata and its scratch).

Decode requests (one new token) are batched: sorted by context length and cut into buckets,
each padded to its longest context, so one gather of keys, two batched operations on them and
one weighted sum of values serve a bucket.
Sorting keeps the padding small; the byte cap keeps a bucket's gathered keys in the CPU's cache
between the gather and the matmul that reads them. Prefill chunks (several new
tokens) each get their own causal attention call.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kernel_core.contracts.attention import AttentionMetadata

#: Most bytes of gathered keys one decode bucket may hold.
BUCKET_BYTES = 4 << 20


@dataclass(frozen=True)
class DecodeBucket:
    """Decode requests attended in one batch, keys laid out ``[kv_heads * requests, width, head]``."""

    rows: torch.Tensor  # [n] int64: each request's query row in the step's batch
    kv_rows: torch.Tensor  # [kv_heads * n * width] int64: rows of the cache as [slots * kv_heads, head]
    #: [kv_heads * n * group, width] int64: ``kv_rows`` once per query head, the bags of values
    #: each head's probabilities weight.
    bag_rows: torch.Tensor
    mask: torch.Tensor  # [kv_heads * n, 1, width]: 0 where a position exists, -inf where it pads
    width: int  # longest context in the bucket


@dataclass(frozen=True)
class PrefillChunk:
    """One request computing several new tokens: rows ``start:stop`` of the step's batch."""

    start: int
    stop: int
    #: Cache slots of the whole context, or None when the chunk is the whole context (a fresh
    #: prompt): then its own keys and values are all it attends to.
    slots: torch.Tensor | None
    #: ``[new, context]`` bool, True where a new token may look: new token ``j`` sees positions
    #: ``0 .. context - new + j``. None for a fresh prompt, which is plainly causal.
    mask: torch.Tensor | None


@dataclass(frozen=True)
class StepPlan:
    """Everything a layer needs besides its own tensors, shared by all layers of the step."""

    decode: list[DecodeBucket]
    prefill: list[PrefillChunk]
    #: Elements of the largest decode bucket's keys: the size of the reusable gather buffers.
    buffer_numel: int


def step_plan(
    metadata: AttentionMetadata,
    num_heads: int,
    num_kv_heads: int,
    head_size: int,
    dtype: torch.dtype,
    bucket_bytes: int = BUCKET_BYTES,
) -> StepPlan:
    """The plan for this step and layer shape, built on first use and kept in ``metadata.scratch``."""
    key = ("kernel_core_attn_torch", num_heads, num_kv_heads, head_size, dtype, bucket_bytes)
    plan = metadata.scratch.get(key)
    if plan is None:
        plan = _build(metadata, num_heads // num_kv_heads, num_kv_heads, head_size, dtype, bucket_bytes)
        metadata.scratch[key] = plan
    return plan


def _build(
    metadata: AttentionMetadata, group: int, num_kv_heads: int, head_size: int, dtype: torch.dtype, bucket_bytes: int
) -> StepPlan:
    starts = [0]
    for length in metadata.query_lens_host:
        starts.append(starts[-1] + length)
    decoding = [i for i, length in enumerate(metadata.query_lens_host) if length == 1]
    decoding.sort(key=lambda i: metadata.seq_lens_host[i])
    row_bytes = num_kv_heads * head_size * torch.finfo(dtype).bits // 8
    buckets = _bucket(decoding, metadata.seq_lens_host, max(1, bucket_bytes // row_bytes))
    decode = [_decode_bucket(metadata, members, starts, group, num_kv_heads, dtype) for members in buckets]
    prefill = [
        _prefill_chunk(metadata, i, starts)
        for i, length in enumerate(metadata.query_lens_host)
        if length > 1
    ]
    buffer_numel = max((len(b.kv_rows) * head_size for b in decode), default=0)
    return StepPlan(decode, prefill, buffer_numel)


def _bucket(requests: list[int], seq_lens: tuple[int, ...], max_positions: int) -> list[list[int]]:
    """Cut requests (sorted by context length) into runs whose padded size fits ``max_positions``."""
    buckets: list[list[int]] = []
    for i in requests:
        if buckets and (len(buckets[-1]) + 1) * seq_lens[i] <= max_positions:
            buckets[-1].append(i)
        else:
            buckets.append([i])
    return buckets


def _decode_bucket(
    metadata: AttentionMetadata,
    members: list[int],
    starts: list[int],
    group: int,
    num_kv_heads: int,
    dtype: torch.dtype,
) -> DecodeBucket:
    device = metadata.block_tables.device
    width = max(metadata.seq_lens_host[i] for i in members)
    index = torch.tensor(members, device=device)
    positions = torch.arange(width, device=device)
    lengths = torch.tensor([metadata.seq_lens_host[i] for i in members], device=device)
    present = positions < lengths[:, None]  # [n, width]
    # Padding reads position 0, which every request has written, so no garbage reaches a score.
    positions = torch.where(present, positions, 0)
    slots = _slots(metadata.block_tables.index_select(0, index).long(), positions, metadata.block_size)
    heads = torch.arange(num_kv_heads, device=device)[:, None, None]
    kv_rows = (slots * num_kv_heads + heads).flatten()  # head-major: [kv_heads, n, width]
    bag_rows = kv_rows.view(-1, 1, width).expand(-1, group, -1).reshape(-1, width)
    mask = torch.zeros(present.shape, dtype=dtype, device=device).masked_fill_(~present, float("-inf"))
    mask = mask.expand(num_kv_heads, *mask.shape).reshape(-1, 1, width)
    rows = torch.tensor([starts[i] for i in members], device=device)
    return DecodeBucket(rows, kv_rows, bag_rows, mask, width)


def _prefill_chunk(metadata: AttentionMetadata, i: int, starts: list[int]) -> PrefillChunk:
    new, context = metadata.query_lens_host[i], metadata.seq_lens_host[i]
    if new == context:
        return PrefillChunk(starts[i], starts[i + 1], None, None)
    device = metadata.block_tables.device
    positions = torch.arange(context, device=device)
    slots = _slots(metadata.block_tables[i : i + 1].long(), positions[None], metadata.block_size)[0]
    mask = torch.ones(new, context, dtype=torch.bool, device=device).tril(context - new)
    return PrefillChunk(starts[i], starts[i + 1], slots, mask)


def _slots(block_tables: torch.Tensor, positions: torch.Tensor, block_size: int) -> torch.Tensor:
    """Cache slot of each position: ``[requests, blocks]`` tables, ``[requests, width]`` positions."""
    block_index = torch.div(positions, block_size, rounding_mode="floor").expand(len(block_tables), -1)
    return block_tables.gather(1, block_index) * block_size + positions % block_size

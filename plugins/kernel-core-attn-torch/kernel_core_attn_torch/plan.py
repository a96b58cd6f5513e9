"""Where each request of a step reads its keys and values: worked out once per step, on the
first layer, and reused by every other layer (they share the step's metadata and its scratch).

Decode requests (one new token) are batched: sorted by context length and cut into buckets,
each padded to its longest context, so one gather of keys, two batched operations on them and
one weighted sum of values serve a bucket.
Sorting keeps the padding small; the byte cap keeps a bucket's gathered keys in the CPU's cache
between the gather and the matmul that reads them. Prefill chunks (several new
tokens) each get their own causal attention call.

A layer with a sliding window (``metadata.sliding_window``) gets its own plan: a decode request
gathers only the window's last positions, and a prefill chunk reads only the positions its
first token can see, under a banded mask.
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
    width: int  # most positions a request of the bucket sees (its context, or its window)


@dataclass(frozen=True)
class PrefillChunk:
    """One request computing several new tokens: rows ``start:stop`` of the step's batch."""

    start: int
    stop: int
    #: Cache slots of the positions the chunk may see (from the first one its first token's
    #: window reaches to the end of the context), or None when the chunk is the whole context (a
    #: fresh prompt): then its own keys and values are all it attends to.
    slots: torch.Tensor | None
    #: ``[new, positions]`` bool, True where a new token may look: new token ``j``, at position
    #: ``q = context - new + j``, sees positions ``p <= q`` (and ``p > q - window``). None for a
    #: fresh prompt without a window, which is plainly causal.
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
    batch_decodes: bool = True,
) -> StepPlan:
    """The plan for this step, layer shape and window, built on first use and kept in
    ``metadata.scratch`` (shared by the window views of the step's metadata). Without
    ``batch_decodes`` (a kernel attends decode requests in place), it has no decode buckets."""
    window = metadata.sliding_window
    key = ("kernel_core_attn_torch", num_heads, num_kv_heads, head_size, dtype, bucket_bytes, window, batch_decodes)
    plan = metadata.scratch.get(key)
    if plan is None:
        group = num_heads // num_kv_heads
        plan = _build(metadata, group, num_kv_heads, head_size, dtype, bucket_bytes, batch_decodes)
        metadata.scratch[key] = plan
    return plan


def _build(
    metadata: AttentionMetadata,
    group: int,
    num_kv_heads: int,
    head_size: int,
    dtype: torch.dtype,
    bucket_bytes: int,
    batch_decodes: bool,
) -> StepPlan:
    starts = [0]
    for length in metadata.query_lens_host:
        starts.append(starts[-1] + length)
    window = metadata.sliding_window
    # Positions each decode request sees: its whole context, or the window's last ones.
    visible = tuple(length if window is None else min(length, window) for length in metadata.seq_lens_host)
    decoding = [i for i, length in enumerate(metadata.query_lens_host) if length == 1 and batch_decodes]
    decoding.sort(key=lambda i: visible[i])
    row_bytes = num_kv_heads * head_size * torch.finfo(dtype).bits // 8
    buckets = _bucket(decoding, visible, max(1, bucket_bytes // row_bytes))
    decode = [_decode_bucket(metadata, members, visible, starts, group, num_kv_heads, dtype) for members in buckets]
    prefill = [
        _prefill_chunk(metadata, i, starts)
        for i, length in enumerate(metadata.query_lens_host)
        if length > 1
    ]
    buffer_numel = max((len(b.kv_rows) * head_size for b in decode), default=0)
    return StepPlan(decode, prefill, buffer_numel)


def _bucket(requests: list[int], visible: tuple[int, ...], max_positions: int) -> list[list[int]]:
    """Cut requests (sorted by positions seen) into runs whose padded size fits ``max_positions``."""
    buckets: list[list[int]] = []
    for i in requests:
        if buckets and (len(buckets[-1]) + 1) * visible[i] <= max_positions:
            buckets[-1].append(i)
        else:
            buckets.append([i])
    return buckets


def _decode_bucket(
    metadata: AttentionMetadata,
    members: list[int],
    visible: tuple[int, ...],
    starts: list[int],
    group: int,
    num_kv_heads: int,
    dtype: torch.dtype,
) -> DecodeBucket:
    """Request ``i`` reads its last ``visible[i]`` positions, from ``seq_lens[i] - visible[i]`` on."""
    device = metadata.block_tables.device
    width = max(visible[i] for i in members)
    index = torch.tensor(members, device=device)
    offsets = torch.arange(width, device=device)
    seen = torch.tensor([visible[i] for i in members], device=device)[:, None]
    first = torch.tensor([metadata.seq_lens_host[i] - visible[i] for i in members], device=device)[:, None]
    present = offsets < seen  # [n, width]
    # Padding reads the request's first visible position, which it has written, so no garbage
    # reaches a score.
    positions = first + torch.where(present, offsets, 0)
    slots = _slots(metadata.block_tables.index_select(0, index).long(), positions, metadata.block_size)
    heads = torch.arange(num_kv_heads, device=device)[:, None, None]
    kv_rows = (slots * num_kv_heads + heads).flatten()  # head-major: [kv_heads, n, width]
    bag_rows = kv_rows.view(-1, 1, width).expand(-1, group, -1).reshape(-1, width)
    mask = torch.zeros(present.shape, dtype=dtype, device=device).masked_fill_(~present, float("-inf"))
    mask = mask.expand(num_kv_heads, *mask.shape).reshape(-1, 1, width)
    rows = torch.tensor([starts[i] for i in members], device=device)
    return DecodeBucket(rows, kv_rows, bag_rows, mask, width)


def _prefill_chunk(metadata: AttentionMetadata, i: int, starts: list[int]) -> PrefillChunk:
    new, context, window = metadata.query_lens_host[i], metadata.seq_lens_host[i], metadata.sliding_window
    banded = window is not None and window < context
    if new == context and not banded:
        return PrefillChunk(starts[i], starts[i + 1], None, None)
    device = metadata.block_tables.device
    first = 0 if window is None else max(0, context - new - window + 1)  # the first token's window
    positions = torch.arange(first, context, device=device)
    queries = torch.arange(context - new, context, device=device)[:, None]
    mask = positions <= queries
    if banded:
        mask &= positions > queries - window
    if new == context:  # a fresh prompt: its own keys and values, under the banded mask
        return PrefillChunk(starts[i], starts[i + 1], None, mask)
    slots = _slots(metadata.block_tables[i : i + 1].long(), positions[None], metadata.block_size)[0]
    return PrefillChunk(starts[i], starts[i + 1], slots, mask)


def _slots(block_tables: torch.Tensor, positions: torch.Tensor, block_size: int) -> torch.Tensor:
    """Cache slot of each position: ``[requests, blocks]`` tables, ``[requests, width]`` positions."""
    block_index = torch.div(positions, block_size, rounding_mode="floor").expand(len(block_tables), -1)
    return block_tables.gather(1, block_index) * block_size + positions % block_size

"""Paged-KV batch layouts built the way the runner builds them, for the attention and model suites."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from kernel_core.contracts.attention import AttentionMetadata


def scattered_block_tables(
    lengths: Sequence[int], block_size: int, num_blocks: int, generator: torch.Generator
) -> list[list[int]]:
    """Distinct, shuffled blocks for requests that will reach ``lengths`` tokens, as a busy
    cache manager hands them out (never in order)."""
    needed = [math.ceil(length / block_size) for length in lengths]
    if sum(needed) > num_blocks:
        raise ValueError(f"{sum(needed)} blocks needed, the pool has {num_blocks}")
    pool = torch.randperm(num_blocks, generator=generator).tolist()
    tables, start = [], 0
    for count in needed:
        tables.append(pool[start : start + count])
        start += count
    return tables


def step_metadata(
    block_tables: Sequence[Sequence[int]],
    context_lens: Sequence[int],
    query_lens: Sequence[int],
    block_size: int,
    scale: float,
    device: torch.device,
) -> AttentionMetadata:
    """Metadata of one step where request ``i`` already has ``context_lens[i]`` tokens cached
    and computes ``query_lens[i]`` new ones."""
    slots = []
    for table, cached, new in zip(block_tables, context_lens, query_lens):
        slots += [table[pos // block_size] * block_size + pos % block_size for pos in range(cached, cached + new)]
    width = max(len(table) for table in block_tables)
    padded = [list(table) + [0] * (width - len(table)) for table in block_tables]
    starts = [0]
    for new in query_lens:
        starts.append(starts[-1] + new)
    return AttentionMetadata(
        slot_mapping=torch.tensor(slots, dtype=torch.int64, device=device),
        query_start_loc=torch.tensor(starts, dtype=torch.int32, device=device),
        seq_lens=torch.tensor([c + n for c, n in zip(context_lens, query_lens)], dtype=torch.int32, device=device),
        block_tables=torch.tensor(padded, dtype=torch.int32, device=device),
        block_size=block_size,
        scale=scale,
    )

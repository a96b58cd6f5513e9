"""Packing: several tokenized rows in one row of at most ``max_len`` tokens, so batches carry no
padding.

Rows are placed best-fit decreasing (TRL's ``"bfd"``): longest first, each into the packed row
with the least room that still holds it, a new one when none does; ties go to the earlier packed
row, so the result depends on the input alone. Each packed row carries ``position_ids`` that start
again at 0 with each original row: from them transformers (>= 4.53, with no ``attention_mask``
and no KV cache) builds a block-diagonal causal mask, so a row never attends to its neighbours. The
first label of each row is :data:`~.encode.IGNORE_INDEX`: it would be predicted from the previous
row's last token.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from typing import Any

from kernel_core.finetune.data.encode import IGNORE_INDEX

#: Rows packed together at most: packing works through the data in groups of this many rows.
PACK_GROUP = 1000


def best_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices of ``lengths`` grouped into bins of at most ``capacity``, best-fit decreasing."""
    bins: list[list[int]] = []
    room: list[tuple[int, int]] = []  # (space left, bin), sorted
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        length = lengths[index]
        if length > capacity:
            raise ValueError(f"a row of {length} tokens cannot be packed into rows of {capacity}")
        slot = bisect_left(room, (length, -1))
        if slot == len(room):
            bins.append([index])
            insort(room, (capacity - length, len(bins) - 1))
        else:
            left, chosen = room.pop(slot)
            bins[chosen].append(index)
            insort(room, (left - length, chosen))
    return bins


def pack_batch(batch: dict[str, list[list[int]]], max_len: int) -> dict[str, list[list[int]]]:
    """``datasets``' batched ``map`` function: tokenized rows (``input_ids``, ``labels``) in,
    packed rows (``input_ids``, ``labels``, ``position_ids``) out."""
    packed: dict[str, list[list[int]]] = {"input_ids": [], "labels": [], "position_ids": []}
    for group in best_fit_decreasing([len(ids) for ids in batch["input_ids"]], max_len):
        row: dict[str, list[Any]] = {"input_ids": [], "labels": [], "position_ids": []}
        for index in group:
            ids = batch["input_ids"][index]
            row["input_ids"] += ids
            row["labels"] += [IGNORE_INDEX, *batch["labels"][index][1:]]
            row["position_ids"] += range(len(ids))
        for key, value in row.items():
            packed[key].append(value)
    return packed

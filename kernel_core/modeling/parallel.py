"""Tensor-parallel building blocks: which shard of each weight a rank holds, and the layers that
run on those shards with one collective each (Megatron-LM's column/row-parallel linears and
vocab-parallel embedding, vLLM's KV-head replication, low-rank adapter factors cut to match
the base layer, as sharded multi-adapter serving does).

Public (:mod:`kernel_core.modeling`) so a model plugin gets tensor parallelism by building on these
layers. This module gathers them: the group handle and slicing (:mod:`~kernel_core.modeling.group`),
the column/row-parallel linears (:mod:`~kernel_core.modeling.layers`), the head rule
(:mod:`~kernel_core.modeling.attention`), and here the vocabulary, lm_head, expert and low-rank
rules. At size 1 (:data:`SINGLE`) nothing touches ``torch.distributed`` and every layer runs
exactly as its unsharded counterpart.

Sharding rules work on full tensors and on safetensors' lazy slices alike
(:meth:`SafetensorsCheckpoint.lazy`): they only index ``source[a:b]`` or ``source[:, a:b]``, so a
rank reading a checkpoint reads only its shard.

- Column-parallel (q/k/v, gate/up): each rank holds some output rows of each fused part; its output
  is its columns of the full output; no collective.
- Row-parallel (o, down): each rank holds some input columns and computes a partial sum; one
  all-reduce; the bias (held whole by every rank) is added once, after the all-reduce, on every rank.
- Vocab-parallel embedding: each rank holds a vocabulary range; ids outside it give zeros; one
  all-reduce. Parallel lm_head: each rank computes the logits of its range for the rows that
  sample only, then one all-gather (or one gather to the rank that samples).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kernel_core.modeling.attention import HeadShard, qkv_rows, shard_heads
from kernel_core.modeling.gemm import linear
from kernel_core.modeling.group import SINGLE, Source, TensorParallel, rows_of, take_columns, take_rows
from kernel_core.modeling.layers import ColumnParallelLinear, RowParallelLinear, shard_low_rank_column, shard_low_rank_row
from kernel_core.modeling.moe import ExpertWeights, FusedMoE


def vocab_range(vocab_size: int, tp: TensorParallel) -> tuple[slice, int]:
    """This rank's token ids and the rows every rank's shard has: ``ceil(vocab / size)`` ids
    each, the last rank's range shorter (its shard zero-padded, so gathers are even)."""
    rows = -(-vocab_size // tp.world_size)
    start = min(tp.rank * rows, vocab_size)
    return slice(start, min(start + rows, vocab_size)), rows


def _vocab_shard(
    weight: Source, vocab_size: int, tp: TensorParallel, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, slice]:
    ids, rows = vocab_range(vocab_size, tp)
    held = take_rows(weight, ids).to(dtype=dtype, device=device)
    if held.shape[0] == rows:
        return held, ids
    padded = torch.zeros((rows, *held.shape[1:]), dtype=dtype, device=device)
    padded[: held.shape[0]] = held
    return padded, ids


@dataclass(eq=False)
class VocabParallelEmbedding:
    """The token embedding table split by vocabulary: ``weight`` holds ids ``ids`` (zero-padded to
    :func:`vocab_range`'s rows). Ids of other ranks give zero rows here; one all-reduce sums the
    one nonzero row per token, so every rank gets the full ``[T, hidden]`` embeddings, exactly."""

    weight: torch.Tensor
    ids: slice
    vocab_size: int
    tp: TensorParallel = SINGLE

    @classmethod
    def shard(
        cls, weight: Source, vocab_size: int, tp: TensorParallel, *, dtype: torch.dtype, device: torch.device
    ) -> VocabParallelEmbedding:
        """From the full ``[vocab, hidden]`` table (tensor or lazy slice)."""
        held, ids = _vocab_shard(weight, vocab_size, tp, dtype, device)
        return cls(held, ids, vocab_size, tp)

    def __call__(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.tp.world_size == 1:
            return F.embedding(input_ids, self.weight)
        local = input_ids - self.ids.start
        outside = (local < 0) | (local >= self.ids.stop - self.ids.start)
        hidden = F.embedding(local.masked_fill(outside, 0), self.weight)
        return self.tp.all_reduce(hidden.masked_fill_(outside.unsqueeze(-1), 0))


@dataclass(eq=False)
class ParallelLMHead:
    """The output projection split by vocabulary as :class:`VocabParallelEmbedding` is (and the
    same shard when the embeddings are tied: :meth:`tied`): each rank computes its vocabulary's
    logits for the rows that sample only, one all-gather assembles ``[rows, vocab]``."""

    weight: torch.Tensor
    vocab_size: int
    tp: TensorParallel = SINGLE

    @classmethod
    def shard(
        cls, weight: Source, vocab_size: int, tp: TensorParallel, *, dtype: torch.dtype, device: torch.device
    ) -> ParallelLMHead:
        """From the full ``[vocab, hidden]`` ``lm_head`` weight (tensor or lazy slice)."""
        return cls(_vocab_shard(weight, vocab_size, tp, dtype, device)[0], vocab_size, tp)

    @classmethod
    def tied(cls, embedding: VocabParallelEmbedding) -> ParallelLMHead:
        """The head sharing ``embedding``'s shard (``tie_word_embeddings``)."""
        return cls(embedding.weight, embedding.vocab_size, embedding.tp)

    def __call__(
        self, hidden: torch.Tensor, rows: torch.Tensor | None = None, dst: int | None = None
    ) -> torch.Tensor | None:
        """Logits ``[len(rows), vocab]`` of ``hidden[rows]`` (all rows when None), on every rank,
        or with ``dst`` on that rank only (None on the others: one gather instead of an all-gather)."""
        if rows is not None:
            hidden = hidden.index_select(0, rows)
        logits = linear(hidden, self.weight)
        if self.tp.world_size == 1:
            return logits
        gathered = self.tp.all_gather(logits, dim=-1) if dst is None else self.tp.gather(logits, dim=-1, dst=dst)
        return None if gathered is None else gathered[:, : self.vocab_size]


def expert_shard(
    gate: Source, up: Source, down: Source, tp: TensorParallel, *, name: str = "experts"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One expert's ``(gate [I, H], up [I, H], down [H, I])`` cut for tensor-parallel experts:
    gate and up by output rows, down by input columns (tensors or lazy slices), to feed
    :meth:`ExpertWeights.from_experts` one expert at a time."""
    rows = tp.even_split(rows_of(gate), f"the intermediate size of {name}")
    return take_rows(gate, rows), take_rows(up, rows), take_columns(down, rows)


def shard_experts(experts: ExpertWeights, tp: TensorParallel, *, name: str = "experts") -> ExpertWeights:
    """Tensor-parallel experts from the full stacked ones: every expert on every rank, each with
    ``I / size`` of its intermediate channels (gate and up rows, down columns). int8 experts keep
    their values and scales (the down scales are per output channel, so they apply to partial sums)."""
    intermediate = experts.intermediate_size
    rows = tp.even_split(intermediate, f"the intermediate size of {name}")
    gate_up_rows = torch.cat(
        (torch.arange(rows.start, rows.stop), torch.arange(intermediate + rows.start, intermediate + rows.stop))
    ).to(experts.gate_up.device)
    return ExpertWeights(
        experts.gate_up.index_select(1, gate_up_rows),
        experts.down[:, :, rows].contiguous(),
        None if experts.gate_up_scale is None else experts.gate_up_scale.index_select(1, gate_up_rows),
        experts.down_scale,
    )


@dataclass(eq=False)
class TensorParallelMoE:
    """A :class:`FusedMoE` over :func:`shard_experts` (router replicated) whose output is this
    rank's partial sum, completed by one all-reduce per layer. A shared expert must be built of
    a column-parallel gate/up and a ``RowParallelLinear(reduce=False)`` down, so the same
    all-reduce covers it (its sigmoid gate scales the partial sum, which is linear)."""

    moe: FusedMoE
    tp: TensorParallel = SINGLE

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.tp.all_reduce(self.moe(hidden))


__all__ = [
    "ColumnParallelLinear",
    "HeadShard",
    "ParallelLMHead",
    "RowParallelLinear",
    "SINGLE",
    "Source",
    "TensorParallel",
    "TensorParallelMoE",
    "VocabParallelEmbedding",
    "expert_shard",
    "qkv_rows",
    "shard_experts",
    "shard_heads",
    "shard_low_rank_column",
    "shard_low_rank_row",
    "take_columns",
    "take_rows",
    "vocab_range",
]

"""Tensor-parallel building blocks: which shard of each weight a rank holds, and the layers that
run on those shards with one collective each (Megatron-LM's column/row-parallel linears and
vocab-parallel embedding, vLLM's KV-head replication, low-rank adapter factors cut to match
the base layer, as sharded multi-adapter serving does).

Public (:mod:`kernel_core.modeling`) so a model plugin gets tensor parallelism by building on these
layers; not wired into the engine yet (that lands with the executor seam, see docs/distributed.md).
Collectives are ``torch.distributed``'s only, on the backend the platform names
(``Platform.distributed_backend()``: gloo on the CPU). At size 1 (:data:`SINGLE`) nothing here
touches ``torch.distributed`` and every layer runs exactly as :class:`FusedLinear` does.

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

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from kernel_core.contracts.adapter_targets import apply_projection_hooks
from kernel_core.errors import UnsupportedModelError
from kernel_core.modeling.attention import AttentionHeads
from kernel_core.modeling.gemm import linear
from kernel_core.modeling.layers import FusedLinear
from kernel_core.modeling.moe import ExpertWeights, FusedMoE

#: A weight to shard: a full tensor, or a safetensors slice (``safe_open(...).get_slice(name)``).
Source = Any


@dataclass(frozen=True)
class TensorParallel:
    """This process's place in a tensor-parallel group and the group's collectives.

    ``group`` is the ``torch.distributed`` process group (None: the default one). At
    ``world_size`` 1 the collectives return their input and never call ``torch.distributed``, so
    a single-process engine needs no process group and pays nothing.
    """

    rank: int = 0
    world_size: int = 1
    group: Any = None

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"tensor-parallel rank {self.rank} is not in [0, world_size {self.world_size})")

    @classmethod
    def from_process_group(cls, group: Any = None) -> TensorParallel:
        """This process's rank and the size of ``group`` (None: the default group), which
        ``torch.distributed.init_process_group`` must have set up."""
        return cls(dist.get_rank(group), dist.get_world_size(group), group)

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over the ranks, in place; returns it."""
        if self.world_size > 1:
            dist.all_reduce(tensor, group=self.group)
        return tensor

    def all_gather(self, tensor: torch.Tensor, dim: int = -1) -> torch.Tensor:
        """Every rank's ``tensor`` (same shape on each) concatenated along ``dim`` in rank order."""
        if self.world_size == 1:
            return tensor
        tensor = tensor.contiguous()
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor, group=self.group)
        return torch.cat(parts, dim=dim)

    def gather(self, tensor: torch.Tensor, dim: int = -1, dst: int = 0) -> torch.Tensor | None:
        """:meth:`all_gather`'s result on rank ``dst`` only (None elsewhere): half the traffic
        when one rank consumes it (the driver rank sampling from the logits)."""
        if self.world_size == 1:
            return tensor
        tensor = tensor.contiguous()
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)] if self.rank == dst else None
        root = dst if self.group is None else dist.get_global_rank(self.group, dst)
        dist.gather(tensor, parts, dst=root, group=self.group)
        return None if parts is None else torch.cat(parts, dim=dim)

    def even_split(self, size: int, what: str, why: str = "") -> slice:
        """This rank's equal share of ``size`` items; ``what`` names them (and ``why`` says why
        they cannot be cut) in the error when the size does not divide them."""
        if size % self.world_size:
            raise UnsupportedModelError(
                f"tensor_parallel_size {self.world_size} does not divide {what} ({size}){why}"
            )
        share = size // self.world_size
        return slice(self.rank * share, (self.rank + 1) * share)


#: The size-1 group: every layer here runs as its unsharded counterpart.
SINGLE = TensorParallel()


def take_rows(source: Source, rows: slice) -> torch.Tensor:
    """``source[rows]`` as a tensor of its own: from a safetensors slice only those rows are read;
    from a tensor they are copied, so the shard does not keep the full tensor alive."""
    return _own(source, source[rows.start : rows.stop])


def take_columns(source: Source, columns: slice) -> torch.Tensor:
    """``source[:, columns]`` of a 2-D source, as :func:`take_rows` takes rows."""
    return _own(source, source[:, columns.start : columns.stop])


def _own(source: Source, part: torch.Tensor) -> torch.Tensor:
    return part.clone(memory_format=torch.contiguous_format) if isinstance(source, torch.Tensor) else part


def _rows_of(source: Source) -> int:
    return source.shape[0] if isinstance(source, torch.Tensor) else source.get_shape()[0]


@dataclass(frozen=True)
class HeadShard:
    """The attention heads one rank holds: ``heads`` (its counts, for its :class:`SelfAttention`),
    the global indices of its query heads and KV heads, and how many ranks hold each KV head."""

    heads: AttentionHeads
    q_heads: slice
    kv_heads: slice
    kv_replicas: int


def shard_heads(heads: AttentionHeads, tp: TensorParallel) -> HeadShard:
    """vLLM's rule: query heads split evenly (the size must divide them); KV heads split evenly
    when there are at least as many as ranks (the size must divide them), otherwise each rank
    holds one KV head, replicated on ``world_size / kv_heads`` consecutive ranks (the size must
    be a multiple of them). Rank r's query heads then all read its KV heads."""
    size, kv = tp.world_size, heads.num_kv_heads
    q_heads = tp.even_split(heads.num_heads, "num_attention_heads", ": each rank computes whole query heads")
    if kv >= size:
        kv_heads, replicas = tp.even_split(kv, "num_key_value_heads", ": each rank holds whole KV heads"), 1
    elif size % kv:
        raise UnsupportedModelError(
            f"tensor_parallel_size {size} exceeds num_key_value_heads ({kv}) and is not a multiple of it: "
            "KV heads can only be replicated evenly across ranks"
        )
    else:
        replicas = size // kv
        kv_heads = slice(tp.rank // replicas, tp.rank // replicas + 1)
    local = AttentionHeads(q_heads.stop - q_heads.start, kv_heads.stop - kv_heads.start, heads.head_size)
    return HeadShard(local, q_heads, kv_heads, replicas)


def qkv_rows(shard: HeadShard) -> tuple[slice, slice, slice]:
    """The rows of the q, k and v weights (each its own tensor, HF layout) that ``shard`` holds."""
    size = shard.heads.head_size
    kv = slice(shard.kv_heads.start * size, shard.kv_heads.stop * size)
    return slice(shard.q_heads.start * size, shard.q_heads.stop * size), kv, kv


@dataclass(eq=False)
class ColumnParallelLinear(FusedLinear):
    """A :class:`FusedLinear` holding some output rows of each part: it computes this rank's
    columns of the full output, with no collective. ``parts`` maps each HF module to its columns
    of this shard's output, ``global_rows`` lists the rows of the full fused weight held, in order
    (what an adapter's up-projection factor is cut by: :func:`shard_low_rank_column`). Hooks run on the shard."""

    tp: TensorParallel = SINGLE
    global_rows: tuple[slice, ...] = ()

    @classmethod
    def shard(
        cls,
        parts: Mapping[str, tuple[Source, Source | None]],
        rows: Mapping[str, slice],
        tp: TensorParallel,
        *,
        dtype: torch.dtype,
        device: torch.device,
    ) -> ColumnParallelLinear:
        """From each HF module's full ``(weight [out, in], bias [out] or None)`` (tensors or lazy
        slices), keeping ``rows[name]`` of each: see :func:`qkv_rows` and
        :meth:`TensorParallel.even_split`. Every part has a bias or none has."""
        weights, biases, local, global_rows = [], [], {}, []
        start = offset = 0
        for name, (weight, bias) in parts.items():
            kept = rows[name]
            weights.append(take_rows(weight, kept))
            if bias is not None:
                biases.append(take_rows(bias, kept))
            local[name] = slice(start, start + kept.stop - kept.start)
            global_rows.append(slice(offset + kept.start, offset + kept.stop))
            start, offset = local[name].stop, offset + _rows_of(weight)
        if biases and len(biases) != len(weights):
            raise ValueError("every part of a fused projection has a bias, or none has")
        to = {"dtype": dtype, "device": device}
        bias = torch.cat(biases).to(**to) if biases else None
        return cls(torch.cat(weights).to(**to), bias, local, tp=tp, global_rows=tuple(global_rows))


@dataclass(eq=False)
class RowParallelLinear(FusedLinear):
    """A :class:`FusedLinear` holding input columns ``global_columns`` of the weight: each rank's
    GEMM gives a partial sum, and one all-reduce completes it. The bias, whole on every rank, is
    added once after the all-reduce on every rank (the same values everywhere), so the partial
    sums are bias-free. With ``reduce`` False the caller reduces (a shared expert inside a MoE
    layer, one all-reduce for both); then rank 0 alone adds the bias, so the caller's sum holds it once.

    Hooks run on the rank's shard before the all-reduce: ``before`` sees this rank's input
    columns and ``after`` the partial sum, so only hooks linear in the output whose weights are
    sharded to match (low-rank factors: :func:`shard_low_rank_row`) stay exact; one all-reduce covers base and delta.
    At size 1 it is exactly :class:`FusedLinear`."""

    tp: TensorParallel = SINGLE
    global_columns: slice = field(default_factory=lambda: slice(None))
    reduce: bool = True

    @classmethod
    def shard(
        cls,
        name: str,
        weight: Source,
        bias: Source | None,
        tp: TensorParallel,
        *,
        dtype: torch.dtype,
        device: torch.device,
        reduce: bool = True,
    ) -> RowParallelLinear:
        """From the HF module ``name``'s full ``weight [out, in]`` and ``bias [out]`` (tensors or
        lazy slices), keeping this rank's equal share of the input columns."""
        in_features = weight.shape[1] if isinstance(weight, torch.Tensor) else weight.get_shape()[1]
        columns = tp.even_split(in_features, f"the input features of {name}")
        to = {"dtype": dtype, "device": device}
        out_features = _rows_of(weight)
        return cls(
            take_columns(weight, columns).to(**to),
            None if bias is None else bias[:].to(**to),
            {name: slice(0, out_features)},
            tp=tp,
            global_columns=columns,
            reduce=reduce,
        )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.tp.world_size == 1:
            return FusedLinear.__call__(self, x)
        partial = apply_projection_hooks(self.hooks, x, self._partial)
        if not self.reduce:
            return partial.add_(self.bias) if self.bias is not None and self.tp.rank == 0 else partial
        total = self.tp.all_reduce(partial)
        return total if self.bias is None else total.add_(self.bias)

    def _partial(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, None)


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


def shard_low_rank_column(
    down: torch.Tensor, up: torch.Tensor, layer: ColumnParallelLinear
) -> tuple[torch.Tensor, torch.Tensor]:
    """The rule for a low-rank delta ``(x down^T) up^T`` on a column-parallel base: ``down
    [slots, R, in]`` replicated, ``up [slots, out, R]`` (the full fused output's rows) cut to the
    rows the layer holds, so the delta lands on this rank's output columns."""
    return down, torch.cat([up[:, rows] for rows in layer.global_rows], dim=1)


def shard_low_rank_row(
    down: torch.Tensor, up: torch.Tensor, layer: RowParallelLinear
) -> tuple[torch.Tensor, torch.Tensor]:
    """The rule for a low-rank delta on a row-parallel base: ``down [slots, R, in]`` cut to the
    layer's input columns, ``up`` replicated: each rank's ``(x_r down_r^T) up^T`` is a partial sum
    of the delta, added to the partial output before the layer's one all-reduce."""
    return down[:, :, layer.global_columns], up


def expert_shard(
    gate: Source, up: Source, down: Source, tp: TensorParallel, *, name: str = "experts"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One expert's ``(gate [I, H], up [I, H], down [H, I])`` cut for tensor-parallel experts:
    gate and up by output rows, down by input columns (tensors or lazy slices), to feed
    :meth:`ExpertWeights.from_experts` one expert at a time."""
    rows = tp.even_split(_rows_of(gate), f"the intermediate size of {name}")
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

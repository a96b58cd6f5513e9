"""Fused projections and rotary position embedding, the layers every decoder model here is made of.

Everything works on flattened tokens (``[T, ...]``, all requests of a step in one batch), so
each projection is one GEMM per step and RoPE is indexed by each token's own position. Public
(:mod:`kernel_core.modeling`, plugin API 1.3): the engine serves adapters on :class:`FusedLinear`
(a :class:`~kernel_core.contracts.adapter_targets.ProjectionTarget`, plugin API 1.5).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import PreTrainedConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from kernel_core.contracts.adapter_targets import ProjectionHook, apply_projection_hooks
from kernel_core.errors import UnsupportedModelError
from kernel_core.modeling.gemm import linear
from kernel_core.modeling.group import SINGLE, Source, TensorParallel, rows_of, take_columns, take_rows

#: RoPE types whose frequencies do not depend on the sequence length within
#: ``max_position_embeddings`` (``dynamic`` only rescales beyond it), so one cos/sin table,
#: indexed by position, serves every request of a batch whatever its length.
SUPPORTED_ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "llama3")
_INITIAL_ROPE_POSITIONS = 4096


@dataclass(eq=False)
class FusedLinear:
    """One GEMM computing several Hugging Face projections that read the same input.

    ``weight`` stacks the projections' weights row-wise (``[sum(out), in]``); ``parts`` maps
    each HF module name (``model.layers.0.self_attn.q_proj``) to its rows of ``weight`` and
    ``bias``, which are also its columns of the output. When serving adapters, ``hooks`` holds
    what each served kind does around the GEMM (a
    :class:`~kernel_core.contracts.adapter_targets.ProjectionTarget`).
    """

    weight: torch.Tensor
    bias: torch.Tensor | None
    parts: dict[str, slice]
    hooks: list[ProjectionHook] = field(default_factory=list)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return apply_projection_hooks(self.hooks, x, self._gemm)

    def _gemm(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)

    @property
    def full_parts(self) -> dict[str, slice]:
        """Each HF module's rows of the *unsharded* fused weight (an adapter file's geometry):
        ``parts`` here; a column-parallel shard's differ (plugin API 1.7)."""
        return self.parts

    @property
    def full_in_features(self) -> int:
        """The unsharded weight's input features: a row-parallel shard holds fewer."""
        return self.weight.shape[1]

    def shard_inputs(self, tensor: torch.Tensor, dim: int = -1) -> torch.Tensor:
        """``tensor``, indexed along ``dim`` by the unsharded layer's input features, cut to the
        ones this layer holds (unchanged when unsharded): an adapter's per-input data."""
        return tensor

    def shard_outputs(self, tensor: torch.Tensor, dim: int = -1) -> torch.Tensor:
        """``tensor``, indexed along ``dim`` by the unsharded layer's output features (its fused
        rows), cut to the ones this layer computes (unchanged when unsharded)."""
        return tensor


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over ``weight``'s shape, rounded as transformers' ``LlamaRMSNorm`` (and Mistral's,
    Qwen's, OLMoE's) rounds: normalized in float32, rounded to ``x``'s dtype, then multiplied by
    ``weight`` in that dtype. ``F.rms_norm`` with the weight multiplies before rounding, which in
    bfloat16 differs from HF in about a quarter of the elements; in float32 both are the same."""
    return F.rms_norm(x, weight.shape, None, eps).mul_(weight)


class RotaryEmbedding:
    """Rotary position embedding from a cos/sin table indexed by each token's position.

    Frequencies and attention scaling come from transformers' own ``ROPE_INIT_FUNCTIONS`` for
    the config's ``rope_parameters``, so every scaling variant matches the reference. The table
    grows on demand up to ``max_positions``.
    """

    def __init__(
        self, config: PreTrainedConfig, head_size: int, max_positions: int, dtype: torch.dtype, device: torch.device
    ) -> None:
        inv_freq, self.attention_scaling = _rope_frequencies(config, head_size)
        self.inv_freq = inv_freq.to(device)
        self.max_positions = max_positions
        self.dtype = dtype
        self.cos_sin = self._table(min(max_positions, _INITIAL_ROPE_POSITIONS))

    def _table(self, num_positions: int) -> torch.Tensor:
        """``[P, head_size]``: cos of each frequency then sin, computed as transformers does (fp32)."""
        positions = torch.arange(num_positions, device=self.inv_freq.device, dtype=torch.float32)
        freqs = torch.outer(positions, self.inv_freq)
        return torch.cat((freqs.cos(), freqs.sin()), dim=-1).mul_(self.attention_scaling).to(self.dtype)

    def ensure_positions(self, num_positions: int) -> None:
        """Grow the table (doubling, capped at ``max_positions``) to cover ``num_positions``."""
        if num_positions > len(self.cos_sin):
            self.cos_sin = self._table(min(self.max_positions, max(num_positions, 2 * len(self.cos_sin))))

    def cos_sin_at(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin ``[T, 1, head_size / 2]`` for the tokens at ``positions``, once per step."""
        cos, sin = self.cos_sin[positions].unsqueeze(1).chunk(2, dim=-1)
        return cos, sin

    @staticmethod
    def rotate_(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
        """Rotate ``x`` ``[T, heads, head_size]`` in place (the half-split layout of HF Llama)."""
        x1, x2 = x.chunk(2, dim=-1)
        x2_sin = x2 * sin
        x1_sin = x1 * sin
        x1.mul_(cos).sub_(x2_sin)
        x2.mul_(cos).add_(x1_sin)


def _rope_frequencies(config: PreTrainedConfig, head_size: int) -> tuple[torch.Tensor, float]:
    """Inverse frequencies ``[head_size / 2]`` and the cos/sin scaling for the config's RoPE."""
    parameters = config.rope_parameters or {}
    rope_type = parameters.get("rope_type", "default")
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise UnsupportedModelError(
            f"rope_type {rope_type!r} in config.json is not supported (supported: {', '.join(SUPPORTED_ROPE_TYPES)})"
        )
    if rope_type == "default":  # transformers keeps this one on each model class, not in the table
        exponents = torch.arange(0, head_size, 2, dtype=torch.int64).float() / head_size
        inv_freq, scaling = 1.0 / (parameters["rope_theta"] ** exponents), 1.0
    else:
        inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_type](config, torch.device("cpu"))
    if inv_freq.numel() * 2 != head_size:
        raise UnsupportedModelError(
            f"RoPE gives {inv_freq.numel() * 2} rotary dimensions for head_dim {head_size}: "
            "partial rotary embedding is not supported"
        )
    return inv_freq.float(), float(scaling)


@dataclass(eq=False)
class ColumnParallelLinear(FusedLinear):
    """A :class:`FusedLinear` holding some output rows of each part: it computes this rank's
    columns of the full output, with no collective. ``parts`` maps each HF module to its columns
    of this shard's output, ``global_rows`` lists the rows of the full fused weight held, in order
    (what an adapter's up-projection factor is cut by: :func:`shard_low_rank_column`). Hooks run on the shard."""

    tp: TensorParallel = SINGLE
    global_rows: tuple[slice, ...] = ()
    #: Each HF module's rows of the unsharded fused weight.
    unsharded_parts: dict[str, slice] = field(default_factory=dict)

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
        weights, biases, local, global_rows, unsharded = [], [], {}, [], {}
        start = offset = 0
        for name, (weight, bias) in parts.items():
            kept = rows[name]
            weights.append(take_rows(weight, kept))
            if bias is not None:
                biases.append(take_rows(bias, kept))
            local[name] = slice(start, start + kept.stop - kept.start)
            global_rows.append(slice(offset + kept.start, offset + kept.stop))
            unsharded[name] = slice(offset, offset + rows_of(weight))
            start, offset = local[name].stop, unsharded[name].stop
        if biases and len(biases) != len(weights):
            raise ValueError("every part of a fused projection has a bias, or none has")
        to = {"dtype": dtype, "device": device}
        bias = torch.cat(biases).to(**to) if biases else None
        return cls(
            torch.cat(weights).to(**to), bias, local, tp=tp, global_rows=tuple(global_rows), unsharded_parts=unsharded
        )

    @property
    def full_parts(self) -> dict[str, slice]:
        return self.unsharded_parts or self.parts

    def shard_outputs(self, tensor: torch.Tensor, dim: int = -1) -> torch.Tensor:
        if not self.global_rows:
            return tensor
        return torch.cat([tensor.narrow(dim, rows.start, rows.stop - rows.start) for rows in self.global_rows], dim=dim)


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

    @property
    def full_in_features(self) -> int:
        return self.weight.shape[1] * self.tp.world_size  # an even split of the input features

    def shard_inputs(self, tensor: torch.Tensor, dim: int = -1) -> torch.Tensor:
        if self.tp.world_size == 1:
            return tensor
        columns = self.global_columns
        return tensor.narrow(dim, columns.start, columns.stop - columns.start)

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
        out_features = rows_of(weight)
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


def shard_low_rank_column(
    down: torch.Tensor, up: torch.Tensor, layer: ColumnParallelLinear
) -> tuple[torch.Tensor, torch.Tensor]:
    """The rule for a low-rank delta ``(x down^T) up^T`` on a column-parallel base: ``down
    [slots, R, in]`` replicated, ``up [slots, out, R]`` (the full fused output's rows) cut to the
    rows the layer holds, so the delta lands on this rank's output columns."""
    return down, layer.shard_outputs(up, dim=-2)


def shard_low_rank_row(
    down: torch.Tensor, up: torch.Tensor, layer: RowParallelLinear
) -> tuple[torch.Tensor, torch.Tensor]:
    """The rule for a low-rank delta on a row-parallel base: ``down [slots, R, in]`` cut to the
    layer's input columns, ``up`` replicated: each rank's ``(x_r down_r^T) up^T`` is a partial sum
    of the delta, added to the partial output before the layer's one all-reduce."""
    return layer.shard_inputs(down, dim=-1), up

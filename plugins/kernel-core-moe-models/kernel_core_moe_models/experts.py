"""Read one layer's routed experts from a checkpoint, in either layout found in the wild.

Hugging Face Hub checkpoints, and transformers 5's ``save_pretrained``, store one tensor per expert
and projection (``{prefix}.experts.{e}.{gate}.weight``, each family with its own projection names:
Mixtral's ``w1``/``w3``/``w2``, Qwen's ``gate_proj``/``up_proj``/``down_proj``); transformers 5 runs
them fused (``{prefix}.experts.gate_up_proj`` ``[E, 2I, H]`` and ``.down_proj`` ``[E, H, I]``), and a
checkpoint saved without its conversion stores that. Both become one :class:`ExpertWeights`, read
one expert at a time so that int8 experts never hold a full-precision copy of the layer.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from kernel_core.modeling import ExpertWeights, WeightLoader, expert_shard

FUSED_GATE_UP = "experts.gate_up_proj"
FUSED_DOWN = "experts.down_proj"


@dataclass(frozen=True)
class ExpertNames:
    """A family's names of an expert's gate, up and down projections in per-expert checkpoints."""

    gate: str
    up: str
    down: str


@dataclass(frozen=True)
class ExpertShape:
    """How many experts a layer has and their sizes, from config.json."""

    num_experts: int
    hidden_size: int
    intermediate_size: int


def load_experts(
    loader: WeightLoader,
    prefix: str,
    names: ExpertNames,
    shape: ExpertShape,
    quantization: str | None,
    *,
    module: str | None = None,
) -> ExpertWeights:
    """The experts under ``prefix`` (e.g. ``model.layers.0.block_sparse_moe``): fused when the
    checkpoint has ``{prefix}.experts.gate_up_proj``, else one tensor per expert and projection
    (a missing one is named). Their slices are recorded in ``loader.slices`` under the names read
    and under transformers' fused names below ``module`` (default ``prefix``), in their stored form
    (int8 when quantized). Under tensor parallelism (``loader.tp``) each rank reads its channels of
    every expert, and int8 experts are quantized from them (the down projection's per-output-channel
    scales over the rank's input columns), so they are not the size-1 int8 experts cut in pieces."""
    checkpoint = loader.checkpoint
    experts, hidden, intermediate = shape.num_experts, shape.hidden_size, shape.intermediate_size
    if f"{prefix}.{FUSED_GATE_UP}" in checkpoint.locations:
        gate_up, down = _fused(loader, prefix, shape)
        weights = ExpertWeights.from_stacked(
            gate_up, down, quantization=quantization, dtype=loader.dtype, device=loader.device, name=prefix
        )
    else:
        weights = ExpertWeights.from_experts(
            _per_expert(loader, prefix, names, shape), num_experts=experts, quantization=quantization,
            dtype=loader.dtype, device=loader.device, name=prefix,
        )
        intermediate = weights.intermediate_size  # this rank's share under tensor parallelism
        for e in range(experts):
            base = f"{prefix}.experts.{e}"
            loader.slices[f"{base}.{names.gate}.weight"] = (weights.gate_up[e], slice(0, intermediate))
            loader.slices[f"{base}.{names.up}.weight"] = (weights.gate_up[e], slice(intermediate, 2 * intermediate))
            loader.slices[f"{base}.{names.down}.weight"] = (weights.down[e], slice(0, hidden))
    module = module or prefix
    loader.slices[f"{module}.{FUSED_GATE_UP}"] = (weights.gate_up, slice(0, experts))
    loader.slices[f"{module}.{FUSED_DOWN}"] = (weights.down, slice(0, experts))
    return weights


def _fused(loader: WeightLoader, prefix: str, shape: ExpertShape) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers 5's stacked ``gate_up_proj [E, 2I, H]`` and ``down_proj [E, H, I]``; under
    tensor parallelism only this rank's intermediate channels of each expert are read (gate rows,
    up rows, down columns: :func:`~kernel_core.modeling.shard_experts`' cut)."""
    experts, hidden, intermediate = shape.num_experts, shape.hidden_size, shape.intermediate_size
    gate_up_shape, down_shape = (experts, 2 * intermediate, hidden), (experts, hidden, intermediate)
    if loader.tp.world_size == 1:
        read = loader.checkpoint.read
        return (
            read([f"{prefix}.{FUSED_GATE_UP}"], [gate_up_shape], loader.dtype, loader.device),
            read([f"{prefix}.{FUSED_DOWN}"], [down_shape], loader.dtype, loader.device),
        )
    rows = loader.tp.even_split(intermediate, f"the intermediate size of {prefix}.experts")
    gate_up = loader.checkpoint.lazy(f"{prefix}.{FUSED_GATE_UP}", gate_up_shape)
    down = loader.checkpoint.lazy(f"{prefix}.{FUSED_DOWN}", down_shape)
    up_rows = slice(intermediate + rows.start, intermediate + rows.stop)
    to = {"dtype": loader.dtype, "device": loader.device}
    return (
        torch.cat((gate_up[:, rows.start : rows.stop], gate_up[:, up_rows.start : up_rows.stop]), dim=1).to(**to),
        down[:, :, rows.start : rows.stop].to(**to),
    )


def _per_expert(
    loader: WeightLoader, prefix: str, names: ExpertNames, shape: ExpertShape
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Each expert's (gate, up, down), read only when the previous one has been stored; under
    tensor parallelism only this rank's intermediate channels (:func:`~kernel_core.modeling.expert_shard`)."""
    hidden, intermediate = shape.hidden_size, shape.intermediate_size
    shapes = {names.gate: (intermediate, hidden), names.up: (intermediate, hidden), names.down: (hidden, intermediate)}
    for e in range(shape.num_experts):
        if loader.tp.world_size > 1:
            lazy = [loader.checkpoint.lazy(f"{prefix}.experts.{e}.{name}.weight", dims) for name, dims in shapes.items()]
            yield expert_shard(*lazy, loader.tp, name=f"{prefix}.experts")
            continue
        yield tuple(  # type: ignore[misc]
            loader.checkpoint.read([f"{prefix}.experts.{e}.{name}.weight"], [dims], loader.dtype, loader.device)
            for name, dims in shapes.items()
        )

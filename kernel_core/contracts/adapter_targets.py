"""Where a served model lets adapters act, whatever their method (plugin API 1.5).

A model architecture offers three kinds of places, each a list of hooks that the model runs and
that an adapter kind's serving (:mod:`kernel_core.contracts.serving`) appends to when the engine
builds it:

- every adaptable projection (:class:`ProjectionTarget`, from ``ModelArchitecture.adapter_targets``):
  :class:`ProjectionHook` may change the projection's input before its GEMM and its output after
  it (a low-rank update adds ``x A^T B^T``; a scaling vector scales the input or the output);
- the token embeddings (``ModelArchitecture.embedding_hooks``): :class:`EmbeddingHook` may replace
  rows of the ``[T, hidden]`` embeddings before the first layer (prompt tuning's virtual tokens);
- each attention layer's new keys and values (``ModelArchitecture.kv_hooks``): :class:`KVHook`
  may replace rows before they are written to the paged cache (prefix tuning's per-layer keys and
  values; keys after RoPE, as transformers' cache holds them).

A hook learns which rows are its adapters' from its serving (``AdapterServing.begin_step``
receives the step's :class:`~kernel_core.contracts.serving.SlotBatch`, with each token's slot and
position); rows of other kinds are left untouched, so hooks of several kinds never interfere.
The model knows no method: it runs whatever hooks its lists hold, in order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch

__all__ = [
    "EmbeddingHook", "KVHook", "ProjectionHook", "ProjectionTarget", "apply_projection_hooks", "shard_inputs",
    "shard_low_rank", "shard_outputs", "unsharded_geometry",
]


class ProjectionHook:
    """What one adapter kind does around one projection; both steps default to nothing."""

    def before(self, x: torch.Tensor) -> torch.Tensor:
        """The input the GEMM reads, from ``x`` ``[T, in]``: ``x`` itself, or a new tensor (never
        change ``x`` in place: the caller may read it again)."""
        return x

    def after(self, output: torch.Tensor, x: torch.Tensor) -> None:
        """Change ``output`` ``[T, out]`` in place; ``x`` is the input the GEMM read."""


class EmbeddingHook(Protocol):
    """Replaces rows of the step's token embeddings, in place, before the first layer."""

    def __call__(self, hidden: torch.Tensor) -> None: ...


class KVHook(Protocol):
    """Replaces rows of one attention layer's new ``key`` and ``value`` ``[T, kv_heads, head_size]``,
    in place, before the backend writes them to the paged cache and attends."""

    def __call__(self, key: torch.Tensor, value: torch.Tensor) -> None: ...


class ProjectionTarget(Protocol):
    """A linear layer of a served model that adapters may act on: one GEMM computing one or more
    Hugging Face modules (``parts``: module name -> its output columns), e.g. fused q/k/v. The
    layer runs ``hooks`` around its GEMM (:func:`apply_projection_hooks`).

    Under tensor parallelism (plugin API 1.7) a target holds a shard: ``kernel_core.modeling``'s
    layers then also say the unsharded geometry (``full_parts``, ``full_in_features``) and cut
    per-feature data to their shard (``shard_inputs``, ``shard_outputs``); read them through
    :func:`unsharded_geometry`, :func:`shard_inputs`, :func:`shard_outputs` and
    :func:`shard_low_rank`, which fall back to the unsharded answers for targets without them."""

    parts: dict[str, slice]
    weight: torch.Tensor
    hooks: list[ProjectionHook]


def apply_projection_hooks(
    hooks: list[ProjectionHook], x: torch.Tensor, gemm: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """``gemm(x)`` with every hook's :meth:`~ProjectionHook.before` and
    :meth:`~ProjectionHook.after` around it: what a projection that is a target calls."""
    if not hooks:
        return gemm(x)
    for hook in hooks:
        x = hook.before(x)
    output = gemm(x)
    for hook in hooks:
        hook.after(output, x)
    return output


def unsharded_geometry(target: ProjectionTarget) -> tuple[dict[str, slice], int]:
    """(each module's rows, input features) of ``target``'s *unsharded* weight: the shapes an
    adapter file has, whichever shard of the layer this process holds."""
    parts = getattr(target, "full_parts", target.parts)
    return parts, getattr(target, "full_in_features", target.weight.shape[1])


def shard_inputs(target: ProjectionTarget, tensor: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``tensor``, indexed along ``dim`` by the unsharded ``target``'s input features, cut to the
    ones the target holds (a row-parallel shard holds some; otherwise unchanged)."""
    cut = getattr(target, "shard_inputs", None)
    return tensor if cut is None else cut(tensor, dim)


def shard_outputs(target: ProjectionTarget, tensor: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``tensor``, indexed along ``dim`` by the unsharded ``target``'s output features, cut to the
    ones the target computes (a column-parallel shard computes some; otherwise unchanged)."""
    cut = getattr(target, "shard_outputs", None)
    return tensor if cut is None else cut(tensor, dim)


def shard_low_rank(
    target: ProjectionTarget, down: torch.Tensor, up: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """A low-rank delta's factors ``down [slots, R, in]`` and ``up [slots, out, R]``, laid out for
    the unsharded ``target``, cut to the shard it holds (sharded multi-adapter serving's rule:
    ``down`` by input features, ``up`` by output features)."""
    return shard_inputs(target, down, -1), shard_outputs(target, up, -2)

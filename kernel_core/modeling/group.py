"""A rank's place in a tensor-parallel group, its collectives, and the slicing every sharding rule
uses: the bottom of :mod:`kernel_core.modeling.parallel`, which the layers, the weight loader and
the attention block build on (public through :mod:`kernel_core.modeling`, plugin API 1.7).

Collectives are ``torch.distributed``'s only, on the backend the platform names
(``Platform.distributed_backend()``: gloo on the CPU). At size 1 (:data:`SINGLE`) nothing here
touches ``torch.distributed``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from kernel_core.errors import UnsupportedModelError

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


def rows_of(source: Source) -> int:
    """The first dimension of a tensor or a safetensors slice."""
    return source.shape[0] if isinstance(source, torch.Tensor) else source.get_shape()[0]

"""The OFT layers: each adapter rotates, by a block-diagonal orthogonal ``R``, the input of an
``nn.Linear`` (``y = W (x R) + b``, merged as ``W <- W R^T``) or the output of an ``nn.Embedding``
(``e R``, merged as ``E <- E R``); unmerging multiplies by ``R^-1``."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from kernel_core.contracts.tuner import BaseTunerConfig, TunerLayer
from kernel_core_oft.config import OFTConfig
from kernel_core_oft.rotation import BlockRotation


def block_layout(in_features: int, r: int, block_size: int) -> tuple[int, int]:
    """``(blocks, block_size)`` for a layer, from the one the config gives; a value that does not
    divide ``in_features`` moves to the nearest divisor (the lower one on a tie), with a warning,
    as PEFT does."""
    given = r or block_size
    fitted = given if given <= in_features and in_features % given == 0 else _nearest_divisor(in_features, given)
    if fitted != given:
        field = "r" if r else "oft_block_size"
        warnings.warn(f"OFT: {field}={given} does not divide in_features={in_features}; using {fitted}", UserWarning, stacklevel=3)
    return (fitted, in_features // fitted) if r else (in_features // fitted, fitted)


def _nearest_divisor(n: int, value: int) -> int:
    if value >= n:
        return n
    above = next(d for d in range(value, n + 1) if n % d == 0)
    below = next(d for d in range(value, 0, -1) if n % d == 0)
    return below if value - below <= above - value else above


def _adapter_dtype(base: torch.dtype) -> torch.dtype:
    """Float32 over a half-precision base (as PEFT casts adapters, so training is stable), else the base's."""
    return torch.float32 if base in (torch.float16, torch.bfloat16) or not base.is_floating_point else base


class OFTLayer(TunerLayer):
    """The adapters of one module: a :class:`BlockRotation` per adapter in the container PEFT
    names for the module type (:attr:`container`), over the rotated dimension ``in_features``."""

    container: ClassVar[str]

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: OFTConfig, in_features: int) -> None:
        super().__init__(base_layer.requires_grad_(False))
        self.in_features = in_features
        setattr(self, self.container, nn.ModuleDict())
        self.update_layer(adapter_name, config)
        self.set_adapter([adapter_name])

    @property
    def rotations(self) -> nn.ModuleDict:
        return getattr(self, self.container)

    @property
    def adapter_names(self) -> list[str]:
        return list(self.rotations)

    def update_layer(self, adapter_name: str, config: BaseTunerConfig) -> None:
        if not isinstance(config, OFTConfig):
            raise TypeError(f"OFT needs an OFTConfig, got {type(config).__name__}")
        if adapter_name in self.merged_adapters:
            raise ValueError(f"adapter {adapter_name!r} is merged; unmerge before re-initialising it")
        blocks, block_size = block_layout(self.in_features, config.r, config.oft_block_size)
        rotation = BlockRotation(
            blocks, block_size, shared=config.block_share, coft=config.coft, eps=config.eps,
            neumann_terms=config.num_cayley_neumann_terms if config.use_cayley_neumann else None,
        )
        weight = self.base_layer.weight
        rotation.to(device=weight.device, dtype=_adapter_dtype(weight.dtype))
        if not config.init_weights:
            nn.init.normal_(rotation.weight, mean=0.0, std=0.1)  # as PEFT: a random rotation, for tests
        self.rotations[adapter_name] = rotation
        self.set_adapter(self.active_adapters)  # a new adapter trains only once it is set active

    def delete_adapter(self, adapter_name: str) -> None:
        if adapter_name in self.merged_adapters:
            raise ValueError(f"adapter {adapter_name!r} is merged; unmerge before deleting it")
        if adapter_name in self.rotations:
            del self.rotations[adapter_name]
        self.active_adapters = [name for name in self.active_adapters if name != adapter_name]

    def adapter_output(self, adapter_name: str, x: torch.Tensor, result: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return result

    def merge(self, adapter_names: Sequence[str] | None = None) -> None:
        """Multiply the base weight by each adapter's ``R``, in :meth:`_merge_order`."""
        for name in self._merge_order(self.active_adapters if adapter_names is None else adapter_names):
            if name in self.rotations and name not in self.merged_adapters:
                self._fold(self.rotations[name].matrix())
                self.merged_adapters.append(name)

    def unmerge(self) -> None:
        """Multiply by ``R^-1`` (taken in float32, as PEFT), last merged first. With the Neumann
        series ``R`` is only nearly orthogonal, so after large steps it can be ill-conditioned
        and the base weights come back only approximately, as in PEFT."""
        while self.merged_adapters:
            matrix = self.rotations[self.merged_adapters.pop()].matrix()
            self._fold(torch.linalg.inv(matrix.float()).to(matrix.dtype))

    def _merge_order(self, names: Sequence[str]) -> list[str]:
        """The order adapters merge in so that merged they compute as they did active."""
        return list(names)

    def _fold(self, matrix: torch.Tensor) -> None:
        """Multiply the base weight by ``matrix`` on the rotated side."""
        raise NotImplementedError


class Linear(OFTLayer):
    """OFT around an ``nn.Linear``, in ``oft_R``: the input the base layer sees is rotated."""

    container = "oft_R"

    def __init__(self, base_layer: nn.Linear, adapter_name: str, config: OFTConfig) -> None:
        super().__init__(base_layer, adapter_name, config, base_layer.in_features)

    def adapter_input(self, adapter_name: str, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The input rotated by this adapter's ``R``."""
        return self.rotations[adapter_name].rotate(x)

    def _merge_order(self, names: Sequence[str]) -> list[str]:
        """Last one first. Rotations do not commute, and active adapters rotate the input in
        order (``x R_a R_b``), so merged as ``W R_b^T R_a^T`` they compute as they did active.
        PEFT 0.21 merges them first one first, which its own forward does not match; for one
        adapter the two agree."""
        return list(reversed(list(names)))

    def _fold(self, matrix: torch.Tensor) -> None:
        """``W <- (R W^T)^T``; the bias is untouched (the rotation is on the input)."""
        weight = self.base_layer.weight
        with torch.no_grad():
            weight.data = torch.mm(matrix, weight.data.t().to(matrix.dtype)).t().to(weight.dtype).contiguous()


class Embedding(OFTLayer):
    """OFT around an ``nn.Embedding``, in ``oft_embedding_R``: the looked-up vectors are rotated
    (several adapters in order, and merged in the same order: ``E R_a R_b``)."""

    container = "oft_embedding_R"

    def __init__(self, base_layer: nn.Embedding, adapter_name: str, config: OFTConfig) -> None:
        super().__init__(base_layer, adapter_name, config, base_layer.embedding_dim)

    def adapter_output(self, adapter_name: str, x: torch.Tensor, result: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The embeddings rotated by this adapter's ``R``."""
        return self.rotations[adapter_name].rotate(result)

    def _fold(self, matrix: torch.Tensor) -> None:
        """``E <- E R``."""
        weight = self.base_layer.weight
        with torch.no_grad():
            weight.data = torch.mm(weight.data.to(matrix.dtype), matrix).to(weight.dtype)

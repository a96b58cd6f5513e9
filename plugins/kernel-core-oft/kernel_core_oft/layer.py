"""The OFT layer: each adapter rotates the input of an ``nn.Linear`` by a block-diagonal
orthogonal ``R`` (``y = W (x R) + b``), and merges as ``W <- W R^T`` (unmerged with ``R^-1``)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

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


class OFTLayer(TunerLayer):
    """OFT around an ``nn.Linear``: one :class:`BlockRotation` per adapter in ``oft_R`` (PEFT's
    state-dict name), applied to the input the base layer sees."""

    def __init__(self, base_layer: nn.Linear, adapter_name: str, config: OFTConfig) -> None:
        super().__init__(base_layer.requires_grad_(False))
        self.in_features = base_layer.in_features
        self.oft_R = nn.ModuleDict()
        self.update_layer(adapter_name, config)
        self.set_adapter([adapter_name])

    @property
    def adapter_names(self) -> list[str]:
        return list(self.oft_R)

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
        rotation.to(device=weight.device, dtype=weight.dtype if weight.is_floating_point() else None)
        if not config.init_weights:
            nn.init.normal_(rotation.weight, mean=0.0, std=0.1)  # as PEFT: a random rotation, for tests
        self.oft_R[adapter_name] = rotation
        self.set_adapter(self.active_adapters)  # a new adapter trains only once it is set active

    def delete_adapter(self, adapter_name: str) -> None:
        if adapter_name in self.merged_adapters:
            raise ValueError(f"adapter {adapter_name!r} is merged; unmerge before deleting it")
        if adapter_name in self.oft_R:
            del self.oft_R[adapter_name]
        self.active_adapters = [name for name in self.active_adapters if name != adapter_name]

    def adapter_input(self, adapter_name: str, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The input rotated by this adapter's ``R``."""
        return self.oft_R[adapter_name].rotate(x)

    def adapter_output(self, adapter_name: str, x: torch.Tensor, result: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """OFT acts on the input only."""
        return result

    def merge(self, adapter_names: Sequence[str] | None = None) -> None:
        """``W <- (R W^T)^T`` per adapter; the bias is untouched (the rotation is on the input).

        Rotations do not commute, and active adapters rotate the input in order (``x R_a R_b``),
        so several adapters merge last one first (``W R_b^T R_a^T``): merged, they compute as
        they did active. PEFT 0.21 merges them first one first, which its own forward does not
        match; for one adapter the two agree."""
        names = self.active_adapters if adapter_names is None else adapter_names
        for name in reversed(list(names)):
            if name in self.oft_R and name not in self.merged_adapters:
                self._multiply(name, inverse=False)
                self.merged_adapters.append(name)

    def unmerge(self) -> None:
        """Multiply by ``R^-1`` (taken in float32), last merged first."""
        while self.merged_adapters:
            self._multiply(self.merged_adapters.pop(), inverse=True)

    def _multiply(self, adapter_name: str, *, inverse: bool) -> None:
        rotation = self.oft_R[adapter_name]
        weight = self.base_layer.weight
        with torch.no_grad():
            matrix = rotation.matrix()
            if inverse:
                matrix = torch.linalg.inv(matrix.float()).to(matrix.dtype)
            weight.data = torch.mm(matrix, weight.data.t().to(matrix.dtype)).t().to(weight.dtype).contiguous()


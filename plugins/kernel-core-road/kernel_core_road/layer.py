"""The RoAd layer: per adapter, angles ``road_theta`` and scales ``road_alpha`` (PEFT's names)
turn each pair of outputs of an ``nn.Linear`` (within each group of ``group_size`` outputs,
element ``i`` with element ``i + group_size / 2``) by a scaled 2D rotation:
``y_i = a c_i h_i - b s_j h_j``, ``y_j = a' s'_i h_i + b' c'_j h_j`` for the output ``h``.

Written as a matrix ``R`` (``(out, out)``, two non-zeros per row) the adapted layer is
``R (W x + b)``, so merging sets ``W <- R W`` and ``b <- R b`` and unmerging multiplies by
``R^-1`` (taken in float32, as PEFT).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from kernel_core.contracts.tuner import BaseTunerConfig, TunerLayer
from kernel_core_road.config import RoadConfig

#: Learned values per output, by variant: one angle and scale per pair, per element, or two per element.
PER_OUTPUT = {"road_1": 0.5, "road_2": 1, "road_4": 2}


def coefficients(variant: str, group_size: int, theta: torch.Tensor, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per output element, the factor of the element itself and of its rotated partner
    (``alpha cos theta``, ``alpha sin theta``), each ``(out,)``, as PEFT computes them."""
    if variant == "road_1":  # the pair's two elements share the half-group's angle and scale
        theta = theta.reshape(-1, group_size // 2).repeat_interleave(2, dim=0).flatten()
        alpha = alpha.reshape(-1, group_size // 2).repeat_interleave(2, dim=0).flatten()
    if variant in ("road_1", "road_2"):
        return alpha * theta.cos(), alpha * theta.sin()
    theta, alpha = theta.reshape(-1, 2, group_size), alpha.reshape(-1, 2, group_size)
    return alpha[:, 0, :].flatten() * theta[:, 0, :].cos().flatten(), alpha[:, 1, :].flatten() * theta[:, 1, :].sin().flatten()


def rotate(variant: str, group_size: int, theta: torch.Tensor, alpha: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``h`` (outputs on the last dimension) with each pair turned: ``h * own + partner * other``,
    the partner of a first-half element negated."""
    own, other = coefficients(variant, group_size, theta, alpha)
    halves = h.reshape(-1, 2, group_size // 2)
    partner = torch.stack((-halves[:, 1, :], halves[:, 0, :]), dim=1).reshape(h.shape)
    return h * own + partner * other


def rotation_matrix(variant: str, group_size: int, theta: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """``R`` with ``R h`` = :func:`rotate` of ``h``: ``own`` on the diagonal, ``-other`` (first
    half) and ``other`` (second half) at the partner's column."""
    own, other = coefficients(variant, group_size, theta, alpha)
    size = own.shape[0]
    matrix = torch.diag(own)
    index = torch.arange(size, device=own.device).reshape(-1, 2, group_size // 2)
    first, second = index[:, 0, :].flatten(), index[:, 1, :].flatten()
    matrix[first, second] = -other[first]
    matrix[second, first] = other[second]
    return matrix


class RoadLayer(TunerLayer):
    """RoAd around an ``nn.Linear``; each adapter keeps its own variant and group size."""

    def __init__(self, base_layer: nn.Linear, adapter_name: str, config: RoadConfig) -> None:
        super().__init__(base_layer.requires_grad_(False))
        self.in_features, self.out_features = base_layer.in_features, base_layer.out_features
        self.road_theta = nn.ParameterDict()
        self.road_alpha = nn.ParameterDict()
        self.configs: dict[str, RoadConfig] = {}
        self.update_layer(adapter_name, config)
        self.set_adapter([adapter_name])

    @property
    def adapter_names(self) -> list[str]:
        return list(self.road_theta)

    def update_layer(self, adapter_name: str, config: BaseTunerConfig) -> None:
        if not isinstance(config, RoadConfig):
            raise TypeError(f"RoAd needs a RoadConfig, got {type(config).__name__}")
        if adapter_name in self.merged_adapters:
            raise ValueError(f"adapter {adapter_name!r} is merged; unmerge before re-initialising it")
        if self.out_features % config.group_size:
            where = config.module_name or "a Linear"
            raise ValueError(f"RoAd on {where} (out_features={self.out_features}): group_size={config.group_size} does not divide out_features")
        weight = self.base_layer.weight
        half = weight.dtype in (torch.float16, torch.bfloat16) or not weight.dtype.is_floating_point
        options = {"device": weight.device, "dtype": torch.float32 if half else weight.dtype}  # float32 over half, as PEFT
        size = int(self.out_features * PER_OUTPUT[config.variant])
        theta, alpha = torch.zeros(size, **options), torch.ones(size, **options)
        if not config.init_weights:  # random angles and scales, for tests, as PEFT
            nn.init.normal_(theta, mean=0.0, std=0.5)
            nn.init.normal_(alpha, mean=1.0, std=0.5)
        self.road_theta[adapter_name] = nn.Parameter(theta)
        self.road_alpha[adapter_name] = nn.Parameter(alpha)
        self.configs[adapter_name] = config
        self.set_adapter(self.active_adapters)  # a new adapter trains only once it is set active

    def delete_adapter(self, adapter_name: str) -> None:
        if adapter_name in self.merged_adapters:
            raise ValueError(f"adapter {adapter_name!r} is merged; unmerge before deleting it")
        if adapter_name in self.road_theta:
            del self.road_theta[adapter_name], self.road_alpha[adapter_name], self.configs[adapter_name]
        self.active_adapters = [name for name in self.active_adapters if name != adapter_name]

    def _parameters_of(self, adapter_name: str) -> tuple[str, int, torch.Tensor, torch.Tensor]:
        config = self.configs[adapter_name]
        return config.variant, config.group_size, self.road_theta[adapter_name], self.road_alpha[adapter_name]

    def adapter_output(self, adapter_name: str, x: torch.Tensor, result: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The output's pairs turned, computed in the adapter's dtype."""
        variant, group_size, theta, alpha = self._parameters_of(adapter_name)
        return rotate(variant, group_size, theta, alpha, result.to(theta.dtype)).to(result.dtype)

    def rotation(self, adapter_name: str) -> torch.Tensor:
        """This adapter's ``R``, ``(out, out)``, in the adapter's dtype."""
        return rotation_matrix(*self._parameters_of(adapter_name))

    def merge(self, adapter_names: Sequence[str] | None = None) -> None:
        """``W <- R W`` and ``b <- R b`` per adapter, in order, in the base's dtype (as PEFT)."""
        for name in self.active_adapters if adapter_names is None else adapter_names:
            if name in self.road_theta and name not in self.merged_adapters:
                with torch.no_grad():
                    self._fold(self.rotation(name).to(self.base_layer.weight.dtype))
                self.merged_adapters.append(name)

    def unmerge(self) -> None:
        """``W <- R^-1 W``, ``b <- R^-1 b``, last merged first (``R^-1`` in float32, as PEFT)."""
        while self.merged_adapters:
            with torch.no_grad():
                inverse = torch.linalg.inv(self.rotation(self.merged_adapters.pop()).to(torch.float32))
                self._fold(inverse.to(self.base_layer.weight.dtype))

    def _fold(self, matrix: torch.Tensor) -> None:
        base = self.base_layer
        base.weight.data = torch.matmul(matrix, base.weight.data).contiguous()
        if base.bias is not None:
            base.bias.data = torch.matmul(matrix, base.bias.data).contiguous()

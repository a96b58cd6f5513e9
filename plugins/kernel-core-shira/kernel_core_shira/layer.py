"""The SHiRA layer: per adapter, ``r * (in + out)`` trained values (``shira_weight``) at fixed
entries of the ``(out, in)`` weight (``shira_indices``, rows then columns, int32, saved in the
file as PEFT saves them: loading takes the file's entries, whatever mask made them).

The entries are the first ``r * (in + out)`` of a random permutation of the ``out * in``
positions, drawn from a generator seeded with ``random_seed`` (or left at torch's default seed),
in row-major order, as PEFT's random mask gives them. The forward computes with the updated
weight ``W + ΔW``, as PEFT does, so merged and unmerged outputs agree bit for bit.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kernel_core.contracts.buffers import BufferDict
from kernel_core.contracts.delta_weight import DeltaWeightLayer
from kernel_core.contracts.tuner import BaseTunerConfig, TunerLayer
from kernel_core_shira.config import ShiraConfig


def random_entries(out_features: int, in_features: int, count: int, seed: int | None) -> torch.Tensor:
    """``(2, count)`` int32 rows and columns of ``count`` random entries of an ``(out, in)``
    weight, in row-major order."""
    generator = torch.Generator()
    if seed is not None:
        generator.manual_seed(seed)
    flat = torch.randperm(out_features * in_features, generator=generator)[:count].sort().values
    return torch.stack([flat // in_features, flat % in_features]).to(torch.int32)


class ShiraLayer(DeltaWeightLayer):
    """SHiRA around an ``nn.Linear``."""

    def __init__(self, base_layer: nn.Linear, adapter_name: str, config: ShiraConfig) -> None:
        super().__init__(base_layer)
        self.shira_weight = nn.ParameterDict()
        self.shira_indices = BufferDict()
        self.update_layer(adapter_name, config)
        self.set_adapter([adapter_name])

    def update_layer(self, adapter_name: str, config: BaseTunerConfig) -> None:
        if not isinstance(config, ShiraConfig):
            raise TypeError(f"SHiRA needs a ShiraConfig, got {type(config).__name__}")
        if adapter_name in self.merged_adapters:
            raise ValueError(f"adapter {adapter_name!r} is merged; unmerge before re-initialising it")
        count, size = config.r * (self.in_features + self.out_features), self.out_features * self.in_features
        if count > size:
            raise ValueError(
                f"r {config.r} for {config.module_name or 'this module'}: r * (in + out) = {count} trained entries "
                f"exceed the weight's out * in = {self.out_features} * {self.in_features} = {size}"
            )
        values = torch.zeros(count) if config.init_weights else torch.randn(count)
        weight = self.base_layer.weight
        self.shira_weight[adapter_name] = nn.Parameter(values.to(weight.device, self.adapter_dtype))
        entries = random_entries(self.out_features, self.in_features, count, config.random_seed)
        self.shira_indices.put(adapter_name, entries.to(weight.device), persistent=True)
        self.set_adapter(self.active_adapters)  # a new adapter trains only once it is set active

    def delete_adapter(self, adapter_name: str) -> None:
        super().delete_adapter(adapter_name)
        if adapter_name in self.shira_indices:
            del self.shira_indices[adapter_name]

    def delta_weight(self, adapter_name: str, *, training: bool = False) -> torch.Tensor:
        """The trained values at their entries of an ``(out, in)`` zero matrix."""
        values = self.shira_weight[adapter_name]
        rows, columns = self.shira_indices[adapter_name].to(values.device, torch.long)
        zeros = torch.zeros(self.out_features, self.in_features, dtype=values.dtype, device=values.device)
        return zeros.index_put((rows, columns), values)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """With active adapters and no mixed batch: ``x (W + Σ ΔW)ᵀ + bias``, as PEFT computes it."""
        active = [name for name in self.active_adapters if name in self.shira_weight]
        if self.disable_adapters or self.merged or self.row_adapters is not None or not active or self._stacked:
            return super().forward(x, *args, **kwargs)
        return self._updated_output(x, active)

    def adapter_output(self, adapter_name: str, x: torch.Tensor, result: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Over the base module (a mixed batch's rows of one adapter, :meth:`forward` doing the
        rest): the base output computed again with ``W + ΔW``, so that each row equals the
        adapter alone. Over another method's layer (a mixed model; PEFT refuses SHiRA there):
        ``result + x ΔWᵀ``, the inner layers' output and this update."""
        if self._stacked:
            return super().adapter_output(adapter_name, x, result, *args, **kwargs)
        return self._updated_output(x, [adapter_name]).to(result.dtype)

    @property
    def _stacked(self) -> bool:
        return isinstance(self.base_layer, TunerLayer)

    def _updated_output(self, x: torch.Tensor, adapter_names: list[str]) -> torch.Tensor:
        base = self.base_layer
        weight = base.weight
        for name in adapter_names:
            weight = (weight + self.delta_weight(name)).to(base.weight.dtype)
        return F.linear(x, weight, base.bias)

"""The IA3 layer: one learned vector per adapter, scaling the base layer's input (feed-forward
modules) or its output (the others), and foldable into the base weight.

Shapes follow PEFT's files: ``ia3_l`` is ``(1, in_features)`` on a feed-forward module and
``(out_features, 1)`` otherwise, for ``nn.Linear`` (weight ``(out, in)``) and transformers'
``Conv1D`` (weight ``(in, out)``, so the vector is transposed against it) alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from kernel_core.contracts.tuner import BaseTunerConfig, TunerLayer
from kernel_core_ia3.config import IA3Config


class IA3Layer(TunerLayer):
    """IA3 around an ``nn.Linear`` or a ``Conv1D``; whether an adapter scales the input or the
    output comes from its config for this module (:attr:`IA3Config.is_feedforward`)."""

    def __init__(self, base_layer: nn.Linear | Conv1D, adapter_name: str, config: IA3Config) -> None:
        super().__init__(base_layer.requires_grad_(False))
        self.fan_in_fan_out = isinstance(base_layer, Conv1D)
        weight = base_layer.weight
        self.in_features, self.out_features = weight.shape[::-1] if not self.fan_in_fan_out else weight.shape
        self.ia3_l = nn.ParameterDict()
        self.feedforward: dict[str, bool] = {}
        self.update_layer(adapter_name, config)
        self.set_adapter([adapter_name])

    @property
    def adapter_names(self) -> list[str]:
        return list(self.ia3_l)

    def update_layer(self, adapter_name: str, config: BaseTunerConfig) -> None:
        if not isinstance(config, IA3Config):
            raise TypeError(f"IA3 needs an IA3Config, got {type(config).__name__}")
        if adapter_name in self.merged_adapters:
            raise ValueError(f"adapter {adapter_name!r} is merged; unmerge before re-initialising it")
        feedforward = config.is_feedforward
        weight = self.base_layer.weight
        shape = (1, self.in_features) if feedforward else (self.out_features, 1)
        scale = torch.ones(shape, dtype=weight.dtype, device=weight.device)
        if not config.init_ia3_weights:
            scale.normal_()  # as PEFT: random vectors, for tests
        self.ia3_l[adapter_name] = nn.Parameter(scale)
        self.feedforward[adapter_name] = feedforward
        self.set_adapter(self.active_adapters)  # a new adapter trains only once it is set active

    def delete_adapter(self, adapter_name: str) -> None:
        if adapter_name in self.merged_adapters:
            raise ValueError(f"adapter {adapter_name!r} is merged; unmerge before deleting it")
        if adapter_name in self.ia3_l:
            del self.ia3_l[adapter_name]
            del self.feedforward[adapter_name]
        self.active_adapters = [name for name in self.active_adapters if name != adapter_name]

    def adapter_input(self, adapter_name: str, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """A feed-forward module's input, scaled per input feature."""
        if not self.feedforward[adapter_name]:
            return x
        scale = self.ia3_l[adapter_name]
        return (x.to(scale.dtype) * scale.flatten()).to(x.dtype)

    def adapter_output(self, adapter_name: str, x: torch.Tensor, result: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Any other module's output, scaled per output feature."""
        if self.feedforward[adapter_name]:
            return result
        return (result * self.ia3_l[adapter_name].flatten()).to(result.dtype)

    def merge(self, adapter_names: Sequence[str] | None = None) -> None:
        """``W * s`` along the scaled dimension (and ``b * s`` for an output scale, as
        ``(x W^T + b) * s``; an input scale leaves the bias alone)."""
        for name in self.active_adapters if adapter_names is None else adapter_names:
            if name in self.ia3_l and name not in self.merged_adapters:
                self._fold_scale(torch.mul, name)
                self.merged_adapters.append(name)

    def unmerge(self) -> None:
        """Divide the scales back out, last merged first (a scale of exactly 0 cannot be undone)."""
        while self.merged_adapters:
            self._fold_scale(torch.div, self.merged_adapters.pop())

    def _fold_scale(self, operation: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], adapter_name: str) -> None:
        scale = self.ia3_l[adapter_name].detach()
        base = self.base_layer
        with torch.no_grad():
            weight_scale = scale.T if self.fan_in_fan_out else scale
            base.weight.data = operation(base.weight.data, weight_scale).to(base.weight.dtype)
            if not self.feedforward[adapter_name] and base.bias is not None:
                base.bias.data = operation(base.bias.data, scale.reshape(base.bias.shape)).to(base.bias.dtype)

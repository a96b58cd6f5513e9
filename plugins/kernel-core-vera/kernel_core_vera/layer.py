"""The VeRA layer: per adapter, two trained vectors ``lambda_d`` (r) and ``lambda_b`` (out) around
the shared frozen projections, adding ``lambda_b * B[:out] (lambda_d * A[:, :in] dropout(x))`` to
the base layer's output, and foldable into the base weight.

The projections are the model's (bound by :meth:`VeraLayer.bind` once every target is wrapped);
a layer wrapped on its own, outside a model, draws its own from the adapter's
``projection_prng_key`` on first use.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from kernel_core.contracts.tuner import BaseTunerConfig, TunerLayer
from kernel_core_vera.config import VeraConfig
from kernel_core_vera.projections import BufferDict, Projections


class VeraLayer(TunerLayer):
    """VeRA around an ``nn.Linear`` or a ``Conv1D`` (weight ``(in, out)``)."""

    def __init__(self, base_layer: nn.Linear | Conv1D, adapter_name: str, config: VeraConfig) -> None:
        super().__init__(base_layer.requires_grad_(False))
        self.fan_in_fan_out = isinstance(base_layer, Conv1D)
        shape = base_layer.weight.shape
        self.in_features, self.out_features = shape if self.fan_in_fan_out else shape[::-1]
        self.vera_lambda_b = nn.ParameterDict()
        self.vera_lambda_d = nn.ParameterDict()
        self.vera_dropout = nn.ModuleDict()
        self.configs: dict[str, VeraConfig] = {}
        self.projections: Projections | None = None  # the model's; a plain object, so not saved per layer
        self.own_projections = Projections(BufferDict(), BufferDict())  # outside a model, drawn on first use
        self.update_layer(adapter_name, config)
        self.set_adapter([adapter_name])

    @property
    def adapter_names(self) -> list[str]:
        return list(self.vera_lambda_d)

    def bind(self, projections: Projections) -> None:
        """Use the model's shared projections (``PeftModel.base_model.vera_A``/``vera_B``)."""
        self.projections = projections

    def update_layer(self, adapter_name: str, config: BaseTunerConfig) -> None:
        if not isinstance(config, VeraConfig):
            raise TypeError(f"VeRA needs a VeraConfig, got {type(config).__name__}")
        if adapter_name in self.merged_adapters:
            raise ValueError(f"adapter {adapter_name!r} is merged; unmerge before re-initialising it")
        weight = self.base_layer.weight
        # As PEFT: lambda_b zero and lambda_d d_initial (the identity), or ones and random, for tests.
        lambda_b, lambda_d = torch.ones(self.out_features), torch.randn(config.r)
        if config.init_weights:
            lambda_b.zero_(), lambda_d.fill_(config.d_initial)
        self.vera_lambda_b[adapter_name] = nn.Parameter(lambda_b.to(weight))
        self.vera_lambda_d[adapter_name] = nn.Parameter(lambda_d.to(weight))
        self.vera_dropout[adapter_name] = nn.Dropout(config.vera_dropout) if config.vera_dropout > 0 else nn.Identity()
        self.configs[adapter_name] = config
        self.set_adapter(self.active_adapters)  # a new adapter trains only once it is set active

    def delete_adapter(self, adapter_name: str) -> None:
        if adapter_name in self.merged_adapters:
            raise ValueError(f"adapter {adapter_name!r} is merged; unmerge before deleting it")
        if adapter_name in self.vera_lambda_d:
            for container in (self.vera_lambda_b, self.vera_lambda_d, self.vera_dropout):
                del container[adapter_name]
            del self.configs[adapter_name]
        self.active_adapters = [name for name in self.active_adapters if name != adapter_name]

    def adapter_output(self, adapter_name: str, x: torch.Tensor, result: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        lambda_d, lambda_b = self.vera_lambda_d[adapter_name], self.vera_lambda_b[adapter_name]
        vera_A, vera_B = self._sliced(adapter_name, lambda_d)
        hidden = self.vera_dropout[adapter_name](x).to(lambda_d.dtype)
        update = lambda_b * F.linear(lambda_d * F.linear(hidden, vera_A), vera_B)
        return (result + update).to(result.dtype)

    def delta_weight(self, adapter_name: str) -> torch.Tensor:
        """``(lambda_b B) (lambda_d A)``, shaped like the base weight."""
        lambda_d, lambda_b = self.vera_lambda_d[adapter_name], self.vera_lambda_b[adapter_name]
        vera_A, vera_B = self._sliced(adapter_name, lambda_d)
        delta = (lambda_b.unsqueeze(-1) * vera_B) @ (lambda_d.unsqueeze(-1) * vera_A)
        return delta.T if self.fan_in_fan_out else delta

    def merge(self, adapter_names: Sequence[str] | None = None) -> None:
        for name in self.active_adapters if adapter_names is None else adapter_names:
            if name in self.vera_lambda_d and name not in self.merged_adapters:
                self._fold(name, 1.0)
                self.merged_adapters.append(name)

    def unmerge(self) -> None:
        while self.merged_adapters:
            self._fold(self.merged_adapters.pop(), -1.0)

    def _fold(self, adapter_name: str, sign: float) -> None:
        weight = self.base_layer.weight
        with torch.no_grad():
            weight.data = weight.data + sign * self.delta_weight(adapter_name).to(weight.dtype)

    def _sliced(self, adapter_name: str, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        projections = self.projections
        if projections is None:  # outside a model: of this layer's size, from the adapter's key
            projections = self.own_projections
            if adapter_name not in projections:
                config = self.configs[adapter_name]
                projections.draw(adapter_name, config.r, self.in_features, self.out_features, config.projection_prng_key)
        return projections.sliced(adapter_name, self.in_features, self.out_features, like)

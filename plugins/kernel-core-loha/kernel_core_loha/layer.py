"""The LoHa layer: per adapter, two low-rank products whose element-wise (Hadamard) product,
scaled by ``alpha / r``, is the update of the wrapped ``nn.Linear``'s weight.

Tensors and shapes follow PEFT's files: ``hada_w1_a`` and ``hada_w2_a`` are ``(out, r)``,
``hada_w1_b`` and ``hada_w2_b`` are ``(r, in)``. The forward, merge and unmerge that follow
from the update come from :class:`DeltaWeightLayer`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from kernel_core.contracts.delta_weight import DeltaWeightLayer
from kernel_core.contracts.tuner import BaseTunerConfig
from kernel_core_loha.config import LoHaConfig

FACTORS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")


class LoHaLayer(DeltaWeightLayer):
    """LoHa around an ``nn.Linear``; each adapter's rank, alpha and dropouts come from its
    config for this module (``rank_pattern``/``alpha_pattern`` already applied)."""

    def __init__(self, base_layer: nn.Linear, adapter_name: str, config: LoHaConfig) -> None:
        super().__init__(base_layer)
        self.hada_w1_a = nn.ParameterDict()
        self.hada_w1_b = nn.ParameterDict()
        self.hada_w2_a = nn.ParameterDict()
        self.hada_w2_b = nn.ParameterDict()
        self.configs: dict[str, LoHaConfig] = {}
        self.update_layer(adapter_name, config)
        self.set_adapter([adapter_name])

    def update_layer(self, adapter_name: str, config: BaseTunerConfig) -> None:
        if not isinstance(config, LoHaConfig):
            raise TypeError(f"LoHa needs a LoHaConfig, got {type(config).__name__}")
        if adapter_name in self.merged_adapters:
            raise ValueError(f"adapter {adapter_name!r} is merged; unmerge before re-initialising it")
        weight = self.base_layer.weight
        shapes = {"hada_w1_a": (self.out_features, config.r), "hada_w1_b": (config.r, self.in_features)}
        shapes |= {"hada_w2_a": shapes["hada_w1_a"], "hada_w2_b": shapes["hada_w1_b"]}
        for name, shape in shapes.items():
            factor = torch.empty(shape, dtype=self.adapter_dtype, device=weight.device)
            if name == "hada_w2_b" and config.init_weights:
                nn.init.zeros_(factor)  # one zero factor makes the new adapter the identity
            else:
                nn.init.kaiming_uniform_(factor, a=math.sqrt(5))  # He init, as FedPara and PEFT
            getattr(self, name)[adapter_name] = nn.Parameter(factor)
        self.configs[adapter_name] = config
        self.set_adapter(self.active_adapters)  # a new adapter trains only once it is set active

    def delete_adapter(self, adapter_name: str) -> None:
        super().delete_adapter(adapter_name)
        self.configs.pop(adapter_name, None)

    def delta_weight(self, adapter_name: str, *, training: bool = False) -> torch.Tensor:
        """``(W1a W1b) ⊙ (W2a W2b) * alpha / r``; while training, each output row is dropped
        with probability ``rank_dropout`` and the kept rows rescaled by the kept fraction."""
        config = self.configs[adapter_name]
        w1 = self.hada_w1_a[adapter_name] @ self.hada_w1_b[adapter_name]
        w2 = self.hada_w2_a[adapter_name] @ self.hada_w2_b[adapter_name]
        delta = w1 * w2 * torch.tensor(config.scaling)
        if training and config.rank_dropout:
            keep = (torch.rand(delta.shape[0]) > config.rank_dropout).to(delta)
            delta = delta * (keep / keep.mean()).unsqueeze(1)
        return delta

    def adapter_output(self, adapter_name: str, x: torch.Tensor, result: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """While training, the whole adapter is skipped with probability ``module_dropout``."""
        dropout = self.configs[adapter_name].module_dropout
        if self.training and dropout and torch.rand(1).item() <= dropout:
            return result
        return super().adapter_output(adapter_name, x, result, *args, **kwargs)

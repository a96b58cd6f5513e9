"""A tiny tuner that is not LoRA, for the tests of ``kcore finetune --method``: one learned scale
per output channel of each targeted Linear (``SCALE``). Its config has no LoRA field, a
``target_modules`` default of its own, and a ``seed`` field, as TrainingArguments has one.

The ``scale_tuner`` fixture installs it as a plugin by entry point, as a third party's method
would be: this file is the implementation module, beside an entry-point module that imports no
torch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from pydantic import Field
from torch import nn

from kernel_core.contracts.tuner import Tuner, BaseTunerConfig, TunerLayer


class ScaleConfig(BaseTunerConfig):
    target_modules: list[str] | str | None = ["v_proj"]
    init_scale: float = Field(default=1.0, gt=0, description="Every scale's first value; 1 starts as the base model.")
    seed: int = Field(default=0, description="Unused; named as a TrainingArguments field is.")


class ScaleLayer(TunerLayer):
    def __init__(self, base_layer: nn.Linear, adapter_name: str, config: ScaleConfig) -> None:
        super().__init__(base_layer.requires_grad_(False))
        self.scale_vector = nn.ParameterDict()
        self.update_layer(adapter_name, config)
        self.set_adapter([adapter_name])

    @property
    def adapter_names(self) -> list[str]:
        return list(self.scale_vector)

    def update_layer(self, adapter_name: str, config: BaseTunerConfig) -> None:
        assert isinstance(config, ScaleConfig)
        self.scale_vector[adapter_name] = nn.Parameter(torch.full((self.base_layer.out_features,), config.init_scale))
        self.set_adapter(self.active_adapters)

    def delete_adapter(self, adapter_name: str) -> None:
        del self.scale_vector[adapter_name]

    def adapter_output(self, adapter_name: str, x: torch.Tensor, result: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return result * self.scale_vector[adapter_name]

    def merge(self, adapter_names: Sequence[str] | None = None) -> None:
        raise NotImplementedError("not needed to train")

    def unmerge(self) -> None:
        raise NotImplementedError("not needed to train")


class ScaleTuner(Tuner):
    config_class = ScaleConfig
    prefix = "scale_"

    def can_wrap(self, module: nn.Module) -> bool:
        return type(module) is nn.Linear

    def wrap(self, module: nn.Module, adapter_name: str, config: BaseTunerConfig) -> TunerLayer:
        assert isinstance(module, nn.Linear) and isinstance(config, ScaleConfig)
        return ScaleLayer(module, adapter_name, config)

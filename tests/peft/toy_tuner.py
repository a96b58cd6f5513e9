"""A minimal tuner exercising the API 1.4 seams, registered by the tests that need it: a scale on
the input of the modules named in ``input_modules`` (through ``adapter_input``) and on the output
of the others, per-architecture default targets, and a vector shared by every layer, kept once per
model on ``base_model`` (as VeRA keeps its projections)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

import kernel_core
from kernel_core.contracts.records import TunerSpec
from kernel_core.contracts.tuner import Tuner, BaseTunerConfig, TunerLayer

kernel_core_api = "1.4"
DEFAULT_TARGETS = {"llama": ("q_proj", "down_proj")}


@kernel_core.hookimpl
def kernel_core_tuners() -> list[TunerSpec]:
    return [TunerSpec(name="toy", description="test tuner", implementation=f"{__name__}:ToyTuner", peft_type="TOY")]


class ToyConfig(BaseTunerConfig):
    input_modules: list[str] = []
    init: float = 1.0

    @property
    def scales_input(self) -> bool:
        return any((self.module_name or "").endswith(entry) for entry in self.input_modules)


class ToyLayer(TunerLayer):
    def __init__(self, base_layer: nn.Linear, adapter_name: str, config: ToyConfig) -> None:
        super().__init__(base_layer.requires_grad_(False))
        self.toy_scale = nn.ParameterDict()
        self.module_names: dict[str, str | None] = {}
        self.update_layer(adapter_name, config)
        self.set_adapter([adapter_name])

    @property
    def adapter_names(self) -> list[str]:
        return list(self.toy_scale)

    def update_layer(self, adapter_name: str, config: BaseTunerConfig) -> None:
        assert isinstance(config, ToyConfig)
        size = self.base_layer.in_features if config.scales_input else self.base_layer.out_features
        self.toy_scale[adapter_name] = nn.Parameter(torch.full((size,), config.init))
        self.module_names[adapter_name] = config.module_name
        self.set_adapter(self.active_adapters)

    def delete_adapter(self, adapter_name: str) -> None:
        del self.toy_scale[adapter_name]
        self.active_adapters = [name for name in self.active_adapters if name != adapter_name]

    def _on_input(self, adapter_name: str) -> bool:
        return self.toy_scale[adapter_name].shape[0] != self.base_layer.out_features

    def adapter_input(self, adapter_name: str, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return x * self.toy_scale[adapter_name] if self._on_input(adapter_name) else x

    def adapter_output(self, adapter_name: str, x: torch.Tensor, result: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return result if self._on_input(adapter_name) else result * self.toy_scale[adapter_name]

    def merge(self, adapter_names: Sequence[str] | None = None) -> None:
        raise NotImplementedError

    def unmerge(self) -> None:
        raise NotImplementedError


class ToyTuner(Tuner):
    config_class = ToyConfig
    prefix = "toy_"
    default_target_modules = DEFAULT_TARGETS
    calls: list[tuple[str, Any]] = []

    def can_wrap(self, module: nn.Module) -> bool:
        return isinstance(module, nn.Linear)

    def wrap(self, module: nn.Module, adapter_name: str, config: BaseTunerConfig) -> TunerLayer:
        assert isinstance(module, nn.Linear) and isinstance(config, ToyConfig)
        return ToyLayer(module, adapter_name, config)

    def before_inject(self, model: Any, adapter_name: str, config: BaseTunerConfig) -> BaseTunerConfig:
        self.calls.append(("before", list(config.target_modules or [])))
        if not hasattr(model.base_model, "toy_shared"):
            model.base_model.toy_shared = nn.ParameterDict()
        hidden = model.config.hidden_size
        model.base_model.toy_shared[adapter_name] = nn.Parameter(torch.arange(hidden, dtype=torch.float32), requires_grad=False)
        return config.model_copy(update={"init": 2.0})

    def after_inject(self, model: Any, adapter_name: str, config: BaseTunerConfig, wrapped: Sequence[str]) -> None:
        self.calls.append(("after", list(wrapped)))

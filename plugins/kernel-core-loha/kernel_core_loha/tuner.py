"""The LoHa method: which modules it adapts, and its per-architecture default targets."""

from __future__ import annotations

from torch import nn

from kernel_core.contracts.tuner import BaseTunerConfig, Tuner, TunerLayer
from kernel_core_loha.config import DEFAULT_TARGETS, LoHaConfig
from kernel_core_loha.layer import LoHaLayer


class LoHaTuner(Tuner):
    """LoHa on ``nn.Linear`` and ``nn.Conv2d`` (PEFT also adapts ``nn.Conv1d``, which this plugin declines)."""

    config_class = LoHaConfig
    prefix = "hada_"
    default_target_modules = DEFAULT_TARGETS

    def can_wrap(self, module: nn.Module) -> bool:
        return isinstance(module, (nn.Linear, nn.Conv2d))

    def wrap(self, module: nn.Module, adapter_name: str, config: BaseTunerConfig) -> TunerLayer:
        if not isinstance(module, (nn.Linear, nn.Conv2d)):
            raise TypeError(f"LoHa adapts Linear and Conv2d layers, not {type(module).__name__}")
        if not isinstance(config, LoHaConfig):
            raise TypeError(f"LoHa needs a LoHaConfig, got {type(config).__name__}")
        return LoHaLayer(module, adapter_name, config)

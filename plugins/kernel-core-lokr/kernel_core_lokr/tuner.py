"""The LoKr method: which modules it adapts, and its per-architecture default targets."""

from __future__ import annotations

from torch import nn

from kernel_core.contracts.tuner import BaseTunerConfig, Tuner, TunerLayer
from kernel_core_lokr.config import DEFAULT_TARGETS, LoKrConfig
from kernel_core_lokr.layer import LoKrLayer


class LoKrTuner(Tuner):
    """LoKr on ``nn.Linear`` and ``nn.Conv2d`` (PEFT also adapts ``nn.Conv1d``, which this plugin declines)."""

    config_class = LoKrConfig
    prefix = "lokr_"
    default_target_modules = DEFAULT_TARGETS

    def can_wrap(self, module: nn.Module) -> bool:
        return isinstance(module, (nn.Linear, nn.Conv2d))

    def wrap(self, module: nn.Module, adapter_name: str, config: BaseTunerConfig) -> TunerLayer:
        if not isinstance(module, (nn.Linear, nn.Conv2d)):
            raise TypeError(f"LoKr adapts Linear and Conv2d layers, not {type(module).__name__}")
        if not isinstance(config, LoKrConfig):
            raise TypeError(f"LoKr needs a LoKrConfig, got {type(config).__name__}")
        return LoKrLayer(module, adapter_name, config)

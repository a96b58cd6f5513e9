"""The SHiRA method: which modules it adapts."""

from __future__ import annotations

from torch import nn

from kernel_core.contracts.tuner import BaseTunerConfig, Tuner, TunerLayer
from kernel_core_shira.config import DEFAULT_TARGETS, ShiraConfig
from kernel_core_shira.layer import ShiraLayer


class ShiraTuner(Tuner):
    """SHiRA on ``nn.Linear``, as PEFT has it (PEFT's SHiRA takes no Conv1D)."""

    config_class = ShiraConfig
    prefix = "shira_"
    default_target_modules = DEFAULT_TARGETS

    def can_wrap(self, module: nn.Module) -> bool:
        return isinstance(module, nn.Linear)

    def wrap(self, module: nn.Module, adapter_name: str, config: BaseTunerConfig) -> TunerLayer:
        if not isinstance(module, nn.Linear):
            raise TypeError(f"SHiRA adapts Linear layers, not {type(module).__name__}")
        if not isinstance(config, ShiraConfig):
            raise TypeError(f"SHiRA needs a ShiraConfig, got {type(config).__name__}")
        return ShiraLayer(module, adapter_name, config)

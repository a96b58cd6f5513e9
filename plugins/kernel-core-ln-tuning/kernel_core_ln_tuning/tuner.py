"""The LayerNorm-tuning method: it adapts any module with parameters that targets name."""

from __future__ import annotations

from torch import nn

from kernel_core.contracts.tuner import BaseTunerConfig, Tuner, TunerLayer
from kernel_core_ln_tuning.config import DEFAULT_TARGETS, LNTuningConfig
from kernel_core_ln_tuning.layer import LNTuningLayer


class LNTuningTuner(Tuner):
    """LayerNorm tuning (Zhao et al., 2023): PEFT's defaults target norm layers (LayerNorm,
    ``LlamaRMSNorm`` and kin), but any module with parameters can be copied and tuned."""

    config_class = LNTuningConfig
    prefix = "ln_tuning_"
    default_target_modules = DEFAULT_TARGETS

    def can_wrap(self, module: nn.Module) -> bool:
        """A module with parameters of its own or below: a copy without any would train nothing."""
        return not isinstance(module, TunerLayer) and any(True for _ in module.parameters())

    def wrap(self, module: nn.Module, adapter_name: str, config: BaseTunerConfig) -> TunerLayer:
        if not self.can_wrap(module):
            raise TypeError(f"LayerNorm tuning needs a module with parameters, not {type(module).__name__}")
        if not isinstance(config, LNTuningConfig):
            raise TypeError(f"LayerNorm tuning needs an LNTuningConfig, got {type(config).__name__}")
        return LNTuningLayer(module, adapter_name, config)

"""The LayerNorm-tuning method: it adapts any module with parameters that targets name."""

from __future__ import annotations

from torch import nn

from kernel_core.contracts.tuner import SingleLayerTuner, TunerLayer
from kernel_core_ln_tuning.config import DEFAULT_TARGETS, LNTuningConfig
from kernel_core_ln_tuning.layer import LNTuningLayer


class LNTuningTuner(SingleLayerTuner):
    """LayerNorm tuning (Zhao et al., 2023): PEFT's defaults target norm layers (LayerNorm,
    ``LlamaRMSNorm`` and kin), but any module with parameters can be copied and tuned."""

    config_class = LNTuningConfig
    prefix = "ln_tuning_"
    default_target_modules = DEFAULT_TARGETS
    layer_class = LNTuningLayer

    def can_wrap(self, module: nn.Module) -> bool:
        """A module with parameters of its own or below: a copy without any would train nothing."""
        return not isinstance(module, TunerLayer) and any(True for _ in module.parameters())

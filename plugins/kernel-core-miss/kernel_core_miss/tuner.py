"""The MiSS method: which modules it adapts, and which base biases it trains."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from kernel_core.contracts.tuner import BaseTunerConfig, SingleLayerTuner, bias_parameters
from kernel_core_miss.config import DEFAULT_TARGETS, MissConfig
from kernel_core_miss.layer import MissLayer


class MissTuner(SingleLayerTuner):
    """MiSS on ``nn.Linear``, as PEFT (which adapts no Conv1D, Conv2d or Embedding)."""

    config_class = MissConfig
    prefix = "miss_"
    default_target_modules = DEFAULT_TARGETS
    layer_class = MissLayer
    module_types = (nn.Linear,)

    def trained_base_parameters(self, config: BaseTunerConfig, model: nn.Module, wrapped: Sequence[str]) -> list[str]:
        """``bias="all"``: every bias of the model; ``"MiSS_only"``: those of wrapped layers."""
        assert isinstance(config, MissConfig)
        return bias_parameters(model, wrapped, config.bias)

"""The BOFT method: which modules it adapts, and which base biases it trains."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from kernel_core.contracts.tuner import BaseTunerConfig, SingleLayerTuner, bias_parameters
from kernel_core_boft.config import DEFAULT_TARGETS, BOFTConfig
from kernel_core_boft.layer import BOFTLayer


class BOFTTuner(SingleLayerTuner):
    """BOFT on ``nn.Linear`` (PEFT also has a Conv2d layer, not covered here; it has no Conv1D
    layer, so GPT-2's projections are declined as PEFT declines them)."""

    config_class = BOFTConfig
    prefix = "boft_"
    default_target_modules = DEFAULT_TARGETS
    layer_class = BOFTLayer
    module_types = (nn.Linear,)

    def trained_base_parameters(self, config: BaseTunerConfig, model: nn.Module, wrapped: Sequence[str]) -> list[str]:
        """``bias="all"``: every bias of the model; ``"boft_only"``: those of wrapped layers."""
        assert isinstance(config, BOFTConfig)
        return bias_parameters(model, wrapped, config.bias)

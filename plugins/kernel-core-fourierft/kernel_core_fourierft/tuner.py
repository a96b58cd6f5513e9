"""The FourierFT method: which modules it adapts, and which base biases it trains."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn
from transformers.pytorch_utils import Conv1D

from kernel_core.contracts.tuner import BaseTunerConfig, SingleLayerTuner, bias_parameters
from kernel_core_fourierft.config import DEFAULT_TARGETS, FourierFTConfig
from kernel_core_fourierft.layer import FourierFTLayer


class FourierFTTuner(SingleLayerTuner):
    """FourierFT on ``nn.Linear`` and transformers' ``Conv1D`` (GPT-2), as PEFT has it."""

    config_class = FourierFTConfig
    prefix = "fourierft_"
    default_target_modules = DEFAULT_TARGETS
    layer_class = FourierFTLayer
    module_types = (nn.Linear, Conv1D)

    def trained_base_parameters(self, config: BaseTunerConfig, model: nn.Module, wrapped: Sequence[str]) -> list[str]:
        """``bias="all"``: every bias of the model; ``"fourier_only"``: those of wrapped layers."""
        assert isinstance(config, FourierFTConfig)
        return bias_parameters(model, wrapped, config.bias)

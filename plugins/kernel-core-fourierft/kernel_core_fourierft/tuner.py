"""The FourierFT method: which modules it adapts, and which base biases it trains."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn
from transformers.pytorch_utils import Conv1D

from kernel_core.contracts.tuner import BaseTunerConfig, Tuner, TunerLayer
from kernel_core_fourierft.config import DEFAULT_TARGETS, FourierFTConfig
from kernel_core_fourierft.layer import FourierFTLayer


class FourierFTTuner(Tuner):
    """FourierFT on ``nn.Linear`` and transformers' ``Conv1D`` (GPT-2), as PEFT has it."""

    config_class = FourierFTConfig
    prefix = "fourierft_"
    default_target_modules = DEFAULT_TARGETS

    def can_wrap(self, module: nn.Module) -> bool:
        return isinstance(module, (nn.Linear, Conv1D))

    def wrap(self, module: nn.Module, adapter_name: str, config: BaseTunerConfig) -> TunerLayer:
        if not isinstance(module, (nn.Linear, Conv1D)):
            raise TypeError(f"FourierFT adapts Linear and Conv1D layers, not {type(module).__name__}")
        if not isinstance(config, FourierFTConfig):
            raise TypeError(f"FourierFT needs a FourierFTConfig, got {type(config).__name__}")
        return FourierFTLayer(module, adapter_name, config)

    def trained_base_parameters(self, config: BaseTunerConfig, model: nn.Module, wrapped: Sequence[str]) -> list[str]:
        """``bias="all"``: every bias of the model; ``"fourier_only"``: those of wrapped layers."""
        assert isinstance(config, FourierFTConfig)
        names = [name for name, _ in model.named_parameters() if name.rsplit(".", 1)[-1] == "bias"]
        if config.bias == "all":
            return names
        if config.bias == "fourier_only":
            return [name for name in names if name.rsplit(".", 2)[0] in wrapped and ".base_layer." in name]
        return []

"""The OFT method: which modules it adapts, and which base biases it trains."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from kernel_core.contracts.tuner import BaseTunerConfig, Tuner, TunerLayer, bias_parameters
from kernel_core_oft.config import DEFAULT_TARGETS, OFTConfig
from kernel_core_oft.layer import Embedding, Linear


class OFTTuner(Tuner):
    """OFT on ``nn.Linear`` and ``nn.Embedding`` (PEFT also has a Conv2d layer, not covered here;
    it has no Conv1D layer, so GPT-2's projections are declined as PEFT declines them)."""

    config_class = OFTConfig
    prefix = "oft_"
    default_target_modules = DEFAULT_TARGETS

    def can_wrap(self, module: nn.Module) -> bool:
        return isinstance(module, (nn.Linear, nn.Embedding))

    def wrap(self, module: nn.Module, adapter_name: str, config: BaseTunerConfig) -> TunerLayer:
        if not isinstance(config, OFTConfig):
            raise TypeError(f"OFT needs an OFTConfig, got {type(config).__name__}")
        if isinstance(module, nn.Embedding):
            return Embedding(module, adapter_name, config)
        if isinstance(module, nn.Linear):
            return Linear(module, adapter_name, config)
        raise TypeError(f"OFT adapts Linear and Embedding layers, not {type(module).__name__}")

    def trained_base_parameters(self, config: BaseTunerConfig, model: nn.Module, wrapped: Sequence[str]) -> list[str]:
        """``bias="all"``: every bias of the model; ``"oft_only"``: those of wrapped layers."""
        assert isinstance(config, OFTConfig)
        return bias_parameters(model, wrapped, config.bias)

"""The BOFT method: which modules it adapts, and which base biases it trains."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from kernel_core.contracts.tuner import Tuner, BaseTunerConfig, TunerLayer
from kernel_core_boft.config import DEFAULT_TARGETS, BOFTConfig
from kernel_core_boft.layer import BOFTLayer


class BOFTTuner(Tuner):
    """BOFT on ``nn.Linear`` (PEFT also has a Conv2d layer, not covered here; it has no Conv1D
    layer, so GPT-2's projections are declined as PEFT declines them)."""

    config_class = BOFTConfig
    prefix = "boft_"
    default_target_modules = DEFAULT_TARGETS

    def can_wrap(self, module: nn.Module) -> bool:
        return isinstance(module, nn.Linear)

    def wrap(self, module: nn.Module, adapter_name: str, config: BaseTunerConfig) -> TunerLayer:
        if not isinstance(module, nn.Linear):
            raise TypeError(f"BOFT adapts Linear layers, not {type(module).__name__}")
        if not isinstance(config, BOFTConfig):
            raise TypeError(f"BOFT needs a BOFTConfig, got {type(config).__name__}")
        return BOFTLayer(module, adapter_name, config)

    def trained_base_parameters(self, config: BaseTunerConfig, model: nn.Module, wrapped: Sequence[str]) -> list[str]:
        """``bias="all"``: every bias of the model; ``"boft_only"``: those of wrapped layers."""
        assert isinstance(config, BOFTConfig)
        names = [name for name, _ in model.named_parameters() if name.rsplit(".", 1)[-1] == "bias"]
        if config.bias == "all":
            return names
        if config.bias == "boft_only":
            return [name for name in names if name.rsplit(".", 2)[0] in wrapped and ".base_layer." in name]
        return []

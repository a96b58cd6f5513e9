"""The MiSS method: which modules it adapts, and which base biases it trains."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from kernel_core.contracts.tuner import BaseTunerConfig, Tuner, TunerLayer
from kernel_core_miss.config import DEFAULT_TARGETS, MissConfig
from kernel_core_miss.layer import MissLayer


class MissTuner(Tuner):
    """MiSS on ``nn.Linear``, as PEFT (which adapts no Conv1D, Conv2d or Embedding)."""

    config_class = MissConfig
    prefix = "miss_"
    default_target_modules = DEFAULT_TARGETS

    def can_wrap(self, module: nn.Module) -> bool:
        return isinstance(module, nn.Linear)

    def wrap(self, module: nn.Module, adapter_name: str, config: BaseTunerConfig) -> TunerLayer:
        if not isinstance(module, nn.Linear):
            raise TypeError(f"MiSS adapts Linear layers, not {type(module).__name__}")
        if not isinstance(config, MissConfig):
            raise TypeError(f"MiSS needs a MissConfig, got {type(config).__name__}")
        return MissLayer(module, adapter_name, config)

    def trained_base_parameters(self, config: BaseTunerConfig, model: nn.Module, wrapped: Sequence[str]) -> list[str]:
        """``bias="all"``: every bias of the model; ``"MiSS_only"``: those of wrapped layers."""
        assert isinstance(config, MissConfig)
        names = [name for name, _ in model.named_parameters() if name.rsplit(".", 1)[-1] == "bias"]
        if config.bias == "all":
            return names
        if config.bias == "MiSS_only":
            return [name for name in names if name.rsplit(".", 2)[0] in wrapped and ".base_layer." in name]
        return []

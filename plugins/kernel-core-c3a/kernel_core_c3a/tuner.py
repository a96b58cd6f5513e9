"""The C3A method: which modules it adapts, and which base biases it trains."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from kernel_core.contracts.tuner import BaseTunerConfig, Tuner, TunerLayer
from kernel_core_c3a.config import DEFAULT_TARGETS, C3AConfig
from kernel_core_c3a.layer import C3ALayer


class C3ATuner(Tuner):
    """C3A on ``nn.Linear``, as PEFT has it (PEFT's C3A takes no Conv1D, though its default
    targets for GPT-2 name one: there, as in PEFT, give ``target_modules``)."""

    config_class = C3AConfig
    prefix = "c3a_"
    default_target_modules = DEFAULT_TARGETS

    def can_wrap(self, module: nn.Module) -> bool:
        return isinstance(module, nn.Linear)

    def wrap(self, module: nn.Module, adapter_name: str, config: BaseTunerConfig) -> TunerLayer:
        if not isinstance(module, nn.Linear):
            raise TypeError(f"C3A adapts Linear layers, not {type(module).__name__}")
        if not isinstance(config, C3AConfig):
            raise TypeError(f"C3A needs a C3AConfig, got {type(config).__name__}")
        return C3ALayer(module, adapter_name, config)

    def trained_base_parameters(self, config: BaseTunerConfig, model: nn.Module, wrapped: Sequence[str]) -> list[str]:
        """``bias="all"``: every bias of the model; ``"c3a_only"``: those of wrapped layers."""
        assert isinstance(config, C3AConfig)
        names = [name for name, _ in model.named_parameters() if name.rsplit(".", 1)[-1] == "bias"]
        if config.bias == "all":
            return names
        if config.bias == "c3a_only":
            return [name for name in names if name.rsplit(".", 2)[0] in wrapped and ".base_layer." in name]
        return []

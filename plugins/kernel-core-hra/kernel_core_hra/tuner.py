"""The HRA method: which modules it adapts, and which base biases it trains."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from kernel_core.contracts.tuner import BaseTunerConfig, Tuner, TunerLayer
from kernel_core_hra.config import DEFAULT_TARGETS, HRAConfig
from kernel_core_hra.layer import HRALayer


def _plain_conv2d(module: nn.Module) -> bool:
    """A Conv2d HRA can adapt: one group and a square kernel (PEFT sizes the vectors from
    ``kernel_size[0]`` squared and refuses groups)."""
    return isinstance(module, nn.Conv2d) and module.groups == 1 and module.kernel_size[0] == module.kernel_size[1]


class HRATuner(Tuner):
    """HRA on ``nn.Linear`` and ungrouped, square-kernel ``nn.Conv2d``, as PEFT (which has no
    Conv1D layer, so GPT-2's projections are declined as PEFT declines them)."""

    config_class = HRAConfig
    prefix = "hra_"
    default_target_modules = DEFAULT_TARGETS

    def can_wrap(self, module: nn.Module) -> bool:
        return isinstance(module, nn.Linear) or _plain_conv2d(module)

    def wrap(self, module: nn.Module, adapter_name: str, config: BaseTunerConfig) -> TunerLayer:
        if not isinstance(config, HRAConfig):
            raise TypeError(f"HRA needs an HRAConfig, got {type(config).__name__}")
        if not self.can_wrap(module):
            raise TypeError(f"HRA adapts Linear and ungrouped square-kernel Conv2d layers, not {module!r}")
        return HRALayer(module, adapter_name, config)

    def trained_base_parameters(self, config: BaseTunerConfig, model: nn.Module, wrapped: Sequence[str]) -> list[str]:
        """``bias="all"``: every bias of the model; ``"hra_only"``: those of wrapped layers."""
        assert isinstance(config, HRAConfig)
        names = [name for name, _ in model.named_parameters() if name.rsplit(".", 1)[-1] == "bias"]
        if config.bias == "all":
            return names
        if config.bias == "hra_only":
            return [name for name in names if name.rsplit(".", 2)[0] in wrapped and ".base_layer." in name]
        return []

"""The HRA method: which modules it adapts, and which base biases it trains."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from kernel_core.contracts.tuner import BaseTunerConfig, SingleLayerTuner, bias_parameters
from kernel_core_hra.config import DEFAULT_TARGETS, HRAConfig
from kernel_core_hra.layer import HRALayer


def _plain_conv2d(module: nn.Module) -> bool:
    """A Conv2d HRA can adapt: one group, as PEFT (which refuses groups). Any kernel: the vectors
    are ``in * k_h * k_w`` long, as PEFT 0.22 sizes them (earlier PEFT used ``k_h`` squared)."""
    return isinstance(module, nn.Conv2d) and module.groups == 1


class HRATuner(SingleLayerTuner):
    """HRA on ``nn.Linear`` and ungrouped ``nn.Conv2d``, as PEFT (which has no Conv1D layer, so
    GPT-2's projections are declined as PEFT declines them)."""

    config_class = HRAConfig
    prefix = "hra_"
    default_target_modules = DEFAULT_TARGETS
    layer_class = HRALayer

    def can_wrap(self, module: nn.Module) -> bool:
        return isinstance(module, nn.Linear) or _plain_conv2d(module)

    def trained_base_parameters(self, config: BaseTunerConfig, model: nn.Module, wrapped: Sequence[str]) -> list[str]:
        """``bias="all"``: every bias of the model; ``"hra_only"``: those of wrapped layers."""
        assert isinstance(config, HRAConfig)
        return bias_parameters(model, wrapped, config.bias)

"""The C3A method: which modules it adapts, and which base biases it trains."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from kernel_core.contracts.tuner import BaseTunerConfig, SingleLayerTuner, bias_parameters
from kernel_core_c3a.config import DEFAULT_TARGETS, C3AConfig
from kernel_core_c3a.layer import C3ALayer


class C3ATuner(SingleLayerTuner):
    """C3A on ``nn.Linear``, as PEFT has it (PEFT's C3A takes no Conv1D, though its default
    targets for GPT-2 name one: there, as in PEFT, give ``target_modules``)."""

    config_class = C3AConfig
    prefix = "c3a_"
    default_target_modules = DEFAULT_TARGETS
    layer_class = C3ALayer
    module_types = (nn.Linear,)

    def trained_base_parameters(self, config: BaseTunerConfig, model: nn.Module, wrapped: Sequence[str]) -> list[str]:
        """``bias="all"``: every bias of the model; ``"c3a_only"``: those of wrapped layers."""
        assert isinstance(config, C3AConfig)
        return bias_parameters(model, wrapped, config.bias)

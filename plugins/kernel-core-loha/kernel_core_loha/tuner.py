"""The LoHa method: which modules it adapts, and its per-architecture default targets."""

from __future__ import annotations

from torch import nn

from kernel_core.contracts.tuner import SingleLayerTuner
from kernel_core_loha.config import DEFAULT_TARGETS, LoHaConfig
from kernel_core_loha.layer import LoHaLayer


class LoHaTuner(SingleLayerTuner):
    """LoHa on ``nn.Linear`` and ``nn.Conv2d`` (PEFT also adapts ``nn.Conv1d``, which this plugin declines)."""

    config_class = LoHaConfig
    prefix = "hada_"
    default_target_modules = DEFAULT_TARGETS
    layer_class = LoHaLayer
    module_types = (nn.Linear, nn.Conv2d)

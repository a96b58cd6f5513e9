"""The LoKr method: which modules it adapts, and its per-architecture default targets."""

from __future__ import annotations

from torch import nn

from kernel_core.contracts.tuner import SingleLayerTuner
from kernel_core_lokr.config import DEFAULT_TARGETS, LoKrConfig
from kernel_core_lokr.layer import LoKrLayer


class LoKrTuner(SingleLayerTuner):
    """LoKr on ``nn.Linear`` and ``nn.Conv2d`` (PEFT also adapts ``nn.Conv1d``, which this plugin declines)."""

    config_class = LoKrConfig
    prefix = "lokr_"
    default_target_modules = DEFAULT_TARGETS
    layer_class = LoKrLayer
    module_types = (nn.Linear, nn.Conv2d)

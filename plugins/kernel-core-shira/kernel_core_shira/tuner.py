"""The SHiRA method: which modules it adapts."""

from __future__ import annotations

from torch import nn

from kernel_core.contracts.tuner import SingleLayerTuner
from kernel_core_shira.config import DEFAULT_TARGETS, ShiraConfig
from kernel_core_shira.layer import ShiraLayer


class ShiraTuner(SingleLayerTuner):
    """SHiRA on ``nn.Linear``, as PEFT has it (PEFT's SHiRA takes no Conv1D)."""

    config_class = ShiraConfig
    prefix = "shira_"
    default_target_modules = DEFAULT_TARGETS
    layer_class = ShiraLayer
    module_types = (nn.Linear,)

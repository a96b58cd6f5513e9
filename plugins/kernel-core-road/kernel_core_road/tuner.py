"""The RoAd method: which modules it adapts."""

from __future__ import annotations

from torch import nn

from kernel_core.contracts.tuner import SingleLayerTuner
from kernel_core_road.config import DEFAULT_TARGETS, RoadConfig
from kernel_core_road.layer import RoadLayer


class RoadTuner(SingleLayerTuner):
    """RoAd on ``nn.Linear``, as PEFT (which adapts no Conv1D, Conv2d or Embedding)."""

    config_class = RoadConfig
    prefix = "road_"
    default_target_modules = DEFAULT_TARGETS
    layer_class = RoadLayer
    module_types = (nn.Linear,)

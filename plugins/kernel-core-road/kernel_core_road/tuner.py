"""The RoAd method: which modules it adapts."""

from __future__ import annotations

from torch import nn

from kernel_core.contracts.tuner import BaseTunerConfig, Tuner, TunerLayer
from kernel_core_road.config import DEFAULT_TARGETS, RoadConfig
from kernel_core_road.layer import RoadLayer


class RoadTuner(Tuner):
    """RoAd on ``nn.Linear``, as PEFT (which adapts no Conv1D, Conv2d or Embedding)."""

    config_class = RoadConfig
    prefix = "road_"
    default_target_modules = DEFAULT_TARGETS

    def can_wrap(self, module: nn.Module) -> bool:
        return isinstance(module, nn.Linear)

    def wrap(self, module: nn.Module, adapter_name: str, config: BaseTunerConfig) -> TunerLayer:
        if not isinstance(module, nn.Linear):
            raise TypeError(f"RoAd adapts Linear layers, not {type(module).__name__}")
        if not isinstance(config, RoadConfig):
            raise TypeError(f"RoAd needs a RoadConfig, got {type(config).__name__}")
        return RoadLayer(module, adapter_name, config)

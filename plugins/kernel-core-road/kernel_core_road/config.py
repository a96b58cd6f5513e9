"""RoAd's hyper-parameters, with PEFT's field names and defaults.

PEFT's ``RoadConfig`` has ``modules_to_save`` but neither ``exclude_modules`` nor the layer
filters, so this config inherits that one mixin: its ``adapter_config.json`` holds PEFT's keys.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from kernel_core.contracts.tuner import BaseTunerConfig, ModulesToSave
from kernel_core.peft.defaults import COMMON_TARGET_MODULES

#: ``target_modules`` when a config has none, by transformers ``model_type``: PEFT's RoAd table
#: is its LoRA table, the common one.
DEFAULT_TARGETS = COMMON_TARGET_MODULES


class RoadConfig(BaseTunerConfig, ModulesToSave):
    """One RoAd adapter: each target's outputs, in groups of ``group_size``, are paired (element
    ``i`` of a group with element ``i + group_size / 2``) and each pair rotated by a learned angle
    and scaled by a learned factor; ``variant`` says how many angles and scales there are."""

    variant: Literal["road_1", "road_2", "road_4"] = Field(
        default="road_1",
        description="road_1: one angle and scale per pair; road_2: per element; road_4: two of each per element.",
    )
    group_size: int = Field(default=64, gt=0, description="Outputs paired within groups of this size (even; divides out_features).")
    init_weights: bool = Field(default=True, description="True: angle 0, scale 1 (the identity); False: random, for tests.")

    @field_validator("group_size")
    @classmethod
    def _even(cls, value: int) -> int:
        if value % 2:
            raise ValueError(f"must be even: elements are paired within a group (got {value})")
        return value

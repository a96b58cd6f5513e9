"""LoKr's hyper-parameters, with PEFT's field names and defaults.

PEFT's ``LoKrConfig`` has every target filter (``exclude_modules``, ``layers_to_transform`` /
``layers_pattern``, ``modules_to_save``), so this config inherits the three mixins and its
``adapter_config.json`` holds PEFT's keys.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt, field_validator

from kernel_core.contracts.tuner import BaseTunerConfig, ExcludeModules, LayerSelection, ModulesToSave, RankPatterns
from kernel_core.peft.defaults import COMMON_TARGET_MODULES

#: ``target_modules`` when a config has none, by transformers ``model_type``: PEFT's table for
#: this method is, in 0.21, its LoRA table, the common one.
DEFAULT_TARGETS = COMMON_TARGET_MODULES


class LoKrConfig(RankPatterns, BaseTunerConfig, ExcludeModules, LayerSelection, ModulesToSave):
    """One LoKr adapter: ``ΔW = (alpha / r) * W1 ⊗ W2`` on each target module, the weight's
    output and input dimensions each split in two factors; a factor much larger than ``r`` is
    itself a low-rank product."""

    r: PositiveInt = Field(default=8, description="Rank of a factor that is decomposed (see decompose_both).")
    alpha: int | float = Field(default=8, description="Scale numerator: the update is scaled by alpha / r.")
    rank_dropout: float = Field(
        default=0.0, ge=0.0, lt=1.0, description="Training only: drop each output row of the update with this probability."
    )
    module_dropout: float = Field(
        default=0.0, ge=0.0, le=1.0, description="Training only: skip the whole adapter for a forward with this probability."
    )
    rank_dropout_scale: bool = Field(default=False, description="Rescale the rows rank_dropout keeps by the kept fraction.")
    use_effective_conv2d: bool = Field(
        default=False, description="On a Conv2d kernel above 1x1, a low-rank W2 as a CP decomposition (a core lokr_t2)."
    )
    decompose_both: bool = Field(
        default=False, description="Also make W1 a rank-r product when r is under half its larger side (W2 always may be)."
    )
    decompose_factor: int = Field(
        default=-1, description="Split each dimension as (factor, dim / factor) when factor divides it; -1: near its square root."
    )
    init_weights: bool | Literal["lycoris"] = Field(
        default=True, description="True: W1 = 0 (the identity); 'lycoris': W2 = 0 instead; False: random, for tests."
    )

    @field_validator("decompose_factor")
    @classmethod
    def _factor_or_default(cls, value: int) -> int:
        if value != -1 and value < 1:
            raise ValueError(f"decompose_factor must be -1 (near the square root) or a positive factor, got {value}")
        return value

    @property
    def scaling(self) -> float:
        return self.alpha / self.r

"""LoHa's hyper-parameters, with PEFT's field names and defaults.

PEFT's ``LoHaConfig`` has every target filter (``exclude_modules``, ``layers_to_transform`` /
``layers_pattern``, ``modules_to_save``), so this config inherits the three mixins and its
``adapter_config.json`` holds PEFT's keys.
"""

from __future__ import annotations

from pydantic import Field, PositiveInt

from kernel_core.contracts.tuner import BaseTunerConfig, ExcludeModules, LayerSelection, ModulesToSave, RankPatterns
from kernel_core.peft.defaults import COMMON_TARGET_MODULES

#: ``target_modules`` when a config has none, by transformers ``model_type``: PEFT's table for
#: this method is, in 0.21, its LoRA table, the common one.
DEFAULT_TARGETS = COMMON_TARGET_MODULES


class LoHaConfig(RankPatterns, BaseTunerConfig, ExcludeModules, LayerSelection, ModulesToSave):
    """One LoHa adapter: ``ΔW = (alpha / r) * (W1a W1b) ⊙ (W2a W2b)`` on each target module."""

    r: PositiveInt = Field(default=8, description="Rank of each of the two low-rank factors.")
    alpha: int | float = Field(default=8, description="Scale numerator: the update is scaled by alpha / r.")
    rank_dropout: float = Field(
        default=0.0, ge=0.0, lt=1.0, description="Training only: drop each output row of the update with this probability."
    )
    module_dropout: float = Field(
        default=0.0, ge=0.0, le=1.0, description="Training only: skip the whole adapter for a forward with this probability."
    )
    use_effective_conv2d: bool = Field(
        default=False, description="On a Conv2d kernel above 1x1, each product as a CP decomposition (a core hada_t1/t2)."
    )
    init_weights: bool = Field(default=True, description="True: W2b = 0 (the identity); False: random, for tests.")

    @property
    def scaling(self) -> float:
        return self.alpha / self.r

"""SHiRA's hyper-parameters, with PEFT's field names and defaults.

PEFT's ``ShiraConfig`` has ``modules_to_save`` but neither ``exclude_modules`` nor the layer
filters, so this config inherits that mixin only: its ``adapter_config.json`` holds PEFT's keys.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from kernel_core.contracts.tuner import BaseTunerConfig, ModulesToSave
from kernel_core.peft.defaults import COMMON_TARGET_MODULES

#: ``target_modules`` when a config has none, by transformers ``model_type`` (facts from PEFT:
#: its LoRA table, the common one, with phi's attention projections only).
DEFAULT_TARGETS = {**COMMON_TARGET_MODULES, "phi": ("q_proj", "v_proj")}


class ShiraConfig(BaseTunerConfig, ModulesToSave):
    """One SHiRA adapter: per target module, ``r * (in + out)`` entries of the weight (as many
    values as a rank-``r`` LoRA trains, but of high rank) chosen by a random mask drawn from
    ``random_seed``; the update adds the trained values at those entries."""

    r: int = Field(default=32, gt=0, description="Trained entries per module: r * (in + out).")
    mask_type: Literal["random"] = Field(
        default="random", description="How the entries are chosen: a random permutation (PEFT's only built-in mask)."
    )
    random_seed: int | None = Field(default=None, description="Seed of the random mask; None: torch.Generator's default seed, as PEFT.")
    fan_in_fan_out: bool = Field(default=False, description="Kept for PEFT's files; SHiRA adapts nn.Linear only.")
    init_weights: bool = Field(default=True, description="Values zero (the identity); False: random normal, for tests.")

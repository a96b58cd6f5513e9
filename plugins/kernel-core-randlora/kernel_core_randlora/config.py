"""RandLoRA's hyper-parameters, with PEFT's field names and defaults.

PEFT's ``RandLoraConfig`` has ``modules_to_save`` and the layer filters but no
``exclude_modules``, so this config inherits those two mixins only: its ``adapter_config.json``
holds PEFT's keys.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from kernel_core.contracts.tuner import BaseTunerConfig, LayerSelection, ModulesToSave
from kernel_core.peft.defaults import COMMON_TARGET_MODULES

#: ``target_modules`` when a config has none, by transformers ``model_type`` (facts from PEFT:
#: RandLoRA's table is LoRA's, the common one).
DEFAULT_TARGETS = COMMON_TARGET_MODULES


class RandLoraConfig(BaseTunerConfig, LayerSelection, ModulesToSave):
    """One RandLoRA adapter: per target module, a full-rank update summed over
    ``ceil(min(in, out) / r)`` products of frozen random bases ``B_i A`` (shared by every module,
    drawn from ``projection_prng_key``), ``A`` scaled by the trained matrices ``lambda`` and
    ``gamma``, times ``randlora_alpha / r``."""

    r: int = Field(default=32, gt=0, description="Rank of each random basis; a lower r means more bases and more trained values.")
    projection_prng_key: int = Field(default=0, description="Seed the shared bases are drawn from.")
    save_projection: bool = Field(
        default=True,
        description="Save randlora_A/randlora_B in the file; False: they are drawn again from projection_prng_key on load.",
    )
    sparse: bool = Field(default=False, description="Ternary bases (-1, 0, 1 with probabilities 1/6, 2/3, 1/6).")
    very_sparse: bool = Field(default=False, description="Ternary bases with probability 1/sqrt(min dim) for -1 and for 1.")
    randlora_dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="Dropout on the adapter's input.")
    fan_in_fan_out: bool = Field(
        default=False,
        description="Weights stored (in, out); kept for PEFT's files, the layer follows the module type (Conv1D).",
    )
    randlora_alpha: int | float = Field(default=640, description="The update is scaled by randlora_alpha / r.")
    bias: Literal["none", "all", "randlora_only"] = Field(default="none", description="Which base biases train too.")
    init_weights: bool = Field(
        default=True, description="lambda zero (the identity); False: lambda random normal, for tests."
    )

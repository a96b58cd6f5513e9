"""VeRA's hyper-parameters, with PEFT's field names and defaults.

PEFT's ``VeraConfig`` has ``modules_to_save`` and the layer filters but no ``exclude_modules``,
so this config inherits those two mixins only: its ``adapter_config.json`` holds PEFT's keys.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from kernel_core.contracts.tuner import BaseTunerConfig, LayerSelection, ModulesToSave
from kernel_core.peft.defaults import COMMON_TARGET_MODULES

#: ``target_modules`` when a config has none, by transformers ``model_type`` (facts from PEFT:
#: its LoRA table, the common one, with phi's attention projections only).
DEFAULT_TARGETS = {**COMMON_TARGET_MODULES, "phi": ("q_proj", "v_proj")}


class VeraConfig(BaseTunerConfig, LayerSelection, ModulesToSave):
    """One VeRA adapter: per target module, ``lambda_b * B (lambda_d * A x)`` added to the output,
    with ``A`` and ``B`` frozen random matrices shared by every module (drawn from
    ``projection_prng_key``) and the vectors ``lambda_b``, ``lambda_d`` trained."""

    r: int = Field(default=256, gt=0, description="Rank: rows of the shared projection A (columns of B).")
    projection_prng_key: int = Field(default=0, description="Seed the shared projections are drawn from.")
    save_projection: bool = Field(
        default=True,
        description="Save vera_A/vera_B in the file; False: they are drawn again from projection_prng_key on load.",
    )
    vera_dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="Dropout on the adapter's input.")
    d_initial: float = Field(default=0.1, description="Initial value of every lambda_d entry.")
    fan_in_fan_out: bool = Field(
        default=False,
        description="Weights stored (in, out); kept for PEFT's files, the layer follows the module type (Conv1D).",
    )
    bias: Literal["none", "all", "vera_only"] = Field(default="none", description="Which base biases train too.")
    init_weights: bool = Field(
        default=True, description="lambda_b zero, lambda_d d_initial (the identity); False: lambda_b ones, lambda_d random, for tests."
    )

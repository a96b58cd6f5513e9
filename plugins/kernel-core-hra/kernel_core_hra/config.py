"""HRA's hyper-parameters, with PEFT's field names and defaults.

PEFT's ``HRAConfig`` has every target filter (``exclude_modules``, ``layers_to_transform`` /
``layers_pattern``, ``modules_to_save``), so this config is a :class:`TunerConfig`; its
per-architecture targets are PEFT's LoRA table, as for OFT and BOFT.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt

from kernel_core.contracts.tuner import TunerConfig
from kernel_core.peft.defaults import COMMON_TARGET_MODULES

#: ``target_modules`` when a config has none, by transformers ``model_type``: PEFT's HRA table is
#: its LoRA table, the common one.
DEFAULT_TARGETS = COMMON_TARGET_MODULES


class HRAConfig(TunerConfig):
    """One HRA adapter: each target's weight is multiplied, on the input side, by the product of
    ``r`` Householder reflections ``I - 2 u u^T`` (or, with ``apply_GS``, by ``I - 2 U U^T`` with
    ``U`` the Gram-Schmidt orthonormalised vectors)."""

    r: PositiveInt = Field(default=8, description="Reflections per layer; even, for the identity init.")
    apply_GS: bool = Field(default=False, description="Orthonormalise the vectors (Gram-Schmidt) into one reflection.")
    init_weights: bool = Field(
        default=True, description="True: the vectors in equal pairs (the identity; needs an even r); False: random, for tests."
    )
    bias: Literal["none", "all", "hra_only"] = Field(default="none", description="Which base biases train too.")

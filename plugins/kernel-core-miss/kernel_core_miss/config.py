"""MiSS's hyper-parameters, with PEFT's field names and defaults.

PEFT's ``MissConfig`` has every target filter (``exclude_modules``, ``layers_to_transform`` /
``layers_pattern``, ``modules_to_save``), so this config is a :class:`TunerConfig`; its
per-architecture targets are PEFT's LoRA table.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt

from kernel_core.contracts.tuner import TunerConfig
from kernel_core.peft.defaults import COMMON_TARGET_MODULES

#: ``target_modules`` when a config has none, by transformers ``model_type``: PEFT's MiSS table is
#: its LoRA table, the common one.
DEFAULT_TARGETS = COMMON_TARGET_MODULES


class MissConfig(TunerConfig):
    """One MiSS adapter. ``init_weights`` picks the variant, as in PEFT: ``True`` (balance) adds a
    learned ``(r, out)`` block to every ``r``-wide slice of the input dimension (the last slice
    cut short); ``"mini"`` the same with a ``(r, mini_r)`` block repeated along the outputs;
    ``"bat"`` turns each ``r x r`` block ``W_ij`` of the weight into ``W_ij (I + B_i) + B_i``
    with a learned ``B_i`` per output block; ``False``: balance with a random block, for tests."""

    r: PositiveInt = Field(default=64, description="Slice width along in_features (at most in_features).")
    miss_dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="Dropout on the input of the balance/mini update.")
    mini_r: PositiveInt = Field(default=1, description="With init_weights='mini': output width of the block (divides out_features).")
    init_weights: bool | Literal["bat", "mini"] = Field(
        default=True, description="The variant: True (balance), 'bat', 'mini'; False: balance, random, for tests."
    )
    bias: Literal["none", "all", "MiSS_only"] = Field(default="none", description="Which base biases train too.")

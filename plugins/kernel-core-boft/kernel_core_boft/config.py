"""BOFT's hyper-parameters, with PEFT's field names and defaults.

PEFT's ``BOFTConfig`` has every target filter, so this config is a :class:`TunerConfig`; its
per-architecture targets are PEFT's LoRA table, as for OFT.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from kernel_core.contracts.tuner import TunerConfig
from kernel_core.peft.defaults import COMMON_TARGET_MODULES

#: ``target_modules`` when a config has none, by transformers ``model_type``: PEFT's BOFT table is
#: its LoRA table, the common one.
DEFAULT_TARGETS = COMMON_TARGET_MODULES


class BOFTConfig(TunerConfig):
    """One BOFT adapter: each target's input is rotated by a product of
    ``boft_n_butterfly_factor`` permuted block-diagonal orthogonal matrices, and its output
    (before the bias) scaled per feature.

    Exactly one of ``boft_block_size`` and ``boft_block_num`` is non-zero; the other follows from
    the layer's ``in_features``, which must divide evenly (checked per layer, naming it).
    """

    boft_block_size: int = Field(default=4, ge=0, description="Block size (0: derived from boft_block_num).")
    boft_block_num: int = Field(default=0, ge=0, description="Blocks per layer (0: derived from boft_block_size).")
    boft_n_butterfly_factor: int = Field(default=1, ge=1, description="Butterfly factors; 1 is block-diagonal OFT.")
    boft_dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="While training, blocks of one factor set to the identity.")
    fan_in_fan_out: bool = Field(default=False, description="Kept for PEFT's files; BOFT wraps nn.Linear only.")
    bias: Literal["none", "all", "boft_only"] = Field(default="none", description="Which base biases train too.")
    init_weights: bool = Field(default=True, description="True: the identity and a scale of one; False: random, for tests.")

    @model_validator(mode="after")
    def _one_of_block_size_and_num(self) -> BOFTConfig:
        """As in PEFT: ``boft_block_size * boft_block_num == in_features``, so exactly one is given."""
        if (self.boft_block_size == 0) == (self.boft_block_num == 0):
            raise ValueError(
                "boft_block_size and boft_block_num: exactly one must be non-zero "
                f"(boft_block_size={self.boft_block_size}, boft_block_num={self.boft_block_num})"
            )
        return self

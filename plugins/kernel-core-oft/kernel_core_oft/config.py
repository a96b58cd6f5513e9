"""OFT's hyper-parameters, with PEFT's field names and defaults, and its per-architecture targets.

PEFT's ``OFTConfig`` has every target filter (``exclude_modules``, ``layers_to_transform`` /
``layers_pattern``, ``modules_to_save``), so this config is a :class:`TunerConfig`.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, model_validator

from kernel_core.contracts.tuner import TunerConfig
from kernel_core.peft.defaults import COMMON_TARGET_MODULES

#: The PEFT version whose OFT this matches, written as ``peft_version``: PEFT reads a file with
#: ``use_cayley_neumann`` and no version (or one before 0.18) as the older series, and warns.
PEFT_VERSION = "0.21.0"
#: The first PEFT version with today's Neumann series (and with ``peft_version`` in its files).
NEUMANN_SINCE = (0, 18)

#: ``target_modules`` when a config has none, by transformers ``model_type``: PEFT's OFT table is
#: its LoRA table, the common one.
DEFAULT_TARGETS = COMMON_TARGET_MODULES


class OFTConfig(TunerConfig):
    """One OFT adapter: each target's input is rotated by a block-diagonal orthogonal matrix,
    each block the Cayley transform of a learned skew-symmetric matrix.

    Exactly one of ``r`` (number of blocks) and ``oft_block_size`` is non-zero; the other follows
    from the layer's ``in_features`` (adjusted to a divisor, with a warning, as in PEFT).
    """

    r: int = Field(default=0, ge=0, description="Number of blocks per layer (0: derived from oft_block_size).")
    oft_block_size: int = Field(default=32, ge=0, description="Block size (0: derived from r).")
    module_dropout: float = Field(
        default=0.0, ge=0.0, lt=1.0,
        description="Kept for PEFT's files: PEFT 0.21 builds the block dropout but never applies it, nor does this.",
    )
    fan_in_fan_out: bool = Field(default=False, description="Kept for PEFT's files; OFT wraps nn.Linear only.")
    bias: Literal["none", "all", "oft_only"] = Field(default="none", description="Which base biases train too.")
    init_weights: bool = Field(default=True, description="True: the identity rotation; False: random, for tests.")
    coft: bool = Field(default=False, description="Constrained OFT: keep each block within eps of the identity.")
    eps: float = Field(default=6e-5, ge=0.0, description="COFT's radius; only used with coft.")
    block_share: bool = Field(default=False, description="One block shared by every block of a layer.")
    use_cayley_neumann: bool = Field(default=True, description="Approximate the Cayley inverse by a Neumann series.")
    num_cayley_neumann_terms: int = Field(default=5, ge=0, description="Terms of that series.")

    @model_validator(mode="after")
    def _one_of_r_and_block_size(self) -> OFTConfig:
        """As in PEFT: ``r * oft_block_size == in_features``, so exactly one is given."""
        if (self.r == 0) == (self.oft_block_size == 0):
            raise ValueError(
                f"r and oft_block_size: exactly one must be non-zero (r={self.r}, oft_block_size={self.oft_block_size})"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        """The fields, plus ``peft_version``: the Neumann series changed in PEFT 0.18, and PEFT
        tells files in today's form by that key."""
        return super().to_dict() | {"peft_version": PEFT_VERSION}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OFTConfig:
        """As the base, warning (as PEFT does) when a file using the Neumann series comes from a
        PEFT before 0.18, whose series differed: the rotations would not be the trained ones."""
        if data.get("use_cayley_neumann", cls.model_fields["use_cayley_neumann"].default):
            version = str(data.get("peft_version") or "0").partition("@")[0]
            parts = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
            if parts < NEUMANN_SINCE:
                warnings.warn(
                    f"OFT file with use_cayley_neumann from PEFT {data.get('peft_version') or 'before 0.18'}: "
                    "the Neumann series changed in PEFT 0.18, so its rotations load as today's series computes them",
                    UserWarning,
                    stacklevel=2,
                )
        return super().from_dict(data)

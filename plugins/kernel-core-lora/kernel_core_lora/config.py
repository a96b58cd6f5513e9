"""LoRA's hyper-parameters, with PEFT's field names and defaults."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from kernel_core.contracts.tuner import RankPatterns, TunerConfig
from kernel_core.peft.defaults import COMMON_TARGET_MODULES

#: ``target_modules`` when a config has none, by transformers ``model_type`` (PEFT's LoRA table,
#: which the SDK holds as the common one).
DEFAULT_TARGETS = COMMON_TARGET_MODULES
#: ``init_lora_weights`` values besides True/False: the string, or a regex it must fully match.
INITS = ("gaussian", "pissa", r"pissa_niter_\d+", "olora")


class LoraConfig(RankPatterns, TunerConfig):
    """One LoRA adapter: ``W x + (alpha / r) * B A x`` on each target module."""

    inert_peft_keys: ClassVar[Mapping[str, Any]] = {"megatron_core": "megatron.core", "qalora_group_size": 16}
    alpha_field: ClassVar[str] = "lora_alpha"

    r: int = Field(default=8, gt=0, description="Rank of the update.")
    lora_alpha: int | float = Field(default=8, description="Scale numerator: the update is scaled by alpha / r.")
    lora_dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="Dropout on the adapter's input.")
    bias: Literal["none", "all", "lora_only"] = Field(default="none", description="Which base biases train too.")
    use_rslora: bool = Field(default=False, description="Scale by alpha / sqrt(r) (rank-stabilised LoRA).")
    use_dora: bool = Field(default=False, description="Weight-decomposed LoRA: a learned magnitude per output.")
    init_lora_weights: bool | str = Field(
        default=True,
        description="True (B = 0), 'gaussian', 'pissa', 'pissa_niter_<n>', 'olora', or False (random, for tests).",
    )
    fan_in_fan_out: bool = Field(default=False, description="Weights stored (in, out), as GPT-2's Conv1D.")

    @field_validator("init_lora_weights")
    @classmethod
    def _known_init(cls, value: bool | str) -> bool | str:
        if isinstance(value, str) and not any(re.fullmatch(init, value) for init in INITS):
            raise ValueError(f"unknown init {value!r}; use True, False, or one of {', '.join(INITS)}")
        return value

    @property
    def max_rank(self) -> int:
        return max([self.r, *self.rank_pattern.values()])

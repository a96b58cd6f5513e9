"""Trainable tokens' hyper-parameters, with PEFT's field names and defaults.

PEFT's ``TrainableTokensConfig`` has no target filter beyond ``target_modules`` (no
``exclude_modules``, layer selection or ``modules_to_save``), so this config inherits none and its
``adapter_config.json`` holds PEFT's keys.
"""

from __future__ import annotations

from collections import Counter

from pydantic import Field, NonNegativeInt, field_validator

from kernel_core.contracts.tuner import BaseTunerConfig


class TrainableTokensConfig(BaseTunerConfig):
    """One trainable-tokens adapter: the rows ``token_indices`` of each target's weight (an
    embedding's, or a head's) replaced by trained values, the other rows left as they are.
    ``target_modules=None`` targets the model's input embedding, as PEFT."""

    token_indices: list[NonNegativeInt] = Field(
        default_factory=list, description="Indices of the tokens whose rows train (new tokens, or ones to retrain)."
    )
    init_weights: bool = Field(
        default=True, description="Start from the rows' current values (the identity); False: random, for tests."
    )

    @field_validator("token_indices")
    @classmethod
    def _each_token_once(cls, indices: list[int]) -> list[int]:
        """A row written twice would take either value (PEFT's index_copy leaves it undefined)."""
        repeated = sorted(index for index, count in Counter(indices).items() if count > 1)
        if repeated:
            raise ValueError(f"token indices {repeated} are listed more than once")
        return indices

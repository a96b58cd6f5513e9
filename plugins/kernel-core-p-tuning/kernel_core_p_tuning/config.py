"""P-tuning's config: PEFT's ``PromptEncoderConfig`` fields and defaults."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, NonNegativeFloat, PositiveInt

from kernel_core_sdk import PromptLearningConfig


class PTuningConfig(PromptLearningConfig):
    """``encoder_reparameterization_type``: ``MLP`` (three linear layers with ReLU between,
    hidden ``encoder_hidden_size``, default ``token_dim``; ``encoder_num_layers`` is ignored, as
    PEFT warns) or ``LSTM`` (a bidirectional LSTM of ``encoder_num_layers`` layers and
    ``encoder_dropout``, then two linear layers with ReLU between)."""

    encoder_reparameterization_type: Literal["MLP", "LSTM"] = "MLP"
    encoder_hidden_size: PositiveInt | None = None
    encoder_num_layers: PositiveInt = Field(default=2, description="LSTM layers (MLP: always 3 linear layers).")
    encoder_dropout: NonNegativeFloat = Field(default=0.0, lt=1.0)

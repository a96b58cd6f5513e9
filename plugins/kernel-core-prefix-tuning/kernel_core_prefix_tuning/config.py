"""Prefix tuning's config: PEFT's ``PrefixTuningConfig`` fields and defaults."""

from __future__ import annotations

from typing import Literal

from pydantic import PositiveInt

from kernel_core_sdk import PromptLearningConfig


class PrefixTuningConfig(PromptLearningConfig):
    """``prefix_projection``: the prefix is ``num_virtual_tokens`` embeddings of ``token_dim``
    through an MLP (``Linear(token_dim, encoder_hidden_size)``, tanh, ``Linear(...,
    num_layers * 2 * token_dim)``) rather than the keys and values themselves;
    ``encoder_hidden_size`` (default ``token_dim``); ``init_weights``: ``"zero"`` starts the
    prefix (or the MLP's last layer) at zero, None at random. ``token_dim`` and
    ``num_attention_heads`` count key/value heads (grouped-query attention), as PEFT."""

    init_weights: Literal["zero"] | None = None
    encoder_hidden_size: PositiveInt | None = None
    prefix_projection: bool = False

"""Prefix tuning: a table of per-layer keys and values, trained as it is or through a projection
MLP (PEFT's ``PrefixEncoder``, same parameter names and init order)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from kernel_core_sdk import PastKeyValuesTuner, PromptLearningConfig
from kernel_core_prefix_tuning.config import PrefixTuningConfig


class PrefixEncoder(nn.Module):
    """The prefix table, ``(num_virtual_tokens, num_layers * 2 * token_dim)``: ``embedding.weight``
    itself, or ``transform(embedding.weight)`` with the projection (never for a model loaded for
    inference, which holds the table alone, as PEFT)."""

    def __init__(self, config: PrefixTuningConfig) -> None:
        super().__init__()
        assert config.token_dim is not None and config.num_layers is not None and config.encoder_hidden_size is not None
        width = config.num_layers * 2 * config.token_dim
        self.projected = config.prefix_projection and not config.inference_mode
        if self.projected:
            self.embedding = nn.Embedding(config.num_virtual_tokens, config.token_dim)
            self.transform = nn.Sequential(
                nn.Linear(config.token_dim, config.encoder_hidden_size), nn.Tanh(), nn.Linear(config.encoder_hidden_size, width)
            )
            last = self.transform[-1]
            if config.init_weights == "zero":
                nn.init.zeros_(last.weight)
                nn.init.zeros_(last.bias)
        else:
            self.embedding = nn.Embedding(config.num_virtual_tokens, width)
            if config.init_weights == "zero":
                nn.init.zeros_(self.embedding.weight)

    def table(self) -> torch.Tensor:
        return self.transform(self.embedding.weight) if self.projected else self.embedding.weight


class PrefixTuningTuner(PastKeyValuesTuner):
    config_class = PrefixTuningConfig

    def complete_config(self, model: Any, config: PromptLearningConfig) -> PromptLearningConfig:
        """Keys and values are as wide as the key/value heads: ``num_attention_heads`` is their
        count and ``token_dim`` their width (``head_dim`` from the model's config, else
        ``hidden_size / num_attention_heads``), as PEFT sizes them."""
        text = model.model.config
        text = text.get_text_config() if hasattr(text, "get_text_config") else text
        heads = getattr(text, "num_key_value_heads", None)
        if heads is not None and config.token_dim is None and config.num_attention_heads is None:
            head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
            config = config.model_copy(update={"token_dim": head_dim * heads, "num_attention_heads": heads})
        return super().complete_config(model, config)

    def build_encoder(self, model: Any, adapter_name: str, config: PromptLearningConfig) -> nn.Module:
        assert isinstance(config, PrefixTuningConfig)
        if any(getattr(module, "gradient_checkpointing", False) for module in model.model.modules()):
            raise ValueError("prefix tuning does not work with gradient checkpointing (as in PEFT): turn it off")
        return PrefixEncoder(config)

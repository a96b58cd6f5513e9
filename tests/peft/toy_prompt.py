"""Minimal prompt-learning tuners on the API 1.4 prompt seam, registered by the tests that need
them: a table of virtual-token embeddings and a table of per-layer keys and values, each an
``nn.Embedding`` trained directly (what PEFT's prompt tuning and prefix tuning without projection
are)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

import kernel_core
from kernel_core.contracts.prompt import PastKeyValuesTuner, PromptLearningConfig, VirtualTokensTuner
from kernel_core.contracts.records import TunerSpec

kernel_core_api = "1.4"


@kernel_core.hookimpl
def kernel_core_tuners() -> list[TunerSpec]:
    return [
        TunerSpec(name="toy-tokens", description="test", implementation=f"{__name__}:ToyTokensTuner", peft_type="TOY_TOKENS"),
        TunerSpec(name="toy-prefix", description="test", implementation=f"{__name__}:ToyPrefixTuner", peft_type="TOY_PREFIX"),
    ]


class ToyPromptConfig(PromptLearningConfig):
    pass


class ToyPrefixConfig(PromptLearningConfig):
    pass


class Table(nn.Module):
    def __init__(self, rows: int, width: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(rows, width)

    def table(self) -> torch.Tensor:
        return self.embedding.weight


class ToyTokensTuner(VirtualTokensTuner):
    config_class = ToyPromptConfig

    def build_encoder(self, model: Any, adapter_name: str, config: PromptLearningConfig) -> nn.Module:
        assert config.token_dim is not None
        return Table(config.num_virtual_tokens, config.token_dim)


class ToyPrefixTuner(PastKeyValuesTuner):
    config_class = ToyPrefixConfig

    def complete_config(self, model: Any, config: PromptLearningConfig) -> PromptLearningConfig:
        text = model.model.config  # keys and values are as wide as the key/value heads
        heads = text.num_key_value_heads
        head_dim = text.hidden_size // text.num_attention_heads
        return super().complete_config(model, config.model_copy(update={"num_attention_heads": heads, "token_dim": heads * head_dim}))

    def build_encoder(self, model: Any, adapter_name: str, config: PromptLearningConfig) -> nn.Module:
        assert config.token_dim is not None and config.num_layers is not None
        return Table(config.num_virtual_tokens, config.num_layers * 2 * config.token_dim)

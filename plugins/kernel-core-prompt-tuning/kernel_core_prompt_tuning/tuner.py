"""Prompt tuning: the prompt table is the trained parameter itself (PEFT's ``PromptEmbedding``)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from kernel_core_sdk import PromptLearningConfig, VirtualTokensTuner
from kernel_core_prompt_tuning.config import PromptTuningConfig


class PromptEmbedding(nn.Module):
    """``num_virtual_tokens`` trained embeddings, ``embedding.weight`` (PEFT's layout)."""

    def __init__(self, count: int, width: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(count, width)

    def table(self) -> torch.Tensor:
        return self.embedding.weight


class PromptTuningTuner(VirtualTokensTuner):
    config_class = PromptTuningConfig

    def build_encoder(self, model: Any, adapter_name: str, config: PromptLearningConfig) -> nn.Module:
        assert isinstance(config, PromptTuningConfig) and config.token_dim is not None
        count = config.num_virtual_tokens
        encoder = PromptEmbedding(count, config.token_dim)  # drawn first, as PEFT draws it
        if not config.inference_mode and config.prompt_tuning_init != "RANDOM":  # a loaded file overwrites it
            words = model.model.get_input_embeddings()
            ids = _text_ids(config, count) if config.prompt_tuning_init == "TEXT" else torch.randint(0, words.num_embeddings, (count,))
            with torch.no_grad():
                init = words(ids.to(words.weight.device)).detach().clone().to(torch.float32)
            encoder.embedding.weight = nn.Parameter(init)
        return encoder


def _text_ids(config: PromptTuningConfig, count: int) -> torch.Tensor:
    """The init text's token ids, repeated or cut to ``count``, as PEFT."""
    from transformers import AutoTokenizer

    kwargs = {key: value for key, value in (config.tokenizer_kwargs or {}).items() if key != "trust_remote_code"}
    tokenizer = AutoTokenizer.from_pretrained(config.tokenizer_name_or_path, **kwargs)
    ids = tokenizer(config.prompt_tuning_init_text)["input_ids"]
    if not ids:
        raise ValueError(f"prompt_tuning_init_text {config.prompt_tuning_init_text!r} has no tokens")
    return torch.tensor((ids * math.ceil(count / len(ids)))[:count], dtype=torch.long)

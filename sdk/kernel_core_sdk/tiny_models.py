"""Tiny random models for fast tuner tests: a Llama (Linear layers, tied or untied embeddings), a
GPT-2 (transformers' Conv1D layers) and a convolution net (``nn.Conv2d`` layers), built from a
seed so two calls give the same weights, e.g. one for our wrapper and one for the ``peft`` oracle."""

from __future__ import annotations

from typing import Any

import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedModel


def tiny_llama(seed: int = 0, **config: Any) -> PreTrainedModel:
    """A 2-layer Llama (hidden 16, vocab 64) in eval mode; ``config`` overrides fields."""
    torch.manual_seed(seed)
    fields = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                  num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False) | config
    return LlamaForCausalLM(LlamaConfig(**fields)).eval()


def tiny_gpt2(seed: int = 0, **config: Any) -> PreTrainedModel:
    """A 2-layer GPT-2 (hidden 16, vocab 64) in eval mode; its projections are ``Conv1D``."""
    torch.manual_seed(seed)
    fields = dict(vocab_size=64, n_embd=16, n_layer=2, n_head=2, n_positions=32, bos_token_id=0, eos_token_id=0) | config
    return GPT2LMHeadModel(GPT2Config(**fields)).eval()


def token_ids(batch: int = 3, length: int = 7, vocab: int = 64, seed: int = 1) -> torch.Tensor:
    """Random input ids for the tiny models."""
    return torch.randint(vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


class TinyConvNet(torch.nn.Module):
    """3x3, grouped 3x3 and 1x1 ``Conv2d`` layers and a Linear head, the same for one seed; its
    input is :func:`images`."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv1 = torch.nn.Conv2d(4, 8, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.conv3 = torch.nn.Conv2d(8, 6, 1)
        self.head = torch.nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.conv3(torch.relu(self.conv2(torch.relu(self.conv1(x)))))
        return self.head(hidden.mean((2, 3)))


def images(batch: int = 2, seed: int = 5) -> torch.Tensor:
    """Random 4-channel 6x6 inputs for :class:`TinyConvNet`."""
    return torch.randn(batch, 4, 6, 6, generator=torch.Generator().manual_seed(seed))

"""Runs transformers on each request's new tokens alone: right only when nothing is cached."""

from __future__ import annotations

import itertools
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from kernel_core.contracts.attention import AttentionBackend, AttentionMetadata
from kernel_core.contracts.model import ModelArchitecture


class TransformersDouble(ModelArchitecture):
    def __init__(self, hf_model: torch.nn.Module) -> None:
        config = hf_model.config
        self.hf_model = hf_model
        self.num_layers = config.num_hidden_layers
        self.num_kv_heads = config.num_key_value_heads
        self.head_size = config.hidden_size // config.num_attention_heads

    @classmethod
    def from_pretrained(
        cls, folder: Path, *, attention: AttentionBackend, dtype: torch.dtype, device: torch.device
    ) -> TransformersDouble:
        return cls(AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device).eval())

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[torch.Tensor],
        metadata: AttentionMetadata,
    ) -> torch.Tensor:
        requests = list(itertools.pairwise(metadata.query_start_loc.tolist()))
        if metadata.seq_lens.tolist() != [end - start for start, end in requests]:
            raise NotImplementedError("the double cannot read context from the paged cache")
        hidden = [self.hf_model.model(input_ids[start:end][None]).last_hidden_state[0] for start, end in requests]
        return torch.cat(hidden)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.hf_model.lm_head(hidden)

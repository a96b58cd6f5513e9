"""P-tuning: a trained embedding per virtual token through an MLP or a bidirectional LSTM (PEFT's
``PromptEncoder``, same parameter names and init order); a model loaded for inference holds the
encoder's output table alone, as PEFT."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from kernel_core_sdk import PromptLearningConfig, VirtualTokensTuner
from kernel_core_p_tuning.config import PTuningConfig


class PromptEncoder(nn.Module):
    """``table()``: ``mlp_head(embedding.weight)``, or through ``lstm_head`` first, or (loaded for
    inference) ``embedding.weight`` itself."""

    def __init__(self, config: PTuningConfig) -> None:
        super().__init__()
        assert config.token_dim is not None and config.encoder_hidden_size is not None
        width, hidden = config.token_dim, config.encoder_hidden_size
        self.embedding = nn.Embedding(config.num_virtual_tokens, width)
        self.kind = None if config.inference_mode else config.encoder_reparameterization_type
        if self.kind == "LSTM":
            self.lstm_head = nn.LSTM(width, hidden, num_layers=config.encoder_num_layers, dropout=config.encoder_dropout,
                                     bidirectional=True, batch_first=True)
            self.mlp_head = nn.Sequential(nn.Linear(2 * hidden, 2 * hidden), nn.ReLU(), nn.Linear(2 * hidden, width))
        elif self.kind == "MLP":
            if config.encoder_num_layers != PTuningConfig.model_fields["encoder_num_layers"].default:
                warnings.warn("P-tuning's MLP ignores encoder_num_layers: it has 3 linear layers (as in PEFT)", UserWarning, stacklevel=2)
            self.mlp_head = nn.Sequential(
                nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, width)
            )

    def table(self) -> torch.Tensor:
        embeddings = self.embedding.weight
        if self.kind == "LSTM":
            return self.mlp_head(self.lstm_head(embeddings.unsqueeze(0))[0])[0]
        if self.kind == "MLP":
            return self.mlp_head(embeddings)
        return embeddings


class PTuningTuner(VirtualTokensTuner):
    config_class = PTuningConfig

    def build_encoder(self, model: Any, adapter_name: str, config: PromptLearningConfig) -> nn.Module:
        assert isinstance(config, PTuningConfig)
        return PromptEncoder(config)

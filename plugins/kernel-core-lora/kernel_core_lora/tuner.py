"""The LoRA method: which modules it adapts, with which layer, and which biases it trains."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn
from transformers.pytorch_utils import Conv1D

from kernel_core.contracts.tuner import BaseTunerConfig, Tuner, TunerLayer, bias_parameters
from kernel_core_lora.config import DEFAULT_TARGETS, LoraConfig
from kernel_core_lora.layers import Embedding, Linear
from kernel_core_lora.weighted import add_weighted_adapter


class LoraTuner(Tuner):
    """LoRA on ``nn.Linear``, ``nn.Embedding`` and transformers' ``Conv1D``."""

    config_class = LoraConfig
    prefix = "lora_"
    default_target_modules = DEFAULT_TARGETS
    #: ``kcore finetune`` trains every linear layer but the head unless told otherwise.
    finetune_defaults = {"target_modules": "all-linear"}

    def can_wrap(self, module: nn.Module) -> bool:
        return isinstance(module, (nn.Linear, nn.Embedding, Conv1D))

    def wrap(self, module: nn.Module, adapter_name: str, config: BaseTunerConfig) -> TunerLayer:
        if not isinstance(config, LoraConfig):
            raise TypeError(f"LoRA needs a LoraConfig, got {type(config).__name__}")
        if isinstance(module, nn.Embedding):
            return Embedding(module, adapter_name, config)
        if isinstance(module, (nn.Linear, Conv1D)):
            return Linear(module, adapter_name, config)
        raise TypeError(f"LoRA adapts Linear, Embedding and Conv1D layers, not {type(module).__name__}")

    def trained_base_parameters(self, config: BaseTunerConfig, model: nn.Module, wrapped: Sequence[str]) -> list[str]:
        """``bias="all"``: every bias of the model; ``"lora_only"``: those of wrapped layers."""
        assert isinstance(config, LoraConfig)
        return bias_parameters(model, wrapped, config.bias)

    def add_weighted_adapter(self, model: Any, adapters: Sequence[str], weights: Sequence[float], adapter_name: str, **options: Any) -> None:
        add_weighted_adapter(model, adapters, weights, adapter_name, **options)

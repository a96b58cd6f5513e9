"""The IA3 method: which modules it adapts, and the per-architecture defaults it fills."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn
from transformers.pytorch_utils import Conv1D

from kernel_core.contracts.tuner import BaseTunerConfig, SingleLayerTuner
from kernel_core.peft.defaults import by_model_type
from kernel_core_ia3.config import DEFAULT_FEEDFORWARD, DEFAULT_TARGETS, IA3Config
from kernel_core_ia3.layer import IA3Layer
from kernel_core_ia3.weighted import add_weighted_adapter


class IA3Tuner(SingleLayerTuner):
    """IA3 on ``nn.Linear`` and transformers' ``Conv1D`` (GPT-2), as PEFT has it for LLMs."""

    config_class = IA3Config
    prefix = "ia3_"
    default_target_modules = DEFAULT_TARGETS
    layer_class = IA3Layer
    module_types = (nn.Linear, Conv1D)

    def before_inject(self, model: Any, adapter_name: str, config: BaseTunerConfig) -> BaseTunerConfig:
        """``feedforward_modules=None`` means the model type's feed-forward modules, as in PEFT."""
        assert isinstance(config, IA3Config)
        if config.feedforward_modules is not None:
            return config
        modules = by_model_type(DEFAULT_FEEDFORWARD, model, method="ia3", field="feedforward_modules")
        return config.model_copy(update={"feedforward_modules": list(modules)})

    def add_weighted_adapter(self, model: Any, adapters: Sequence[str], weights: Sequence[float], adapter_name: str, **options: Any) -> None:
        """The weighted sum of the adapters' vectors, over the union of their targets (IA3 has no options)."""
        if options:
            raise TypeError(f"IA3's add_weighted_adapter takes no options, got {sorted(options)}")
        add_weighted_adapter(model, adapters, weights, adapter_name)

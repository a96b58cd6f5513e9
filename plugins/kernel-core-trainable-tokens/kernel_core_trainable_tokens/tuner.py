"""The trainable-tokens method: the model's input embedding by default, and every module whose
weight is tied to it (a language model's head) adapted with it, as PEFT does."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from kernel_core.contracts.tuner import BaseTunerConfig, SingleLayerTuner
from kernel_core_trainable_tokens.config import TrainableTokensConfig
from kernel_core_trainable_tokens.layer import TrainableTokensLayer


class TrainableTokensTuner(SingleLayerTuner):
    """Trainable tokens on ``nn.Embedding`` and on ``nn.Linear`` (a head, targeted or tied)."""

    config_class = TrainableTokensConfig
    prefix = "trainable_tokens_"
    layer_class = TrainableTokensLayer
    module_types = (nn.Embedding, nn.Linear)

    def default_targets(self, model: nn.Module) -> str:
        """The input embedding's name (``model.embed_tokens``, GPT-2's ``transformer.wte``), or
        ``embed_tokens`` for a model that does not say, as PEFT (saved as that string)."""
        embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        return next((name for name, module in model.named_modules() if module is embeddings), "embed_tokens")

    def after_inject(self, model: Any, adapter_name: str, config: BaseTunerConfig, wrapped: Sequence[str]) -> None:
        """When the input embedding is adapted, every other module holding its very weight (a
        tied head) gets a layer tied to the embedding's, so both use the same trained rows, as
        PEFT does; a layer of its own there (the head targeted too) is replaced by a tied one."""
        transformers_model = model.get_base_model()
        source = transformers_model.get_input_embeddings() if hasattr(transformers_model, "get_input_embeddings") else None
        if not isinstance(source, TrainableTokensLayer):
            return
        weight = source.base_layer.weight
        for name, module in list(transformers_model.named_modules()):
            if isinstance(module, TrainableTokensLayer):
                base = module.base_layer
                if module is source or module.source is source or base.weight is not weight:
                    continue
            elif isinstance(module, (nn.Embedding, nn.Linear)) and module.weight is weight and name.rpartition(".")[2] != "base_layer":
                base = module
            else:
                continue
            parent, _, child = name.rpartition(".")
            setattr(transformers_model.get_submodule(parent), child, TrainableTokensLayer.tied(base, source).train(base.training))

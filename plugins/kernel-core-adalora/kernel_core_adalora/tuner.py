"""The AdaLoRA method: SVD-form layers, the orthogonality term added to the loss, the rank
allocation after each optimizer step, and files holding only the kept triplets (as PEFT's)."""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from kernel_core.contracts.tuner import SingleLayerTuner
from kernel_core_adalora.allocator import Layers, RankAllocator
from kernel_core_adalora.config import DEFAULT_TARGETS, RANK_KEY, AdaLoraConfig
from kernel_core_adalora.layer import SVDLayer

#: Per model, the allocator of each training adapter: statistics, not saved with the adapter.
_ALLOCATORS: weakref.WeakKeyDictionary[Any, dict[str, RankAllocator]] = weakref.WeakKeyDictionary()


def svd_layers(model: nn.Module, adapter_name: str) -> Layers:
    """(module name in the transformers model, layer) of every layer holding ``adapter_name``;
    in a mixed model a layer under another method's has its module's name, without the
    ``base_layer`` segments, which is the name rank patterns and files use."""
    root = model.get_base_model() if hasattr(model, "get_base_model") else model
    return [(_module_name(name), module) for name, module in root.named_modules() if isinstance(module, SVDLayer) and adapter_name in module.lora_A]


def _module_name(path: str) -> str:
    while path.endswith(".base_layer"):
        path = path.removesuffix(".base_layer")
    return path


class AdaLoraTuner(SingleLayerTuner):
    """AdaLoRA on ``nn.Linear`` and transformers' ``Conv1D`` (GPT-2), as PEFT has it for LLMs."""

    config_class = AdaLoraConfig
    prefix = "lora_"
    default_target_modules = DEFAULT_TARGETS
    layer_class = SVDLayer
    module_types = (nn.Linear, Conv1D)

    def training_loss(self, model: Any, adapter_name: str) -> torch.Tensor | None:
        """``orth_reg_weight`` times the mean of ``||A A^T - I||_F`` and ``||B^T B - I||_F`` over
        the adapter's layers (PEFT adds it whenever the forward computes a loss)."""
        config = model.peft_config[adapter_name]
        if config.inference_mode or config.orth_reg_weight == 0:
            return None
        terms = [term for _, layer in svd_layers(model, adapter_name) for term in layer.orthogonality(adapter_name)]
        if not terms:
            return None
        total: Any = 0
        for term in terms:  # PEFT's order of summation, module by module, A then B
            total = total + term
        return config.orth_reg_weight * (total / len(terms))

    def on_optimizer_step(self, model: Any, adapter_name: str, step: int) -> None:
        """PEFT's ``update_and_allocate(step)``: update the importance scores, mask to the
        scheduled budget, and record the rank pattern in the adapter's config."""
        config = model.peft_config[adapter_name]
        layers = svd_layers(model, adapter_name)
        allocators = _ALLOCATORS.setdefault(model, {})
        allocator = allocators.get(adapter_name)
        if allocator is None:
            allocator = allocators[adapter_name] = RankAllocator(layers, adapter_name)
        pattern = allocator.step(layers, config, step)
        if pattern is not None:
            model.peft_config[adapter_name] = config.model_copy(update={"rank_pattern": pattern})

    def adapter_file_tensors(self, model: Any, adapter_name: str, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Only the triplets the rank pattern keeps, as PEFT saves them (a module pruned to
        nothing has empty tensors); ``ranknum`` is not saved, being ``init_r``."""
        pattern = model.peft_config[adapter_name].rank_pattern or {}
        saved = dict(tensors)
        for module, layer in svd_layers(model, adapter_name):
            kept = pattern.get(RANK_KEY.format(module=module))
            if kept is None or len(kept) != layer.lora_E[adapter_name].shape[0]:
                continue  # already the pattern's size (loaded from a file), or not pruned
            index = torch.tensor([i for i, keep in enumerate(kept) if keep], dtype=torch.long)
            for name, dim in (("lora_A", 0), ("lora_E", 0), ("lora_B", 1)):
                key = f"base_model.model.{module}.{name}"
                saved[key] = saved[key].index_select(dim, index.to(saved[key].device)).contiguous()
        return saved

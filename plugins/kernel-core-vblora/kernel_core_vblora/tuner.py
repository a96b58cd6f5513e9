"""The VB-LoRA method: which modules it adapts, the vector bank it keeps once per model, and the
compact top-k form of its files."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from kernel_core.contracts.tuner import BaseTunerConfig, SingleLayerTuner, bias_parameters
from kernel_core_vblora.config import DEFAULT_TARGETS, VBLoRAConfig
from kernel_core_vblora.layer import SharedBank, VBLoRALayer

#: The per-layer logits containers, whose file form ``save_only_topk_weights`` changes.
LOGITS = ("vblora_logits_A", "vblora_logits_B")
TOPK_INDICES, TOPK_WEIGHTS = "_topk_indices", "_topk_weights"


class VBLoRATuner(SingleLayerTuner):
    """VB-LoRA on ``nn.Linear`` and transformers' ``Conv1D`` (GPT-2), as PEFT has it.

    ``prefix`` is ``"vblora_"`` so that the per-layer logits and the model-level bank
    (``base_model.vblora_vector_bank``) both follow the state-dict rule.
    """

    config_class = VBLoRAConfig
    prefix = "vblora_"
    default_target_modules = DEFAULT_TARGETS
    layer_class = VBLoRALayer
    module_types = (nn.Linear, Conv1D)

    def after_inject(self, model: Any, adapter_name: str, config: BaseTunerConfig, wrapped: Sequence[str]) -> None:
        """Keep the last wrapped layer's bank as the model's (trainable, saved as
        ``base_model.vblora_vector_bank``), as PEFT keeps the last one drawn, and bind every
        layer to it."""
        base = model.base_model
        if not hasattr(base, "vblora_vector_bank"):
            base.vblora_vector_bank = nn.ParameterDict()
        layers = [model.get_base_model().get_submodule(name) for name in wrapped]
        layers = [layer for layer in layers if isinstance(layer, VBLoRALayer)]
        last = layers[-1]
        bank = last.own_banks[adapter_name].to(device=last.base_layer.weight.device, dtype=last.adapter_dtype)
        base.vblora_vector_bank[adapter_name] = nn.Parameter(bank)
        shared = SharedBank(base.vblora_vector_bank)
        for layer in layers:
            layer.bind(shared)

    def trained_base_parameters(self, config: BaseTunerConfig, model: nn.Module, wrapped: Sequence[str]) -> list[str]:
        """``bias="all"``: every bias of the model; ``"vblora_only"``: those of wrapped layers."""
        assert isinstance(config, VBLoRAConfig)
        return bias_parameters(model, wrapped, config.bias)

    def adapter_file_tensors(self, model: Any, adapter_name: str, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """With ``save_only_topk_weights``, each logits tensor becomes its top-k indices (in the
        smallest integer type that holds ``num_vectors``) and the softmax of its top-k values
        less the last one, which sums to one with them, as PEFT writes them."""
        config = model.peft_config[adapter_name]
        assert isinstance(config, VBLoRAConfig)
        if not config.save_only_topk_weights:
            return dict(tensors)
        index_dtype = next(dtype for dtype, bound in _INDEX_DTYPES if config.num_vectors < bound)
        written = {}
        for key, value in tensors.items():
            if key.rsplit(".", 1)[-1] in LOGITS:
                values, indices = value.topk(config.topk)
                written[key + TOPK_INDICES] = indices.to(index_dtype)
                written[key + TOPK_WEIGHTS] = torch.softmax(values, dim=-1)[:, :, :-1].contiguous()
            else:
                written[key] = value
        return written

    def adapter_tensors_from_file(self, model: Any, adapter_name: str, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Top-k indices and weights back to logits, as PEFT does: the last weight is one less
        the others, the logits are their logarithms at the indices and -inf elsewhere (so the
        adapter computes as saved but cannot train)."""
        config = model.peft_config[adapter_name]
        assert isinstance(config, VBLoRAConfig)
        loaded = dict(tensors)
        for key in [key for key in tensors if key.endswith(TOPK_INDICES)]:
            logits_key = key.removesuffix(TOPK_INDICES)
            weights_key = logits_key + TOPK_WEIGHTS
            if weights_key not in tensors:
                raise ValueError(f"{key} has no {weights_key} beside it")
            indices, weights = loaded.pop(key).long(), loaded.pop(weights_key)
            if indices.shape[-1] != config.topk or weights.shape != (*indices.shape[:-1], config.topk - 1):
                raise ValueError(
                    f"{key} {tuple(indices.shape)} and {weights_key} {tuple(weights.shape)} do not hold topk={config.topk} "
                    "entries per slice"
                )
            outside = indices[(indices < 0) | (indices >= config.num_vectors)]
            if outside.numel():
                raise ValueError(f"{key}: index {outside[0].item()} outside the bank of num_vectors={config.num_vectors}")
            weights = torch.cat([weights, 1 - weights.sum(-1, keepdim=True)], dim=-1)
            logits = torch.full((*indices.shape[:-1], config.num_vectors), float("-inf"), dtype=weights.dtype)
            loaded[logits_key] = logits.scatter(-1, indices, torch.log(weights))
        return loaded


#: The integer type of saved top-k indices: the first whose bound exceeds ``num_vectors`` (PEFT's choice).
_INDEX_DTYPES = ((torch.uint8, 2**8), (torch.int16, 2**15), (torch.int32, 2**31), (torch.int64, float("inf")))

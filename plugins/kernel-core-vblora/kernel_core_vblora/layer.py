"""The VB-LoRA layer: per adapter, logits that pick and weigh, for each ``vector_length`` slice
of the factors ``A`` (r, in) and ``B`` (out, r), the ``topk`` vectors of a bank shared by every
layer; the update ``B A`` is added to the wrapped layer's output (``B (A dropout(x))``, in PEFT's
order of operations) or folded into its weight.

The bank is the model's (``base_model.vblora_vector_bank``, bound by :meth:`VBLoRALayer.bind`
once every target is wrapped). As in PEFT each layer draws a bank when an adapter is added, then
its logits, from torch's global generator, and the model keeps the last layer's; so one seed gives
PEFT's initial adapter. A layer wrapped on its own, outside a model, uses the bank it drew.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from kernel_core.contracts.delta_weight import DeltaWeightLayer
from kernel_core.contracts.tuner import BaseTunerConfig
from kernel_core_vblora.config import VBLoRAConfig


class SharedBank:
    """The model's bank (an ``nn.ParameterDict`` keyed by adapter) as a layer holds it: not a
    module, so that the layer does not own it and it is saved once, on ``base_model``."""

    def __init__(self, vectors: nn.ParameterDict) -> None:
        self.vectors = vectors


class VBLoRALayer(DeltaWeightLayer):
    """VB-LoRA around an ``nn.Linear`` or a ``Conv1D`` (weight ``(in, out)``)."""

    def __init__(self, base_layer: nn.Linear | Conv1D, adapter_name: str, config: VBLoRAConfig) -> None:
        super().__init__(base_layer)
        self.vblora_logits_A = nn.ParameterDict()
        self.vblora_logits_B = nn.ParameterDict()
        self.vblora_dropout = nn.ModuleDict()
        self.configs: dict[str, VBLoRAConfig] = {}
        self.shared: SharedBank | None = None
        self.own_banks: dict[str, torch.Tensor] = {}  # drawn by update_layer; dropped once bound to the model's
        self.update_layer(adapter_name, config)
        self.set_adapter([adapter_name])

    def bind(self, shared: SharedBank) -> None:
        """Use the model's bank for every adapter it holds."""
        self.shared = shared
        for name in list(self.own_banks):
            if name in shared.vectors:
                del self.own_banks[name]

    def update_layer(self, adapter_name: str, config: BaseTunerConfig) -> None:
        if not isinstance(config, VBLoRAConfig):
            raise TypeError(f"VB-LoRA needs a VBLoRAConfig, got {type(config).__name__}")
        if adapter_name in self.merged_adapters:
            raise ValueError(f"adapter {adapter_name!r} is merged; unmerge before re-initialising it")
        length = config.vector_length
        for side, features in (("in", self.in_features), ("out", self.out_features)):
            if features % length:
                module = config.module_name or type(self.base_layer).__name__
                raise ValueError(
                    f"VB-LoRA cannot adapt {module!r}: its {side}_features {features} is not a multiple of vector_length {length}"
                )
        bound = config.init_vector_bank_bound
        self.own_banks[adapter_name] = torch.empty(config.num_vectors, length).uniform_(-bound, bound)
        weight = self.base_layer.weight
        for container, shape in (
            (self.vblora_logits_A, (config.r, self.in_features // length, config.num_vectors)),
            (self.vblora_logits_B, (self.out_features // length, config.r, config.num_vectors)),
        ):
            logits = torch.empty(shape).normal_(0.0, config.init_logits_std)
            container[adapter_name] = nn.Parameter(logits.to(device=weight.device, dtype=self.adapter_dtype))
        self.vblora_dropout[adapter_name] = nn.Dropout(config.vblora_dropout) if config.vblora_dropout > 0 else nn.Identity()
        self.configs[adapter_name] = config
        self.set_adapter(self.active_adapters)  # a new adapter trains only once it is set active

    def delete_adapter(self, adapter_name: str) -> None:
        super().delete_adapter(adapter_name)
        self.configs.pop(adapter_name, None)
        self.own_banks.pop(adapter_name, None)

    def factors(self, adapter_name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``A`` (r, in) and ``B`` (out, r): each slice the softmax-weighted sum of the bank
        vectors its top-k logits pick."""
        logits_A, logits_B = self.vblora_logits_A[adapter_name], self.vblora_logits_B[adapter_name]
        if self.training and logits_A[0, 0].isinf().any():
            raise RuntimeError(
                f"VB-LoRA adapter {adapter_name!r} holds only its top-k logits (loaded from a save_only_topk_weights "
                "file): it can merge and infer, not train"
            )
        bank = self._bank(adapter_name).to(logits_A)
        topk = self.configs[adapter_name].topk
        A = _mix(logits_A, bank, topk).reshape(logits_A.shape[0], -1)
        B = _mix(logits_B, bank, topk).transpose(1, 2).reshape(-1, logits_B.shape[1])
        return A, B

    def delta_weight(self, adapter_name: str, *, training: bool = False) -> torch.Tensor:
        A, B = self.factors(adapter_name)
        return B @ A

    def adapter_output(self, adapter_name: str, x: torch.Tensor, result: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """``result + B (A dropout(x))``, in the adapter's dtype, cast back (as PEFT)."""
        A, B = self.factors(adapter_name)
        hidden = self.vblora_dropout[adapter_name](x.to(A.dtype))
        return (result + F.linear(F.linear(hidden, A), B)).to(result.dtype)

    def _bank(self, adapter_name: str) -> torch.Tensor:
        if self.shared is not None and adapter_name in self.shared.vectors:
            return self.shared.vectors[adapter_name]
        return self.own_banks[adapter_name]


def _mix(logits: torch.Tensor, bank: torch.Tensor, topk: int) -> torch.Tensor:
    """Per row of ``logits`` (..., num_vectors): the softmax of its top-k entries weighing the bank vectors they index."""
    values, indices = logits.topk(topk, dim=-1)
    return (F.softmax(values, dim=-1).unsqueeze(-1) * bank[indices]).sum(-2)

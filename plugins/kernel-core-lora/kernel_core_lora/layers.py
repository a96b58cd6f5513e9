"""LoRA layers: ``W x + s * B A x`` with ``s = alpha / r`` (or ``alpha / sqrt(r)`` for rsLoRA).

Both layer types hold adapters by name in PEFT's containers (``lora_A``/``lora_B`` modules for
Linear, ``lora_embedding_A``/``lora_embedding_B`` parameters for Embedding,
``lora_magnitude_vector`` for DoRA), so state-dict names match PEFT's. In both, ``A`` is
``(r, X)`` and ``B`` is ``(Y, r)``, and ``B @ A`` is the update in ``(Y, X)`` layout.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from kernel_core.contracts.tuner import TunerLayer
from kernel_core_lora.config import LoraConfig
from kernel_core_lora.init import initialise_linear

#: Adapter weights stay in float32 over a half-precision base, as PEFT does, so training is stable.
HALF = (torch.float16, torch.bfloat16)


class LoraLayer(TunerLayer):
    """What LoRA's layer types share: per-adapter rank, scaling, dropout, DoRA magnitude, merge."""

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer.requires_grad_(False))
        self.r: dict[str, int] = {}
        self.lora_alpha: dict[str, float] = {}
        self.scaling: dict[str, float] = {}
        self.use_dora: dict[str, bool] = {}
        self.lora_dropout = nn.ModuleDict()
        self.lora_magnitude_vector = nn.ParameterDict()
        #: A copy of the base weight (``(Y, X)``) from before any merge, kept while adapters of a
        #: layer holding DoRA ones are merged: DoRA's norm is of the unmerged weight, and unmerge
        #: restores it exactly. Layers without DoRA keep no copy (unmerge subtracts, as peft).
        self._unmerged: torch.Tensor | None = None

    @property
    def adapter_names(self) -> list[str]:
        return list(self.r)

    @property
    def base_weight(self) -> torch.Tensor:
        return self.base_layer.weight

    def adapter_dtype(self) -> torch.dtype:
        dtype = self.base_weight.dtype
        return torch.float32 if dtype in HALF else dtype

    def update_layer(self, adapter_name: str, config: LoraConfig) -> None:
        self.r[adapter_name] = config.r
        self.lora_alpha[adapter_name] = config.lora_alpha
        root = math.sqrt(config.r) if config.use_rslora else config.r
        self.scaling[adapter_name] = config.lora_alpha / root
        self.lora_dropout[adapter_name] = nn.Dropout(config.lora_dropout) if config.lora_dropout > 0 else nn.Identity()
        self.create_adapter(adapter_name, config)
        self.use_dora[adapter_name] = config.use_dora
        if config.use_dora:
            with torch.no_grad():
                norm = self.weight_norm(self.weight_yx(), self.lora_weight(adapter_name) * self.scaling[adapter_name])
            self.lora_magnitude_vector[adapter_name] = nn.Parameter(norm.to(self.adapter_dtype()))
        self.set_adapter(self.active_adapters or [adapter_name])

    @abstractmethod
    def create_adapter(self, adapter_name: str, config: LoraConfig) -> None:
        """Make and initialise ``A`` and ``B`` for one adapter."""

    @abstractmethod
    def factors(self, adapter_name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The adapter's ``A`` (r, X) and ``B`` (Y, r) parameters."""

    @abstractmethod
    def weight_yx(self) -> torch.Tensor:
        """The base weight as a ``(Y, X)`` view (writes go to the base weight)."""

    def lora_weight(self, adapter_name: str) -> torch.Tensor:
        a, b = self.factors(adapter_name)
        return b @ a

    @staticmethod
    def weight_norm(weight_yx: torch.Tensor, delta_yx: torch.Tensor) -> torch.Tensor:
        """DoRA's column norm: of ``W + delta`` over X, one value per output."""
        return torch.linalg.norm(weight_yx + delta_yx, dim=1)

    def delete_adapter(self, adapter_name: str) -> None:
        if adapter_name in self.merged_adapters:
            raise ValueError(f"adapter {adapter_name!r} is merged; unmerge before deleting it")
        for container in self.children():
            if isinstance(container, nn.ModuleDict) and adapter_name in container:
                del container[adapter_name]
        for container in self.parameter_containers():
            if adapter_name in container:
                del container[adapter_name]
        for table in (self.r, self.lora_alpha, self.scaling, self.use_dora):
            table.pop(adapter_name, None)
        self.active_adapters = [name for name in self.active_adapters if name != adapter_name]

    def parameter_containers(self) -> list[nn.ParameterDict]:
        return [module for module in self.children() if isinstance(module, nn.ParameterDict)]

    def merge(self, adapter_names: Sequence[str] | None = None) -> None:
        """Fold adapters into the base weight in turn. A DoRA adapter scales the weight it is
        merged into by ``m / ||W + s B A||`` with ``W`` the *unmerged* base weight, as forward
        computes it (and peft >= 0.21.2 merges), whatever was merged before it. A layer holding
        a DoRA adapter copies its weight on the first merge, so that unmerge restores it exactly."""
        names = [name for name in adapter_names or self.active_adapters if name in self.r]
        names = [name for name in dict.fromkeys(names) if name not in self.merged_adapters]
        if names and not self.merged_adapters and any(self.use_dora.values()):
            self._unmerged_weight()
        for name in names:
            with torch.no_grad():
                weight = self.weight_yx()
                delta = (self.lora_weight(name) * self.scaling[name]).to(weight.dtype)
                if self.use_dora[name]:
                    norm = self.weight_norm(self._unmerged_weight(), delta)
                    factor = (self.lora_magnitude_vector[name] / norm).to(weight.dtype).unsqueeze(1)
                    weight.copy_(factor * (weight + delta))
                else:
                    weight.add_(delta)
            self.merged_adapters.append(name)

    def _unmerged_weight(self) -> torch.Tensor:
        """The base weight without any merged adapter, copied on the first merge of a layer with
        DoRA adapters. Should a DoRA adapter be added while plain ones are merged, those are
        taken out first (within rounding), the weight copied, and they are merged again."""
        if self._unmerged is None:
            merged = list(self.merged_adapters)
            self.unmerge()
            self._unmerged = self.weight_yx().detach().clone()
            if merged:  # merge([]) would merge the active adapters
                self.merge(merged)
        return self._unmerged

    def unmerge(self) -> None:
        with torch.no_grad():
            if self._unmerged is not None:  # exactly the weight from before the first merge
                self.weight_yx().copy_(self._unmerged)
                self._unmerged = None
                self.merged_adapters.clear()
            while self.merged_adapters:  # plain LoRA only
                name = self.merged_adapters.pop()
                weight = self.weight_yx()
                weight.sub_((self.lora_weight(name) * self.scaling[name]).to(weight.dtype))


class Linear(LoraLayer):
    """LoRA on ``nn.Linear`` and on transformers' ``Conv1D`` (weight stored ``(in, out)``)."""

    def __init__(self, base_layer: nn.Linear | Conv1D, adapter_name: str, config: LoraConfig) -> None:
        super().__init__(base_layer)
        self.fan_in_fan_out = isinstance(base_layer, Conv1D)
        self.out_features, self.in_features = self.weight_yx().shape
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        self.update_layer(adapter_name, config)

    def weight_yx(self) -> torch.Tensor:
        return self.base_weight.T if self.fan_in_fan_out else self.base_weight

    def create_adapter(self, adapter_name: str, config: LoraConfig) -> None:
        options = {"bias": False, "dtype": self.adapter_dtype(), "device": self.base_weight.device}
        self.lora_A[adapter_name] = nn.Linear(self.in_features, config.r, **options)
        self.lora_B[adapter_name] = nn.Linear(config.r, self.out_features, **options)
        initialise_linear(self, adapter_name, config.init_lora_weights)

    def factors(self, adapter_name: str) -> tuple[torch.Tensor, torch.Tensor]:
        return self.lora_A[adapter_name].weight, self.lora_B[adapter_name].weight

    def adapter_output(self, adapter_name: str, x: torch.Tensor, result: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        lora_a, lora_b = self.lora_A[adapter_name], self.lora_B[adapter_name]
        dropout, scaling = self.lora_dropout[adapter_name], self.scaling[adapter_name]
        x = x.to(lora_a.weight.dtype)
        if not self.use_dora[adapter_name]:
            # Scale the narrow [.., r] activation rather than the wide output, and add in place
            # (the base GEMM's output is not saved for backward): two fewer output-sized passes.
            return _add_into(result, lora_b(lora_a(dropout(x)) * scaling))
        return _add_into(result, self._dora_update(adapter_name, x, result))

    def _dora_update(self, adapter_name: str, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        """DoRA: ``m / ||W + s B A|| * (W x + s B A x) - W x``, the norm treated as a constant."""
        lora_a, lora_b = self.lora_A[adapter_name], self.lora_B[adapter_name]
        dropout, scaling = self.lora_dropout[adapter_name], self.scaling[adapter_name]
        weight = self.weight_yx().to(x.dtype)
        if self.training and not isinstance(dropout, nn.Identity):
            x = dropout(x)
            base = F.linear(x, weight)
        else:
            bias = getattr(self.base_layer, "bias", None)
            base = result.to(x.dtype) - (bias.to(x.dtype) if bias is not None else 0)
        norm = self.weight_norm(weight, self.lora_weight(adapter_name).detach() * scaling).detach()
        scale = self.lora_magnitude_vector[adapter_name] / norm
        return (scale - 1) * base + scale * lora_b(lora_a(x)) * scaling


class Embedding(LoraLayer):
    """LoRA on ``nn.Embedding``: a low-rank update to the embedding table, looked up like it."""

    def __init__(self, base_layer: nn.Embedding, adapter_name: str, config: LoraConfig) -> None:
        super().__init__(base_layer)
        self.lora_embedding_A = nn.ParameterDict()
        self.lora_embedding_B = nn.ParameterDict()
        self.update_layer(adapter_name, config)

    def weight_yx(self) -> torch.Tensor:
        return self.base_weight.T

    def create_adapter(self, adapter_name: str, config: LoraConfig) -> None:
        if config.use_dora:
            raise ValueError("DoRA is implemented for Linear and Conv1D layers, not Embedding; leave embeddings out of target_modules")
        if isinstance(config.init_lora_weights, str) and config.init_lora_weights != "gaussian":
            raise ValueError(f"init_lora_weights={config.init_lora_weights!r} applies to Linear layers, not Embedding")
        base = self.base_layer
        options = {"dtype": self.adapter_dtype(), "device": self.base_weight.device}
        lora_a = torch.randn(config.r, base.num_embeddings, **options)
        lora_b = torch.randn(base.embedding_dim, config.r, **options)
        if config.init_lora_weights is not False:  # A = 0 and B normal: the update starts at zero
            lora_a.zero_()
        self.lora_embedding_A[adapter_name] = nn.Parameter(lora_a)
        self.lora_embedding_B[adapter_name] = nn.Parameter(lora_b)

    def factors(self, adapter_name: str) -> tuple[torch.Tensor, torch.Tensor]:
        return self.lora_embedding_A[adapter_name], self.lora_embedding_B[adapter_name]

    def adapter_output(self, adapter_name: str, x: torch.Tensor, result: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        lora_a, lora_b = self.factors(adapter_name)
        base = self.base_layer
        looked_up = F.embedding(x, lora_a.T, base.padding_idx, base.max_norm, base.norm_type, base.scale_grad_by_freq, base.sparse)
        return _add_into(result, (looked_up * self.scaling[adapter_name]) @ lora_b.T)


def _add_into(result: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
    """``result + update`` in ``result``'s dtype, reusing ``result``'s memory when it is safe:
    it is a fresh output that autograd did not save (a base layer's GEMM or lookup)."""
    update = update.to(result.dtype)
    if result.requires_grad and result.grad_fn is None:  # a leaf: in place would be refused
        return result + update
    return result.add_(update)

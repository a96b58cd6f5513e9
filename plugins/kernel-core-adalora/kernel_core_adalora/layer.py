"""The AdaLoRA layer: per adapter, an SVD-form update ``B diag(E) A`` (``lora_B`` (out, r),
``lora_E`` (r, 1), ``lora_A`` (r, in)) scaled by ``lora_alpha / (ranknum + 1e-5)``.

``ranknum`` is the adapter's ``init_r`` (PEFT keeps it when a rank pattern shrinks a module and
does not save it), so pruning a triplet never rescales the others. Shapes follow PEFT's files
for ``nn.Linear`` and transformers' ``Conv1D`` alike; the Conv1D weight is (in, out).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from kernel_core.contracts.tuner import BaseTunerConfig, TunerLayer
from kernel_core_adalora.config import AdaLoraConfig

#: PEFT's guard against a zero ``ranknum``.
RANKNUM_EPS = 1e-5


class SVDLayer(TunerLayer):
    """AdaLoRA around an ``nn.Linear`` or a ``Conv1D``."""

    def __init__(self, base_layer: nn.Linear | Conv1D, adapter_name: str, config: AdaLoraConfig) -> None:
        super().__init__(base_layer.requires_grad_(False))
        self.fan_in_fan_out = isinstance(base_layer, Conv1D)
        weight = base_layer.weight
        self.in_features, self.out_features = weight.shape if self.fan_in_fan_out else weight.shape[::-1]
        self.lora_A = nn.ParameterDict()
        self.lora_B = nn.ParameterDict()
        self.lora_E = nn.ParameterDict()
        self.lora_dropout = nn.ModuleDict()
        self.ranknum: dict[str, float] = {}
        self.scaling: dict[str, float] = {}
        self.update_layer(adapter_name, config)
        self.set_adapter([adapter_name])

    @property
    def adapter_names(self) -> list[str]:
        return list(self.lora_A)

    def update_layer(self, adapter_name: str, config: BaseTunerConfig) -> None:
        if not isinstance(config, AdaLoraConfig):
            raise TypeError(f"AdaLoRA needs an AdaLoraConfig, got {type(config).__name__}")
        if adapter_name in self.merged_adapters:
            raise ValueError(f"adapter {adapter_name!r} is merged; unmerge before re-initialising it")
        rank, weight = config.rank, self.base_layer.weight
        factory = {"dtype": weight.dtype, "device": weight.device}
        A, E, B = torch.randn(rank, self.in_features, **factory), torch.randn(rank, 1, **factory), torch.randn(self.out_features, rank, **factory)
        if config.init_lora_weights:  # as PEFT: E zero (the identity), A and B small
            E.zero_()
            A.normal_(0.0, 0.02)
            B.normal_(0.0, 0.02)
        self.lora_A[adapter_name], self.lora_E[adapter_name], self.lora_B[adapter_name] = nn.Parameter(A), nn.Parameter(E), nn.Parameter(B)
        self.lora_dropout[adapter_name] = nn.Dropout(config.lora_dropout) if config.lora_dropout > 0 else nn.Identity()
        self.ranknum[adapter_name] = float(config.init_r if rank else 0)  # a module pruned to nothing: as PEFT
        self.scaling[adapter_name] = float(config.lora_alpha) if config.lora_alpha > 0 else float(rank)
        self.set_adapter(self.active_adapters)  # a new adapter trains only once it is set active

    def delete_adapter(self, adapter_name: str) -> None:
        if adapter_name in self.merged_adapters:
            raise ValueError(f"adapter {adapter_name!r} is merged; unmerge before deleting it")
        if adapter_name in self.lora_A:
            for container in (self.lora_A, self.lora_B, self.lora_E, self.lora_dropout):
                del container[adapter_name]
            del self.ranknum[adapter_name], self.scaling[adapter_name]
        self.active_adapters = [name for name in self.active_adapters if name != adapter_name]

    def adapter_output(self, adapter_name: str, x: torch.Tensor, result: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        A, E, B = self.lora_A[adapter_name], self.lora_E[adapter_name], self.lora_B[adapter_name]
        x = self.lora_dropout[adapter_name](x.to(A.dtype))
        # PEFT's order: (x (A*E)^T B^T) * scaling / (ranknum + eps)
        update = (x @ (A * E).T @ B.T) * self.scaling[adapter_name] / (self.ranknum[adapter_name] + RANKNUM_EPS)
        return result + update.to(result.dtype)

    def delta_weight(self, adapter_name: str) -> torch.Tensor:
        """The adapter's update in the base weight's layout."""
        A, E, B = self.lora_A[adapter_name], self.lora_E[adapter_name], self.lora_B[adapter_name]
        delta = B @ (A * E)
        delta = delta.T if self.fan_in_fan_out else delta
        return delta * self.scaling[adapter_name] / (self.ranknum[adapter_name] + RANKNUM_EPS)

    def merge(self, adapter_names: Sequence[str] | None = None) -> None:
        for name in self.active_adapters if adapter_names is None else adapter_names:
            if name in self.lora_A and name not in self.merged_adapters:
                weight = self.base_layer.weight
                weight.data = weight.data + self.delta_weight(name).detach().to(weight.dtype)
                self.merged_adapters.append(name)

    def unmerge(self) -> None:
        while self.merged_adapters:
            weight = self.base_layer.weight
            weight.data = weight.data - self.delta_weight(self.merged_adapters.pop()).detach().to(weight.dtype)

    def orthogonality(self, adapter_name: str) -> list[torch.Tensor]:
        """``||A A^T - I||_F`` and ``||B^T B - I||_F``, the terms of AdaLoRA's regulariser."""
        A, B = self.lora_A[adapter_name], self.lora_B[adapter_name]
        terms = []
        for gram in (A @ A.T, B.T @ B):
            terms.append(torch.norm(gram - torch.eye(*gram.shape, dtype=gram.dtype, device=gram.device), p="fro"))
        return terms

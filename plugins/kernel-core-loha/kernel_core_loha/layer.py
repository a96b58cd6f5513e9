"""The LoHa layer: per adapter, two low-rank products whose element-wise (Hadamard) product,
scaled by ``alpha / r``, is the update of the wrapped layer's weight.

Tensors and shapes follow PEFT's files. On an ``nn.Linear`` (and an ``nn.Conv2d`` seen as a
matrix ``(out, in / groups * kh * kw)``) ``hada_w1_a``/``hada_w2_a`` are ``(out, r)`` and
``hada_w1_b``/``hada_w2_b`` are ``(r, in)``. A ``Conv2d`` with a kernel larger than 1x1 and
``use_effective_conv2d`` keeps each product as a CP decomposition instead (FedPara's
"Proposition 3"): a core ``hada_t1``/``hada_t2`` of ``(r, r, kh, kw)`` and ``(r, out)``,
``(r, in / groups)`` factors. The forward, merge and unmerge that follow from the update come
from :class:`DeltaWeightLayer`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from kernel_core.contracts.delta_weight import DeltaWeightLayer
from kernel_core.contracts.tuner import BaseTunerConfig
from kernel_core_loha.config import LoHaConfig


class LoHaLayer(DeltaWeightLayer):
    """LoHa around an ``nn.Linear`` or ``nn.Conv2d``; each adapter's rank, alpha and dropouts
    come from its config for this module (``rank_pattern``/``alpha_pattern`` already applied)."""

    def __init__(self, base_layer: nn.Linear | nn.Conv2d, adapter_name: str, config: LoHaConfig) -> None:
        super().__init__(base_layer)
        self.hada_w1_a = nn.ParameterDict()
        self.hada_w1_b = nn.ParameterDict()
        self.hada_w2_a = nn.ParameterDict()
        self.hada_w2_b = nn.ParameterDict()
        self.hada_t1 = nn.ParameterDict()
        self.hada_t2 = nn.ParameterDict()
        self.configs: dict[str, LoHaConfig] = {}
        self.update_layer(adapter_name, config)
        self.set_adapter([adapter_name])

    def update_layer(self, adapter_name: str, config: BaseTunerConfig) -> None:
        if not isinstance(config, LoHaConfig):
            raise TypeError(f"LoHa needs a LoHaConfig, got {type(config).__name__}")
        if adapter_name in self.merged_adapters:
            raise ValueError(f"adapter {adapter_name!r} is merged; unmerge before re-initialising it")
        for container in (self.hada_t1, self.hada_t2):
            if adapter_name in container:  # re-initialised with other options, the form may change
                del container[adapter_name]
        out_features, r = self.out_features, config.r
        shapes = {"hada_w1_a": (out_features, r), "hada_w1_b": (r, self.base_layer.weight[0].numel())}
        if self.is_conv2d and config.use_effective_conv2d and tuple(self.base_layer.kernel_size) != (1, 1):
            _, in_per_group, *kernel = self.base_layer.weight.shape
            shapes = {"hada_w1_a": (r, out_features), "hada_w1_b": (r, in_per_group), "hada_t1": (r, r, *kernel)}
        shapes |= {name.replace("1", "2"): shape for name, shape in shapes.items()}
        for name, shape in shapes.items():
            factor = torch.empty(shape, dtype=self.adapter_dtype, device=self.base_layer.weight.device)
            if name == "hada_w2_b" and config.init_weights:
                nn.init.zeros_(factor)  # one zero factor makes the new adapter the identity
            else:
                nn.init.kaiming_uniform_(factor, a=math.sqrt(5))  # He init, as FedPara and PEFT
            getattr(self, name)[adapter_name] = nn.Parameter(factor)
        self.configs[adapter_name] = config
        self.set_adapter(self.active_adapters)  # a new adapter trains only once it is set active

    def delete_adapter(self, adapter_name: str) -> None:
        super().delete_adapter(adapter_name)
        self.configs.pop(adapter_name, None)

    def delta_weight(self, adapter_name: str, *, training: bool = False) -> torch.Tensor:
        """``(W1a W1b) ⊙ (W2a W2b) * alpha / r`` in the base weight's shape; while training,
        each output row is dropped with probability ``rank_dropout`` and the kept rows rescaled
        by the kept fraction."""
        config = self.configs[adapter_name]
        if adapter_name in self.hada_t1:
            delta = self._product("1", adapter_name) * self._product("2", adapter_name) * torch.tensor(config.scaling)
        else:
            factors = (getattr(self, f"hada_w{i}_{side}")[adapter_name] for i in "12" for side in "ab")
            delta = _HadamardOfProducts.apply(*factors, torch.tensor(config.scaling))
        delta = delta.reshape(self.base_layer.weight.shape)
        if training and config.rank_dropout:
            keep = (torch.rand(delta.shape[0]) > config.rank_dropout).to(delta)
            delta = delta * (keep / keep.mean()).view(-1, *[1] * (delta.dim() - 1))
        return delta

    def _product(self, index: str, adapter_name: str) -> torch.Tensor:
        """``W{index}a W{index}b``, or its CP rebuild ``t ×₁ a ×₂ b`` (``(out, in, kh, kw)``)."""
        a, b = getattr(self, f"hada_w{index}_a")[adapter_name], getattr(self, f"hada_w{index}_b")[adapter_name]
        core = getattr(self, f"hada_t{index}")
        if adapter_name in core:
            return torch.einsum("ijkl,jr,ip->prkl", core[adapter_name], b, a)
        return a @ b

    def adapter_output(self, adapter_name: str, x: torch.Tensor, result: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """While training, the whole adapter is skipped with probability ``module_dropout``."""
        dropout = self.configs[adapter_name].module_dropout
        if self.training and dropout and torch.rand(1).item() <= dropout:
            return result
        return super().adapter_output(adapter_name, x, result, *args, **kwargs)


class _HadamardOfProducts(torch.autograd.Function):
    """``(a1 b1) ⊙ (a2 b2) * scale`` keeping only the four factors for the backward pass, which
    recomputes the two products (autograd would keep both ``(out, in)`` products of every adapted
    layer until the backward: on SmolLM2-135M, 60 MB more peak memory than PEFT). The same
    operations in the same order as autograd's, so the gradients are the same."""

    @staticmethod
    def forward(ctx: Any, a1: torch.Tensor, b1: torch.Tensor, a2: torch.Tensor, b2: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(a1, b1, a2, b2, scale)
        return (a1 @ b1) * (a2 @ b2) * scale

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        a1, b1, a2, b2, scale = ctx.saved_tensors
        grad = grad * scale
        first = grad * (a2 @ b2)
        second = grad * (a1 @ b1)
        return first @ b1.T, a1.T @ first, second @ b2.T, a2.T @ second, None


"""The RandLoRA layer: per adapter, two trained matrices ``lambda`` (r, n) and ``gamma``
(n, min_dim) that scale the shared frozen bases, with ``n = ceil(min_dim / r)`` bases for this
module's ``min_dim = min(in, out)``. The scaled smaller basis
``Â = (lambda[:, :, None] * A[:, :, :min_dim] * gamma).flatten(0, 1)`` (r n, min_dim) and the
flattened larger one ``B̂ = B[:max_dim, :n].flatten(1)`` (max_dim, n r) give
``ΔW = B̂ Â`` (when ``in <= out``; else ``Âᵀ B̂ᵀ``) times ``randlora_alpha / r``. The forward
applies the two factors in turn to ``dropout(x)``, as PEFT does, rather than ``ΔW``.

The layer keeps references to the bases it uses (``randlora_A``/``randlora_B``, the model's,
bound by :meth:`RandLoraLayer.bind`), so that they are in its state dict as in PEFT's files; a
layer wrapped on its own, outside a model, draws bases of its own size from the adapter's
``projection_prng_key`` on first use.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from kernel_core.contracts.buffers import BufferDict
from kernel_core.contracts.delta_weight import DeltaWeightLayer
from kernel_core.contracts.tuner import BaseTunerConfig
from kernel_core_randlora.bases import draw_bases, n_bases
from kernel_core_randlora.config import RandLoraConfig


def scaled_basis(A: torch.Tensor, lambda_: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """``lambda[:, :, None] * A * gamma[None]``, ``(r, n, min_dim)`` (``A`` ``(r, 1 or n, min_dim)``),
    keeping only its three inputs for the backward pass: autograd would also keep the partial
    product ``lambda * A`` of the same size, per layer (on SmolLM2-135M, 44 MB more peak memory
    than PEFT, which writes this backward too)."""
    return _ScaledBasis.apply(A, lambda_, gamma)


class _ScaledBasis(torch.autograd.Function):
    """The three-factor product with its gradients written out: ``lambda``'s is ``g * A * gamma``
    summed over ``min_dim``, ``gamma``'s ``g * A * lambda`` summed over ``r`` (``A`` is frozen)."""

    @staticmethod
    def forward(ctx: Any, A: torch.Tensor, lambda_: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(A, lambda_, gamma)
        return lambda_[:, :, None] * A * gamma[None]

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, torch.Tensor | None, torch.Tensor | None]:
        A, lambda_, gamma = ctx.saved_tensors
        A = A.expand(grad.shape)
        grad_lambda = torch.einsum("kbj,kbj,bj->kb", grad, A, gamma) if ctx.needs_input_grad[1] else None
        grad_gamma = torch.einsum("kbj,kbj,kb->bj", grad, A, lambda_) if ctx.needs_input_grad[2] else None
        return None, grad_lambda, grad_gamma


class RandLoraLayer(DeltaWeightLayer):
    """RandLoRA around an ``nn.Linear`` or a ``Conv1D`` (weight ``(in, out)``)."""

    def __init__(self, base_layer: nn.Linear | Conv1D, adapter_name: str, config: RandLoraConfig) -> None:
        super().__init__(base_layer)
        self.min_dim, self.max_dim = sorted((self.in_features, self.out_features))
        self.randlora_lambda = nn.ParameterDict()
        self.randlora_gamma = nn.ParameterDict()
        self.randlora_dropout = nn.ModuleDict()
        self.randlora_A = BufferDict()  # the bases this layer uses: the model's, or its own outside a model
        self.randlora_B = BufferDict()
        self.configs: dict[str, RandLoraConfig] = {}
        self.update_layer(adapter_name, config)
        self.set_adapter([adapter_name])

    def update_layer(self, adapter_name: str, config: BaseTunerConfig) -> None:
        if not isinstance(config, RandLoraConfig):
            raise TypeError(f"RandLoRA needs a RandLoraConfig, got {type(config).__name__}")
        if adapter_name in self.merged_adapters:
            raise ValueError(f"adapter {adapter_name!r} is merged; unmerge before re-initialising it")
        bases = n_bases(self.min_dim, config.r)
        # As PEFT: lambda zero and gamma 1/min_dim (the identity), or lambda random and gamma 1/max_dim, for tests.
        lambda_ = torch.zeros(config.r, bases) if config.init_weights else torch.randn(config.r, bases)
        gamma = torch.full((bases, self.min_dim), 1 / (self.min_dim if config.init_weights else self.max_dim))
        dtype = self.adapter_dtype
        self.randlora_lambda[adapter_name] = nn.Parameter(lambda_.to(self.base_layer.weight.device, dtype))
        self.randlora_gamma[adapter_name] = nn.Parameter(gamma.to(self.base_layer.weight.device, dtype))
        self.randlora_dropout[adapter_name] = nn.Dropout(config.randlora_dropout) if config.randlora_dropout > 0 else nn.Identity()
        self.configs[adapter_name] = config
        for bases_of in (self.randlora_A, self.randlora_B):  # drawn again for the new config on first use
            if adapter_name in bases_of:
                del bases_of[adapter_name]
        self.set_adapter(self.active_adapters)  # a new adapter trains only once it is set active

    def bind(self, adapter_name: str, A: torch.Tensor, B: torch.Tensor, persistent: bool) -> None:
        """Use the model's shared bases for ``adapter_name`` (the same tensors, so loading a file
        into either fills both); saved with the layer only if ``persistent``."""
        self.randlora_A.put(adapter_name, A, persistent)
        self.randlora_B.put(adapter_name, B, persistent)

    def delete_adapter(self, adapter_name: str) -> None:
        super().delete_adapter(adapter_name)
        for bases_of in (self.randlora_A, self.randlora_B):
            if adapter_name in bases_of:
                del bases_of[adapter_name]
        self.configs.pop(adapter_name, None)

    def adapter_output(self, adapter_name: str, x: torch.Tensor, result: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        first, second = self._factors(adapter_name)
        hidden = self.randlora_dropout[adapter_name](x.to(first.dtype))
        update = F.linear(F.linear(hidden, first), second) * self._scaling(adapter_name)
        return (result + update).to(result.dtype)

    def delta_weight(self, adapter_name: str, *, training: bool = False) -> torch.Tensor:
        """``(first @ second)ᵀ`` of the two factors the forward applies, times the scale: ``(out, in)``."""
        first, second = self._factors(adapter_name)
        return (first.T @ second.T).T * self._scaling(adapter_name)

    def _scaling(self, adapter_name: str) -> float:
        config = self.configs[adapter_name]
        return config.randlora_alpha / config.r

    def _factors(self, adapter_name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The factor applied to the input, ``(k, in)``, then the one giving the output, ``(out, k)``."""
        lambda_, gamma = self.randlora_lambda[adapter_name], self.randlora_gamma[adapter_name]
        A, B = self._bases(adapter_name)
        bases = lambda_.shape[1]
        if A.shape[-1] < self.min_dim or B.shape[0] < self.max_dim or B.shape[1] < bases or A.shape[0] != lambda_.shape[0]:
            raise ValueError(
                f"RandLoRA adapter {adapter_name!r}: the shared bases randlora_A {tuple(A.shape)} and randlora_B "
                f"{tuple(B.shape)} do not fit a module of {self.out_features} out, {self.in_features} in at r={lambda_.shape[0]}"
            )
        A = A[:, :bases, : self.min_dim].to(lambda_)
        B = B[: self.max_dim, :bases, :].to(lambda_)
        scaled_A = scaled_basis(A, lambda_, gamma).flatten(end_dim=1)  # (r n, min_dim)
        flat_B = B.flatten(start_dim=1)  # (max_dim, n r)
        if self.min_dim == self.in_features:
            return scaled_A, flat_B
        return flat_B.T, scaled_A.T

    def _bases(self, adapter_name: str) -> tuple[torch.Tensor, torch.Tensor]:
        if adapter_name not in self.randlora_A:  # outside a model: of this layer's size, from the adapter's key
            config = self.configs[adapter_name]
            weight = self.base_layer.weight
            A, B = draw_bases(config, self.out_features, self.in_features)
            self.bind(adapter_name, A.to(weight), B.to(weight), config.save_projection)
        return self.randlora_A[adapter_name], self.randlora_B[adapter_name]

"""The C3A layer: per adapter, a kernel ``w`` of shape ``(m, n, b)`` (``m = out / b``,
``n = in / b``, ``b`` the block size); the input's ``n`` blocks of length ``b`` are circularly
convolved with the kernel's vectors and summed into ``m`` output blocks, computed with FFTs:
``y_i = Re(fft(Σ_j ifft(x_j) * fft(w_ij)))``, then divided by ``in_features``. ``ΔW`` is that map
applied to the identity (the block matrix of circulant matrices), foldable into the base weight.
Both are computed in float32, as PEFT does.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.fft import fft, ifft

from kernel_core.contracts.delta_weight import DeltaWeightLayer
from kernel_core.contracts.tuner import BaseTunerConfig
from kernel_core_c3a.config import C3AConfig


def block_circular_convolution(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """``x`` (..., n b) convolved block-wise with ``kernel`` (m, n, b): (..., m b). Differentiable
    in both, keeping only ``x`` and ``kernel`` for the backward pass (autograd through the FFTs
    would keep their complex spectra too: on SmolLM2-135M, 94 MB more peak memory than PEFT)."""
    return _BlockCircularConvolution.apply(x, kernel)


class _BlockCircularConvolution(torch.autograd.Function):
    """The block circular convolution with its adjoint written out. Per block pair the map is
    ``y = F(F^-1 x * F w)`` (``F`` the DFT, symmetric), so the input's gradient is
    ``F^-1(F g * F w)`` and the kernel's ``F(F^-1 x * F g)``, summed over the other blocks (and,
    for the kernel, over the batch). PEFT 0.21's own backward returns an index-reversed input
    gradient (its kernel gradient is right); this one is the true gradient, as autograd's was."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        _, n, b = kernel.shape
        ctx.save_for_backward(x, kernel)
        blocks = x.reshape(*x.shape[:-1], n, b)
        return fft(torch.einsum("...nb,mnb->...mb", ifft(blocks), fft(kernel))).real.reshape(*x.shape[:-1], -1)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        x, kernel = ctx.saved_tensors
        m, n, b = kernel.shape
        grad_spectrum = fft(grad.reshape(*grad.shape[:-1], m, b))
        grad_x = grad_kernel = None
        if ctx.needs_input_grad[0]:
            grad_x = ifft(torch.einsum("...mb,mnb->...nb", grad_spectrum, fft(kernel))).real.reshape(x.shape)
        if ctx.needs_input_grad[1]:
            blocks = x.reshape(*x.shape[:-1], n, b)
            grad_kernel = fft(torch.einsum("...mb,...nb->mnb", grad_spectrum, ifft(blocks))).real
        return grad_x, grad_kernel


class C3ALayer(DeltaWeightLayer):
    """C3A around an ``nn.Linear``."""

    def __init__(self, base_layer: nn.Linear, adapter_name: str, config: C3AConfig) -> None:
        super().__init__(base_layer)
        self.c3a_kernel = nn.ParameterDict()
        self.update_layer(adapter_name, config)
        self.set_adapter([adapter_name])

    def update_layer(self, adapter_name: str, config: BaseTunerConfig) -> None:
        if not isinstance(config, C3AConfig):
            raise TypeError(f"C3A needs a C3AConfig, got {type(config).__name__}")
        if adapter_name in self.merged_adapters:
            raise ValueError(f"adapter {adapter_name!r} is merged; unmerge before re-initialising it")
        b = config.block_size
        if self.in_features % b or self.out_features % b:
            raise ValueError(
                f"block_size {b} for {config.module_name or 'this module'} must divide its in_features "
                f"{self.in_features} and out_features {self.out_features}"
            )
        kernel = torch.zeros(self.out_features // b, self.in_features // b, b)
        init = config.init_weights
        if init == "gaussian":
            kernel.normal_()
        elif init in ("xavier_uniform", False):
            bound = math.sqrt(3.0) * math.sqrt(2.0 / (self.in_features + self.out_features))
            kernel.uniform_(-bound, bound)
        elif init == "kaiming_uniform":
            bound = math.sqrt(1.0 / self.in_features)
            kernel.uniform_(-bound, bound)
        weight = self.base_layer.weight
        self.c3a_kernel[adapter_name] = nn.Parameter(kernel.to(weight.device, self.adapter_dtype))
        self.set_adapter(self.active_adapters)  # a new adapter trains only once it is set active

    def adapter_output(self, adapter_name: str, x: torch.Tensor, result: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """``result`` plus the convolved input over ``in_features``, in float32, as PEFT."""
        kernel = self.c3a_kernel[adapter_name].to(torch.float32)
        x = x.to(torch.float32)
        return result + (block_circular_convolution(x, kernel) / x.size(-1)).to(result.dtype)

    def delta_weight(self, adapter_name: str, *, training: bool = False) -> torch.Tensor:
        """The convolution applied to the identity, ``(out, in)``, cast to the base weight's dtype
        and divided by ``in_features`` (in that order, as PEFT)."""
        kernel = self.c3a_kernel[adapter_name].to(torch.float32)
        identity = torch.eye(self.in_features, dtype=kernel.dtype, device=kernel.device)
        delta = block_circular_convolution(identity, kernel).T.to(self.base_layer.weight.dtype)
        return delta / self.in_features

"""The FourierFT layer: per adapter, ``n`` learned coefficients at fixed random places of an
``(out, in)`` spectrum; the weight update is ``ΔW = Re(ifft2(spectrum)) * scaling``, which
:class:`DeltaWeightLayer` adds to the output (``x ΔWᵀ``) and folds into the base weight.

The places are not saved: they are drawn again from ``random_loc_seed`` (a permutation of the
``out * in`` positions, its first ``n`` entries), as PEFT does, so files hold only the
coefficients (``fourierft_spectrum``).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from kernel_core.contracts.delta_weight import DeltaWeightLayer
from kernel_core.contracts.tuner import BaseTunerConfig
from kernel_core_fourierft.config import FourierFTConfig


class FourierFTLayer(DeltaWeightLayer):
    """FourierFT around an ``nn.Linear`` or a ``Conv1D`` (weight ``(in, out)``)."""

    def __init__(self, base_layer: nn.Linear | Conv1D, adapter_name: str, config: FourierFTConfig) -> None:
        super().__init__(base_layer)
        self.fourierft_spectrum = nn.ParameterDict()
        self.places: dict[str, torch.Tensor] = {}  # (2, n) row and column of each coefficient
        self.scaling: dict[str, float] = {}
        self.update_layer(adapter_name, config)
        self.set_adapter([adapter_name])

    def update_layer(self, adapter_name: str, config: BaseTunerConfig) -> None:
        if not isinstance(config, FourierFTConfig):
            raise TypeError(f"FourierFT needs a FourierFTConfig, got {type(config).__name__}")
        if adapter_name in self.merged_adapters:
            raise ValueError(f"adapter {adapter_name!r} is merged; unmerge before re-initialising it")
        size, n = self.out_features * self.in_features, config.n_frequency
        if not 0 < n <= size:
            raise ValueError(
                f"n_frequency {n} for {config.module_name or 'this module'} must be between 1 and "
                f"out * in = {self.out_features} * {self.in_features} = {size}"
            )
        generator = torch.Generator().manual_seed(config.random_loc_seed)
        flat = torch.randperm(size, generator=generator)[:n]
        self.places[adapter_name] = torch.stack([flat // self.in_features, flat % self.in_features])
        self.scaling[adapter_name] = config.scaling
        spectrum = torch.zeros(n) if config.init_weights else torch.randn(n)
        self.fourierft_spectrum[adapter_name] = nn.Parameter(spectrum.to(self.base_layer.weight))
        self.set_adapter(self.active_adapters)  # a new adapter trains only once it is set active

    def delete_adapter(self, adapter_name: str) -> None:
        super().delete_adapter(adapter_name)
        self.places.pop(adapter_name, None)
        self.scaling.pop(adapter_name, None)

    def delta_weight(self, adapter_name: str, *, training: bool = False) -> torch.Tensor:
        """``Re(ifft2(dense spectrum)) * scaling``, ``(out, in)``, in the coefficients' dtype
        (the FFT in float32 at least)."""
        spectrum = self.fourierft_spectrum[adapter_name]
        rows, columns = self.places[adapter_name].to(spectrum.device)
        dtype = torch.promote_types(spectrum.dtype, torch.float32)
        dense = torch.zeros(self.out_features, self.in_features, device=spectrum.device, dtype=dtype)
        dense[rows, columns] = spectrum.to(dtype)
        return (torch.fft.ifft2(dense).real * self.scaling[adapter_name]).to(spectrum.dtype)

"""The FourierFT layer: per adapter, ``n`` learned coefficients at fixed random places of an
``(out, in)`` spectrum; the weight update is ``Re(ifft2(spectrum)) * scaling``, added to the base
layer's output as ``x @ update^T`` and foldable into the base weight.

The places are not saved: they are drawn again from ``random_loc_seed`` (a permutation of the
``out * in`` positions, its first ``n`` entries), as PEFT does, so files hold only the
coefficients (``fourierft_spectrum``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from kernel_core.contracts.tuner import BaseTunerConfig, TunerLayer
from kernel_core_fourierft.config import FourierFTConfig


class FourierFTLayer(TunerLayer):
    """FourierFT around an ``nn.Linear`` or a ``Conv1D`` (weight ``(in, out)``)."""

    def __init__(self, base_layer: nn.Linear | Conv1D, adapter_name: str, config: FourierFTConfig) -> None:
        super().__init__(base_layer.requires_grad_(False))
        self.fan_in_fan_out = isinstance(base_layer, Conv1D)
        shape = base_layer.weight.shape
        self.in_features, self.out_features = shape if self.fan_in_fan_out else shape[::-1]
        self.fourierft_spectrum = nn.ParameterDict()
        self.places: dict[str, torch.Tensor] = {}  # (2, n) row and column of each coefficient
        self.scaling: dict[str, float] = {}
        self.update_layer(adapter_name, config)
        self.set_adapter([adapter_name])

    @property
    def adapter_names(self) -> list[str]:
        return list(self.fourierft_spectrum)

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
        if adapter_name in self.merged_adapters:
            raise ValueError(f"adapter {adapter_name!r} is merged; unmerge before deleting it")
        if adapter_name in self.fourierft_spectrum:
            del self.fourierft_spectrum[adapter_name], self.places[adapter_name], self.scaling[adapter_name]
        self.active_adapters = [name for name in self.active_adapters if name != adapter_name]

    def update_weight(self, adapter_name: str) -> torch.Tensor:
        """``Re(ifft2(dense spectrum)) * scaling``, ``(out, in)``, in the coefficients' dtype
        (the FFT in float32 at least)."""
        spectrum = self.fourierft_spectrum[adapter_name]
        rows, columns = self.places[adapter_name].to(spectrum.device)
        dtype = torch.promote_types(spectrum.dtype, torch.float32)
        dense = torch.zeros(self.out_features, self.in_features, device=spectrum.device, dtype=dtype)
        dense[rows, columns] = spectrum.to(dtype)
        return (torch.fft.ifft2(dense).real * self.scaling[adapter_name]).to(spectrum.dtype)

    def adapter_output(self, adapter_name: str, x: torch.Tensor, result: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        update = self.update_weight(adapter_name)
        return (result + F.linear(x.to(update.dtype), update)).to(result.dtype)

    def merge(self, adapter_names: Sequence[str] | None = None) -> None:
        for name in self.active_adapters if adapter_names is None else adapter_names:
            if name in self.fourierft_spectrum and name not in self.merged_adapters:
                self._fold(name, 1.0)
                self.merged_adapters.append(name)

    def unmerge(self) -> None:
        while self.merged_adapters:
            self._fold(self.merged_adapters.pop(), -1.0)

    def _fold(self, adapter_name: str, sign: float) -> None:
        weight = self.base_layer.weight
        update = self.update_weight(adapter_name).detach()
        with torch.no_grad():
            weight.data = weight.data + sign * (update.T if self.fan_in_fan_out else update).to(weight.dtype)

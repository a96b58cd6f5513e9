"""A tuner layer for methods whose adapter is a weight update: ``W + ΔW`` on an ``nn.Linear``
(or transformers' ``Conv1D``, GPT-2's projections, whose weight is stored transposed, or an
``nn.Conv2d``, whose update is a kernel convolved with the input).

Many PEFT methods differ only in how they build ``ΔW`` from their parameters (LoHa: a
Hadamard product of two low-rank products; LoKr: a Kronecker product); what follows from
``ΔW`` is the same for all of them: the forward adds ``x ΔWᵀ`` to the base output, merging adds
``ΔW`` to the base weight and unmerging subtracts it. :class:`DeltaWeightLayer` does that part,
so a method writes only :meth:`DeltaWeightLayer.delta_weight` and how its parameters are made.
Since API 1.4 (additive).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from kernel_core.contracts.tuner import TunerLayer


class DeltaWeightLayer(TunerLayer):
    """A :class:`TunerLayer` around an ``nn.Linear``, a ``Conv1D`` or an ``nn.Conv2d`` whose
    adapters each add ``ΔW`` (shape ``(out_features, in_features)`` for the first two: a
    ``Conv1D`` weight, stored ``(in, out)``, gets ``ΔWᵀ``; a ``Conv2d``'s weight shape
    ``(out_channels, in_channels / groups, *kernel_size)`` for the third) to the base weight.

    Subclasses keep each adapter's tensors in prefix-named containers keyed by adapter name
    (the state-dict rule) and implement :meth:`update_layer` and :meth:`delta_weight`;
    :attr:`adapter_names` and :meth:`delete_adapter` follow from the container layout (extend
    ``delete_adapter`` to drop per-adapter state kept outside the containers).
    """

    def __init__(self, base_layer: nn.Linear | Conv1D | nn.Conv2d) -> None:
        if not isinstance(base_layer, (nn.Linear, Conv1D, nn.Conv2d)):
            raise TypeError(f"a DeltaWeightLayer wraps nn.Linear, Conv1D or nn.Conv2d, not {type(base_layer).__name__}")
        super().__init__(base_layer.requires_grad_(False))
        #: Whether the base weight is stored ``(in, out)`` (``Conv1D``), so merging adds ``ΔWᵀ``.
        self.fan_in_fan_out = isinstance(base_layer, Conv1D)
        #: Whether the base is an ``nn.Conv2d``: ``ΔW`` is then a kernel, applied as the base's.
        self.is_conv2d = isinstance(base_layer, nn.Conv2d)
        shape = base_layer.weight.shape
        if self.is_conv2d:
            self.in_features, self.out_features = base_layer.in_channels, base_layer.out_channels
        else:
            self.in_features, self.out_features = shape if self.fan_in_fan_out else shape[::-1]

    @property
    def adapter_dtype(self) -> torch.dtype:
        """The dtype to create adapter tensors in: the base weight's, but float32 over a float16
        or bfloat16 base (as PEFT upcasts them), so that small updates survive training."""
        dtype = self.base_layer.weight.dtype
        return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype

    @abstractmethod
    def delta_weight(self, adapter_name: str, *, training: bool = False) -> torch.Tensor:
        """``ΔW`` of one adapter, scale included, shape ``(out_features, in_features)`` (on a
        ``Conv2d``, the base weight's shape). ``training`` is True for the update a training
        forward uses: a method with dropout on its update (LyCORIS' rank dropout) applies it
        then, never when merging."""

    @property
    def adapter_names(self) -> list[str]:
        """Every adapter with a tensor in a container, in the order they were added."""
        return list(dict.fromkeys(name for container in self._containers() for name in container))

    def delete_adapter(self, adapter_name: str) -> None:
        """Drop the adapter's tensors from every container."""
        if adapter_name in self.merged_adapters:
            raise ValueError(f"adapter {adapter_name!r} is merged; unmerge before deleting it")
        for container in self._containers():
            if adapter_name in container:
                del container[adapter_name]
        self.active_adapters = [name for name in self.active_adapters if name != adapter_name]

    def adapter_output(self, adapter_name: str, x: torch.Tensor, result: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """``result + x ΔWᵀ`` (on a ``Conv2d``: ``x`` convolved with ``ΔW`` as the base
        convolves it), computed and summed in ``ΔW``'s dtype when it is the wider one, then cast
        back, as PEFT (the base bias is already in ``result``)."""
        delta = self.delta_weight(adapter_name, training=self.training)
        x = x.to(delta.dtype)
        if self.is_conv2d:
            base = self.base_layer
            update = F.conv2d(x, delta, stride=base.stride, padding=base.padding, dilation=base.dilation, groups=base.groups)
        else:
            update = F.linear(x, delta)
        return (result + update).to(result.dtype)

    def merge(self, adapter_names: Sequence[str] | None = None) -> None:
        """``W += ΔW`` (``ΔWᵀ`` on a ``Conv1D``) for the given (default: active) adapters, summed
        in the wider dtype and rounded once to the weight's, as PEFT."""
        weight = self.base_layer.weight
        for name in self.active_adapters if adapter_names is None else adapter_names:
            if name in self.adapter_names and name not in self.merged_adapters:
                with torch.no_grad():
                    weight.data += self._as_weight(self.delta_weight(name))
                self.merged_adapters.append(name)

    def unmerge(self) -> None:
        """``W -= ΔW``, last merged first."""
        weight = self.base_layer.weight
        while self.merged_adapters:
            with torch.no_grad():
                weight.data -= self._as_weight(self.delta_weight(self.merged_adapters.pop()))

    def _as_weight(self, delta: torch.Tensor) -> torch.Tensor:
        return delta.T if self.fan_in_fan_out else delta

    def _containers(self) -> list[nn.ParameterDict | nn.ModuleDict]:
        return [module for name, module in self.named_children() if name != "base_layer" and isinstance(module, (nn.ParameterDict, nn.ModuleDict))]

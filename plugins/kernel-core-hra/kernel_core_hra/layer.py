"""The HRA layer: each adapter's reflections form an orthogonal ``H`` of the (flattened) input
dimension, and the layer computes with the weight ``W H`` (``y = x (W H)^T + b``; a Conv2d's
kernel flattened to ``(out, in * k * k)``). Merged: ``W <- W H``; unmerged with ``H^T``, the
reflections taken in reverse order (``H`` is orthogonal).

As PEFT, the adapted weight is built and used in every forward rather than the input rotated,
so that the unmerged model computes exactly what the merged one does.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kernel_core.contracts.tuner import BaseTunerConfig, TunerLayer
from kernel_core_hra.config import HRAConfig


def reflections(u: torch.Tensor, *, gram_schmidt: bool, reverse: bool = False) -> torch.Tensor:
    """``H`` from the vectors (the columns of ``u``, ``(n, r)``): with ``gram_schmidt``,
    ``I - 2 Q Q^T`` for ``Q`` the orthonormalised columns; else ``prod_i (I - 2 u_i u_i^T)`` over
    the normalised columns, in order (reversed: ``H^T``). PEFT's operation order, so that the
    result is bitwise PEFT's."""
    eye = torch.eye(u.shape[0], device=u.device, dtype=u.dtype)
    if gram_schmidt:
        basis = [(u[:, 0] / u[:, 0].norm()).view(-1, 1)]
        for i in range(1, u.shape[1]):
            column = u[:, i].view(-1, 1)
            for previous in basis:
                column = column - (previous.t() @ column) * previous
            basis.append((column / column.norm()).view(-1, 1))
        q = torch.cat(basis, dim=1)
        return eye - 2 * q @ q.t()
    u = u / u.norm(dim=0)
    weight = eye
    for i in reversed(range(u.shape[1])) if reverse else range(u.shape[1]):
        column = u[:, i].view(-1, 1)
        weight = weight - 2 * weight @ column @ column.t()
    return weight


class HRALayer(TunerLayer):
    """HRA around an ``nn.Linear`` or an ungrouped ``nn.Conv2d``: per adapter the vectors
    ``hra_u`` ``(in_features * k * k, r)`` (PEFT's state-dict name and shape)."""

    def __init__(self, base_layer: nn.Linear | nn.Conv2d, adapter_name: str, config: HRAConfig) -> None:
        super().__init__(base_layer.requires_grad_(False))
        self.is_conv2d = isinstance(base_layer, nn.Conv2d)
        weight = base_layer.weight
        #: The reflected dimension: the input features, times the kernel's size on a Conv2d.
        self.size = weight[0].numel()
        self.hra_u = nn.ParameterDict()
        self.gram_schmidt: dict[str, bool] = {}
        self.update_layer(adapter_name, config)
        self.set_adapter([adapter_name])

    @property
    def adapter_names(self) -> list[str]:
        return list(self.hra_u)

    def update_layer(self, adapter_name: str, config: BaseTunerConfig) -> None:
        if not isinstance(config, HRAConfig):
            raise TypeError(f"HRA needs an HRAConfig, got {type(config).__name__}")
        if adapter_name in self.merged_adapters:
            raise ValueError(f"adapter {adapter_name!r} is merged; unmerge before re-initialising it")
        weight = self.base_layer.weight
        half = weight.dtype in (torch.float16, torch.bfloat16) or not weight.dtype.is_floating_point
        options = {"device": weight.device, "dtype": torch.float32 if half else weight.dtype}  # float32 over half, as PEFT
        if config.init_weights and config.r % 2 == 0:
            # each vector twice in a row: every reflection is undone by the next, H = I
            half_u = torch.empty(self.size, config.r // 2, **options)
            nn.init.kaiming_uniform_(half_u, a=math.sqrt(5))
            u = torch.repeat_interleave(half_u, 2, dim=1)
        else:
            if config.init_weights:
                warnings.warn(f"HRA: r={config.r} is odd, so the adapter cannot start as the identity; random vectors", UserWarning, stacklevel=3)
            u = torch.empty(self.size, config.r, **options)
            nn.init.kaiming_uniform_(u, a=math.sqrt(5))
        self.hra_u[adapter_name] = nn.Parameter(u)
        self.gram_schmidt[adapter_name] = config.apply_GS
        self.set_adapter(self.active_adapters)  # a new adapter trains only once it is set active

    def delete_adapter(self, adapter_name: str) -> None:
        if adapter_name in self.merged_adapters:
            raise ValueError(f"adapter {adapter_name!r} is merged; unmerge before deleting it")
        if adapter_name in self.hra_u:
            del self.hra_u[adapter_name]
            del self.gram_schmidt[adapter_name]
        self.active_adapters = [name for name in self.active_adapters if name != adapter_name]

    def reflection(self, adapter_name: str, *, reverse: bool = False) -> torch.Tensor:
        """This adapter's ``H`` (``reverse``: ``H^T``), in the adapter's dtype."""
        return reflections(self.hra_u[adapter_name], gram_schmidt=self.gram_schmidt[adapter_name], reverse=reverse)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """With adapters active (not merged, disabled or a mixed batch): the base computation
        with ``W H_1 H_2 ...`` for the active adapters, in order."""
        names = [name for name in self.active_adapters if name in self.hra_u]
        if self.disable_adapters or self.merged or self.row_adapters is not None or not names:
            return super().forward(x, *args, **kwargs)
        return self._adapted(x, names)

    def adapter_output(self, adapter_name: str, x: torch.Tensor, result: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """A mixed batch's rows of this adapter: the output with ``W H`` (the base output of those
        rows is replaced, not changed)."""
        return self._adapted(x, [adapter_name]).to(result.dtype)

    def _adapted(self, x: torch.Tensor, names: Sequence[str]) -> torch.Tensor:
        """The base layer's computation with its weight times each adapter's ``H``, in the
        adapters' dtype (float32 over a half-precision base), the result in ``x``'s dtype."""
        product = self.reflection(names[0])
        for name in names[1:]:
            product = torch.mm(product, self.reflection(name).to(product.dtype))
        base = self.base_layer
        weight = torch.mm(base.weight.reshape(base.weight.shape[0], -1).to(product.dtype), product).reshape(base.weight.shape)
        bias = None if base.bias is None else base.bias.to(product.dtype)
        inputs = x.to(product.dtype)
        result = base._conv_forward(inputs, weight, bias) if self.is_conv2d else F.linear(inputs, weight, bias)
        return result.to(x.dtype)

    def merge(self, adapter_names: Sequence[str] | None = None) -> None:
        """``W <- W H`` per adapter, in order (the bias untouched)."""
        for name in self.active_adapters if adapter_names is None else adapter_names:
            if name in self.hra_u and name not in self.merged_adapters:
                self._fold(self.reflection(name))
                self.merged_adapters.append(name)

    def unmerge(self) -> None:
        """``W <- W H^T``, last merged first."""
        while self.merged_adapters:
            self._fold(self.reflection(self.merged_adapters.pop(), reverse=True))

    def _fold(self, matrix: torch.Tensor) -> None:
        weight = self.base_layer.weight
        with torch.no_grad():
            flat = weight.data.reshape(weight.shape[0], -1).to(matrix.dtype)
            weight.data = torch.mm(flat, matrix).reshape(weight.shape).to(weight.dtype)

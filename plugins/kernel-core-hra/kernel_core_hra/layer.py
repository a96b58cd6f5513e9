"""The HRA layer: each adapter's reflections form an orthogonal ``H`` of the (flattened) input
dimension, and the layer computes with the weight ``W H`` (``y = x (W H)^T + b``; a Conv2d's
kernel flattened to ``(out, in * k_h * k_w)``). Merged: ``W <- W H``; unmerged with ``H^T``, the
reflections taken in reverse order (``H`` is orthogonal).

``H`` is computed in PEFT 0.22's compact WY form (``I - V T V^T``, :func:`householder_vt`); a
Linear's forward reflects its input rather than building ``W H``, as PEFT 0.22 does.
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


def householder_vt(u: torch.Tensor, *, gram_schmidt: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(V, T)`` of the compact WY form ``H = I - V T V^T`` of the vectors' reflections (the
    columns of ``u``, ``(n, r)``), in float32 or wider, as PEFT 0.22 computes them: with
    ``gram_schmidt``, ``V`` the orthonormalised columns (QR) and ``T = 2 I``; else ``V`` the
    normalised columns and ``T`` the inverse of ``I / 2 + triu(V^T V, 1)``, which makes ``H`` the
    product of the reflections in order (Schreiber and Van Loan)."""
    dtype = torch.promote_types(u.dtype, torch.float32)
    eye = torch.eye(u.shape[1], device=u.device, dtype=dtype)
    if gram_schmidt:
        return torch.linalg.qr(u.to(dtype), mode="reduced").Q, 2 * eye
    v = u.to(dtype)
    v = v / v.norm(dim=0)
    return v, torch.linalg.solve_triangular(0.5 * eye + torch.triu(v.T @ v, diagonal=1), eye, upper=True)


def reflections(u: torch.Tensor, *, gram_schmidt: bool, reverse: bool = False) -> torch.Tensor:
    """``H`` (``reverse``: ``H^T``, the reflections in reverse order) from the vectors, in
    ``u``'s dtype: PEFT 0.22's operations, so that the result is bitwise PEFT's."""
    v, t = householder_vt(u, gram_schmidt=gram_schmidt)
    if reverse:
        t = t.T
    return (torch.eye(v.shape[0], device=v.device, dtype=v.dtype) - (v @ t) @ v.T).to(u.dtype)


def reflect_rows(x: torch.Tensor, u: torch.Tensor, *, gram_schmidt: bool) -> torch.Tensor:
    """``x H^T`` (each row of ``x`` reflected) without building ``H``: ``x - x V T^T V^T``, in
    ``x``'s dtype, as PEFT 0.22's forward."""
    v, t = householder_vt(u, gram_schmidt=gram_schmidt)
    v, t = v.to(x.dtype), t.to(x.dtype)
    return x - ((x @ v) @ t.T) @ v.T


class HRALayer(TunerLayer):
    """HRA around an ``nn.Linear`` or an ungrouped ``nn.Conv2d``: per adapter the vectors
    ``hra_u`` ``(in_features * k_h * k_w, r)`` (PEFT's state-dict name and shape)."""

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
        """The base layer's computation as if its weight were ``W H_1 H_2 ...``, the result in ``x``'s dtype."""
        return (self._conv_with_kernel(x, names) if self.is_conv2d else self._linear_of_reflected(x, names)).to(x.dtype)

    def _linear_of_reflected(self, x: torch.Tensor, names: Sequence[str]) -> torch.Tensor:
        """As PEFT 0.22: the input reflected by each ``H^T`` (last adapter first, in the adapter's
        dtype), then the base weight in its own dtype."""
        for name in reversed(names):
            u = self.hra_u[name]
            x = reflect_rows(x.to(u.dtype), u, gram_schmidt=self.gram_schmidt[name])
        base = self.base_layer
        return F.linear(x.to(base.weight.dtype), base.weight, base.bias)

    def _conv_with_kernel(self, x: torch.Tensor, names: Sequence[str]) -> torch.Tensor:
        """The kernel ``W H_1 H_2 ...`` built in the adapters' dtype (PEFT 0.22 reflects the
        unfolded input patches instead: the same product in another order, without ``k_h * k_w``
        copies of the input)."""
        product = self.reflection(names[0])
        for name in names[1:]:
            product = torch.mm(product, self.reflection(name).to(product.dtype))
        base = self.base_layer
        weight = torch.mm(base.weight.reshape(base.weight.shape[0], -1).to(product.dtype), product).reshape(base.weight.shape)
        bias = None if base.bias is None else base.bias.to(product.dtype)
        return base._conv_forward(x.to(product.dtype), weight, bias)

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

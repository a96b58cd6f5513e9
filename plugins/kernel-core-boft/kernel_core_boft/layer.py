"""The BOFT layer: each adapter rotates the input of an ``nn.Linear`` by a butterfly orthogonal
matrix ``B`` and scales the output before the bias by ``s``: ``y = s * (W (x B)) + b``. Merged:
``W <- diag(s) W B^T``, undone with ``B`` and ``1 / s`` (``B`` is orthogonal)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from kernel_core.contracts.tuner import BaseTunerConfig, TunerLayer
from kernel_core_boft.butterfly import Layout, butterfly_matrix, cayley, drop_blocks
from kernel_core_boft.config import BOFTConfig


class BOFTLayer(TunerLayer):
    """BOFT around an ``nn.Linear``: per adapter the learned blocks ``boft_R`` ``(factors, D, H, H)``
    and the output scale ``boft_s`` ``(out_features, 1)`` (PEFT's state-dict names)."""

    def __init__(self, base_layer: nn.Linear, adapter_name: str, config: BOFTConfig) -> None:
        super().__init__(base_layer.requires_grad_(False))
        self.in_features, self.out_features = base_layer.in_features, base_layer.out_features
        self.boft_R = nn.ParameterDict()
        self.boft_s = nn.ParameterDict()
        self.dropout: dict[str, float] = {}
        self.permutations: dict[str, torch.Tensor] = {}
        self.update_layer(adapter_name, config)
        self.set_adapter([adapter_name])

    @property
    def adapter_names(self) -> list[str]:
        return list(self.boft_R)

    def update_layer(self, adapter_name: str, config: BaseTunerConfig) -> None:
        if not isinstance(config, BOFTConfig):
            raise TypeError(f"BOFT needs a BOFTConfig, got {type(config).__name__}")
        if adapter_name in self.merged_adapters:
            raise ValueError(f"adapter {adapter_name!r} is merged; unmerge before re-initialising it")
        layout = Layout.of(
            self.in_features, config.boft_block_size, config.boft_block_num, config.boft_n_butterfly_factor, config.module_name
        )
        weight = self.base_layer.weight
        half = weight.dtype in (torch.float16, torch.bfloat16) or not weight.dtype.is_floating_point
        options = {"device": weight.device, "dtype": torch.float32 if half else weight.dtype}  # float32 over half, as PEFT
        blocks = torch.zeros(layout.factors, layout.blocks, layout.block_size, layout.block_size, **options)
        scale = torch.ones(self.out_features, 1, **options)
        if not config.init_weights:  # as PEFT: random blocks and scales near one, for tests
            blocks.normal_(0.0, 0.1)
            scale.normal_(1.0, 0.1)
        self.boft_R[adapter_name] = nn.Parameter(blocks)
        self.boft_s[adapter_name] = nn.Parameter(scale)
        self.dropout[adapter_name] = config.boft_dropout
        self.permutations[adapter_name] = layout.permutations()
        self.set_adapter(self.active_adapters)  # a new adapter trains only once it is set active

    def delete_adapter(self, adapter_name: str) -> None:
        if adapter_name in self.merged_adapters:
            raise ValueError(f"adapter {adapter_name!r} is merged; unmerge before deleting it")
        if adapter_name in self.boft_R:
            del self.boft_R[adapter_name], self.boft_s[adapter_name]
            del self.dropout[adapter_name], self.permutations[adapter_name]
        self.active_adapters = [name for name in self.active_adapters if name != adapter_name]

    def rotation(self, adapter_name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """``B``, ``(in_features, in_features)``, with block dropout while training. The blocks
        are computed in the adapter's dtype and the factors multiplied in ``dtype`` (default:
        the same), as PEFT multiplies them in the input's dtype."""
        rotations = cayley(self.boft_R[adapter_name])
        if self.training and self.dropout[adapter_name] > 0:
            rotations = drop_blocks(rotations, self.dropout[adapter_name])
        return butterfly_matrix(rotations.to(dtype or rotations.dtype), self.permutations[adapter_name])

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """As :class:`TunerLayer`, with several active adapters rotating the input last one
        first (``x B_last ... B_first``), as PEFT composes them and as merging them in order gives."""
        order = self.active_adapters
        self.active_adapters = order[::-1]
        try:
            return super().forward(x, *args, **kwargs)
        finally:
            self.active_adapters = order

    def adapter_input(self, adapter_name: str, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The input times ``B``, in the input's dtype."""
        return x @ self.rotation(adapter_name, x.dtype)

    def adapter_output(self, adapter_name: str, x: torch.Tensor, result: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The output scaled per feature, the bias left as it is."""
        scale = self.boft_s[adapter_name].squeeze(-1)
        bias = self.base_layer.bias
        if bias is None:
            return (result * scale).to(result.dtype)
        return ((result - bias) * scale + bias).to(result.dtype)

    def merge(self, adapter_names: Sequence[str] | None = None) -> None:
        """``W <- diag(s) W B^T`` per adapter, in order (the bias untouched)."""
        for name in self.active_adapters if adapter_names is None else adapter_names:
            if name in self.boft_R and name not in self.merged_adapters:
                self._fold(name, inverse=False)
                self.merged_adapters.append(name)

    def unmerge(self) -> None:
        """``W <- diag(1 / s) W B``, last merged first (``B`` is orthogonal: its inverse is ``B^T``)."""
        while self.merged_adapters:
            self._fold(self.merged_adapters.pop(), inverse=True)

    def _fold(self, adapter_name: str, *, inverse: bool) -> None:
        weight = self.base_layer.weight
        with torch.no_grad():
            rotation = self.rotation(adapter_name)
            scale = self.boft_s[adapter_name]
            if inverse:
                rotation, scale = rotation.t(), 1 / scale
            folded = torch.mm(rotation, weight.data.t().to(rotation.dtype)).t() * scale
            weight.data = folded.contiguous().to(weight.dtype)

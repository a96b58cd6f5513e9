"""The MiSS layer: per adapter one learned block ``miss_block`` (PEFT's name), in one of PEFT's
three variants.

- balance (``init_weights=True``/``False``): ``B`` ``(r, out)``; the input is cut into
  ``r``-wide slices (the last zero-padded) and the update is ``(sum of the slices) B``: as a
  weight, ``ΔW[o, c] = B[c mod r, o]``.
- mini: ``B`` ``(r, mini_r)``, repeated along the outputs to ``(r, out)``, then as balance.
- bat: ``B`` ``(out / r, r, r)``; each ``r x r`` block ``W_ij`` of the weight (output block
  ``i``, input block ``j``) becomes ``W_ij B_i + B_i + W_ij``, a change that depends on ``W``:
  the layer computes with the changed weight, as PEFT does, so merged and unmerged agree bit
  for bit; unmerging solves for ``W`` with ``(I + B_i)^-1`` (in float32, as PEFT).

Balance and mini are weight updates, so the layer is a :class:`DeltaWeightLayer` (merge adds
``ΔW``, unmerge subtracts it); their forward computes the slice sum first, as PEFT, which costs
``r x out`` per token instead of ``in x out``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kernel_core.contracts.delta_weight import DeltaWeightLayer
from kernel_core.contracts.tuner import BaseTunerConfig
from kernel_core_miss.config import MissConfig


class MissLayer(DeltaWeightLayer):
    """MiSS around an ``nn.Linear``; each adapter has its own variant, width and dropout."""

    def __init__(self, base_layer: nn.Linear, adapter_name: str, config: MissConfig) -> None:
        super().__init__(base_layer)
        self.miss_block = nn.ParameterDict()
        self.configs: dict[str, MissConfig] = {}
        self.update_layer(adapter_name, config)
        self.set_adapter([adapter_name])

    def update_layer(self, adapter_name: str, config: BaseTunerConfig) -> None:
        if not isinstance(config, MissConfig):
            raise TypeError(f"MiSS needs a MissConfig, got {type(config).__name__}")
        if adapter_name in self.merged_adapters:
            raise ValueError(f"adapter {adapter_name!r} is merged; unmerge before re-initialising it")
        self.miss_block[adapter_name] = nn.Parameter(self._new_block(config))
        self.configs[adapter_name] = config
        self.set_adapter(self.active_adapters)  # a new adapter trains only once it is set active

    def _new_block(self, config: MissConfig) -> torch.Tensor:
        """The block for this layer, zero (the identity) or random; a layout PEFT refuses is
        refused naming the module."""
        r, out_features, in_features = config.r, self.out_features, self.in_features
        where = f"MiSS on {config.module_name or 'a Linear'} (in_features={in_features}, out_features={out_features})"
        if r > in_features:
            raise ValueError(f"{where}: r={r} must be at most in_features")
        options = {"dtype": self.adapter_dtype, "device": self.base_layer.weight.device}
        if config.init_weights == "bat":
            if in_features % r or out_features % r:
                raise ValueError(f"{where}: init_weights='bat' needs r={r} to divide both in_features and out_features")
            return torch.zeros(out_features // r, r, r, **options)
        if config.init_weights == "mini":
            if out_features % config.mini_r:
                raise ValueError(f"{where}: init_weights='mini' needs mini_r={config.mini_r} to divide out_features")
            return torch.zeros(r, config.mini_r, **options)
        block = torch.zeros(r, out_features, **options)
        if config.init_weights is False:  # random, for tests, as PEFT
            nn.init.kaiming_uniform_(block, a=math.sqrt(5))
        return block

    def delete_adapter(self, adapter_name: str) -> None:
        super().delete_adapter(adapter_name)
        self.configs.pop(adapter_name, None)

    def _is_bat(self, adapter_name: str) -> bool:
        return self.configs[adapter_name].init_weights == "bat"

    def _block(self, adapter_name: str) -> torch.Tensor:
        """The balance/mini block as ``(r, out)`` (mini's repeated along the outputs)."""
        block = self.miss_block[adapter_name]
        if self.configs[adapter_name].init_weights == "mini":
            block = block.repeat(1, self.out_features // block.shape[1])
        return block

    def delta_weight(self, adapter_name: str, *, training: bool = False) -> torch.Tensor:
        """``ΔW`` the adapter adds to the base weight as it is now (bat's depends on it)."""
        if self._is_bat(adapter_name):
            return self._bat_delta(adapter_name, self.base_layer.weight)
        block = self._block(adapter_name)
        return block[torch.arange(self.in_features, device=block.device) % block.shape[0]].t()

    def _bat_delta(self, adapter_name: str, weight: torch.Tensor) -> torch.Tensor:
        """``W_ij B_i + B_i`` for each ``r x r`` block of ``weight``, in the block's dtype."""
        block = self.miss_block[adapter_name]
        return _per_block(weight.to(block.dtype), block, lambda blocks: blocks @ block + block)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """With a bat adapter active (not merged, disabled or a mixed batch): the base computation
        with the bat-changed weight (several in order), then the other active adapters' updates."""
        active = [name for name in self.active_adapters if name in self.miss_block]
        bats = [name for name in active if self._is_bat(name)]
        if self.disable_adapters or self.merged or self.row_adapters is not None or not bats:
            return super().forward(x, *args, **kwargs)
        result = self._bat_forward(x, bats)
        for name in active:
            if name not in bats:
                result = self.adapter_output(name, x, result)
        return result.to(x.dtype)

    def _bat_forward(self, x: torch.Tensor, names: list[str]) -> torch.Tensor:
        weight = self.base_layer.weight.clone()
        for name in names:
            weight = weight + self._bat_delta(name, weight)
        bias = self.base_layer.bias
        return F.linear(x.to(weight.dtype), weight, None if bias is None else bias.to(weight.dtype))

    def adapter_output(self, adapter_name: str, x: torch.Tensor, result: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Balance/mini: ``result`` plus the sum of the (dropped-out) input slices times the block.
        Bat (a mixed batch's rows): the output with the changed weight, replacing ``result``."""
        if self._is_bat(adapter_name):
            return self._bat_forward(x, [adapter_name]).to(result.dtype)
        block = self._block(adapter_name)
        r = block.shape[0]
        x = F.pad(x, (0, -x.shape[-1] % r)).to(block.dtype)
        x = F.dropout(x, self.configs[adapter_name].miss_dropout, training=self.training)
        slices = x.reshape(*x.shape[:-1], x.shape[-1] // r, r).sum(dim=-2)
        return (result + slices @ block).to(result.dtype)

    def unmerge(self) -> None:
        """Balance/mini: ``W -= ΔW``; bat: ``W_ij = (W'_ij - B_i) (I + B_i)^-1``; last merged first."""
        weight = self.base_layer.weight
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            with torch.no_grad():
                if not self._is_bat(name):
                    weight.data -= self.delta_weight(name)
                    continue
                weight.data = self._bat_restored(name, weight.data).to(weight.dtype)

    def _bat_restored(self, adapter_name: str, merged: torch.Tensor) -> torch.Tensor:
        """The weight before bat: ``(W'_ij - B_i) (I + B_i)^-1``, the inverse taken in float32 (as PEFT)."""
        block = self.miss_block[adapter_name]
        eye = torch.eye(block.shape[-1], device=block.device, dtype=torch.float32)
        inverse = torch.inverse(eye + block.float()).to(block.dtype)
        return _per_block(merged.to(block.dtype), block, lambda blocks: (blocks - block) @ inverse)


def _per_block(weight: torch.Tensor, block: torch.Tensor, change: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``weight`` with ``change`` applied to its ``r x r`` blocks, seen as ``(in / r, out / r, r, r)``
    so that bat's ``B`` ``(out / r, r, r)`` pairs with each output block (PEFT's layout)."""
    r = block.shape[-1]
    blocks = weight.reshape(weight.shape[0] // r, r, weight.shape[1] // r, r).permute(2, 0, 1, 3)
    return change(blocks).permute(1, 2, 0, 3).reshape(weight.shape)

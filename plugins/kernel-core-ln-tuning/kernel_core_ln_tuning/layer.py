"""The LayerNorm-tuning layer: per adapter, a trainable copy of the wrapped module, computing
in its place while the adapter is active.

Copies live in ``ln_tuning_layers`` (``ln_tuning_layers.<adapter>.weight`` in the model,
``ln_tuning_layers.weight`` in PEFT's file). Merging swaps the copy with ``base_layer``, as
PEFT does, so a merged model is exactly the adapted one; one adapter at a time, since copies
replace rather than add to each other.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from kernel_core.contracts.tuner import BaseTunerConfig, TunerLayer
from kernel_core_ln_tuning.config import LNTuningConfig


class LNTuningLayer(TunerLayer):
    """LayerNorm tuning around any module with parameters (norms in PEFT's defaults)."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: LNTuningConfig) -> None:
        super().__init__(base_layer.requires_grad_(False))
        self.ln_tuning_layers = nn.ModuleDict()
        self.update_layer(adapter_name, config)
        self.set_adapter([adapter_name])

    @property
    def adapter_names(self) -> list[str]:
        return list(self.ln_tuning_layers)

    def update_layer(self, adapter_name: str, config: BaseTunerConfig) -> None:
        """A fresh copy of the original module (the base one, also while another adapter is merged)."""
        if not isinstance(config, LNTuningConfig):
            raise TypeError(f"LayerNorm tuning needs an LNTuningConfig, got {type(config).__name__}")
        if adapter_name in self.merged_adapters:
            raise ValueError(f"adapter {adapter_name!r} is merged; unmerge before re-initialising it")
        original = self.ln_tuning_layers[self.merged_adapters[0]] if self.merged else self.base_layer
        self.ln_tuning_layers[adapter_name] = copy.deepcopy(original)
        self.set_adapter(self.active_adapters)  # a new adapter trains only once it is set active

    def delete_adapter(self, adapter_name: str) -> None:
        if adapter_name in self.merged_adapters:
            raise ValueError(f"adapter {adapter_name!r} is merged; unmerge before deleting it")
        if adapter_name in self.ln_tuning_layers:
            del self.ln_tuning_layers[adapter_name]
        self.active_adapters = [name for name in self.active_adapters if name != adapter_name]

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """As the base class, refusing several active adapters (as PEFT: copies do not compose);
        with one, only its copy runs: the base class would also run ``base_layer`` for an
        output :meth:`adapter_output` throws away (twice the norm's forward time, as measured
        by ``kcore bench finetune --method ln_tuning``)."""
        if self.disable_adapters or self.merged or self.row_adapters is not None or not self.active_adapters:
            return super().forward(x, *args, **kwargs)
        if len(self.active_adapters) > 1:
            raise ValueError(
                f"LayerNorm tuning computes with one adapter at a time, but {self.active_adapters} are active"
            )
        return self.ln_tuning_layers[self.active_adapters[0]](x, *args, **kwargs)

    def adapter_output(self, adapter_name: str, x: torch.Tensor, result: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The adapter's copy on the layer's input, in place of the base output."""
        return self.ln_tuning_layers[adapter_name](x, *args, **kwargs)

    def merge(self, adapter_names: Sequence[str] | None = None) -> None:
        """Swap the adapter's copy in as ``base_layer`` (one adapter; a merged one is unmerged first)."""
        names = [name for name in (self.active_adapters if adapter_names is None else adapter_names) if name in self.ln_tuning_layers]
        if len(names) > 1:
            raise ValueError(f"LayerNorm tuning merges one adapter at a time, got {names}")
        if not names or names == self.merged_adapters:
            return
        self.unmerge()
        self._swap(names[0])
        self.merged_adapters.append(names[0])

    def unmerge(self) -> None:
        while self.merged_adapters:
            self._swap(self.merged_adapters.pop())

    def _swap(self, adapter_name: str) -> None:
        self.base_layer, self.ln_tuning_layers[adapter_name] = self.ln_tuning_layers[adapter_name], self.base_layer

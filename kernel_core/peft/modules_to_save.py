"""``modules_to_save``: a full trainable copy of a module per adapter (a classifier head, say).

Shared by every method. The copy of the active adapter replaces the original's output; in a
mixed batch each row group gets its adapter's copy (or the original, for the base).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from kernel_core.contracts.tuner import BaseTunerConfig, TunerLayer


class ModulesToSaveWrapper(TunerLayer):
    """Holds ``original_module`` and one trainable copy per adapter in ``modules_to_save``."""

    def __init__(self, module: nn.Module, adapter_name: str) -> None:
        super().__init__(module)
        self.modules_to_save = nn.ModuleDict()
        self.update_layer(adapter_name, BaseTunerConfig())

    @property
    def original_module(self) -> nn.Module:
        return self.base_layer

    @property
    def adapter_names(self) -> list[str]:
        return list(self.modules_to_save)

    def update_layer(self, adapter_name: str, config: BaseTunerConfig) -> None:
        self.modules_to_save[adapter_name] = copy.deepcopy(self.base_layer).requires_grad_(True)

    def delete_adapter(self, adapter_name: str) -> None:
        del self.modules_to_save[adapter_name]
        self.active_adapters = [name for name in self.active_adapters if name != adapter_name]

    def adapter_output(self, adapter_name: str, x: torch.Tensor, result: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.modules_to_save[adapter_name](x, *args, **kwargs)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.disable_adapters or self.row_adapters is not None or not self.active_adapters:
            return super().forward(x, *args, **kwargs)
        return self.adapter_output(self.active_adapters[-1], x, x, *args, **kwargs)

    def merge(self, adapter_names: Sequence[str] | None = None) -> None:
        """Nothing to fold: the copy already is the module; unloading swaps it in."""

    def unmerge(self) -> None:
        """Nothing was folded."""

    def unloaded(self, merged_adapters: Sequence[str] = ()) -> nn.Module:
        """What replaces this wrapper when adapters are unloaded, as in peft (0.22 on): the trained
        copy of the last of ``merged_adapters`` that has one here, else the original module, so
        that unloading without merging gives the base model back."""
        copies = [name for name in merged_adapters if name in self.modules_to_save]
        return self.modules_to_save[copies[-1]] if copies else self.original_module


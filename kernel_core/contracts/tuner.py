"""The contract a PEFT-method (tuner) plugin implements.

The core finds target modules, walks the model, keeps track of adapters by name and does
PEFT-format I/O; a tuner says which modules it can adapt, builds the wrapping layer, and says
which base parameters (if any) it trains. A wrapped layer holds any number of named adapters,
computes its output with the active ones, folds them into the base weights and back, and serves
a mixed batch (one adapter per row) with one call per adapter group.

State-dict names follow PEFT: an adapter's tensors live in containers whose attribute name starts
with the tuner's ``prefix`` (``lora_A``, ``lora_magnitude_vector``, ...) and are keyed by adapter
name inside them (``lora_A.default.weight``); the PEFT file drops that adapter-name segment.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, TypeVar

import torch
from pydantic import BaseModel, ConfigDict, model_validator
from torch import nn

#: The adapter name that means "no adapter" for a row of a mixed batch (as in PEFT).
BASE_ADAPTER = "__base__"

ConfigT = TypeVar("ConfigT", bound="TunerConfig")


class TunerConfig(BaseModel):
    """Hyper-parameters of one adapter; subclasses add the method's own fields.

    The fields here are PEFT's, shared by every method: target selection (see
    :mod:`kernel_core.peft.targets`), full trainable copies (``modules_to_save``) and provenance.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    #: ``adapter_config.json`` keys PEFT writes that this config does not model, with the value
    #: that means "feature off"; :meth:`from_dict` drops them without a warning at that value.
    inert_peft_keys: ClassVar[Mapping[str, Any]] = {}

    target_modules: list[str] | str | None = None
    exclude_modules: list[str] | str | None = None
    layers_to_transform: list[int] | int | None = None
    layers_pattern: list[str] | str | None = None
    modules_to_save: list[str] | None = None
    base_model_name_or_path: str | None = None
    revision: str | None = None
    task_type: str | None = None
    inference_mode: bool = False

    @model_validator(mode="after")
    def _layer_filters_need_a_list(self: ConfigT) -> ConfigT:
        """As in PEFT: a regex already says which layers it matches, and a layer pattern
        without layer indices selects nothing."""
        if isinstance(self.target_modules, str) and (self.layers_to_transform is not None or self.layers_pattern):
            raise ValueError("layers_to_transform and layers_pattern need target_modules as a list, not a regex string")
        if self.layers_pattern and self.layers_to_transform is None:
            raise ValueError("layers_pattern needs layers_to_transform: the layer indices to keep")
        return self

    def for_module(self: ConfigT, module_name: str) -> ConfigT:
        """The config one module gets; methods with per-module overrides (rank patterns) apply
        them here."""
        return self

    @classmethod
    def from_dict(cls: type[ConfigT], data: Mapping[str, Any]) -> ConfigT:
        """Build from an ``adapter_config.json`` dict. Keys this class does not know are left
        out (``peft_type`` and PEFT's bookkeeping silently, others with one warning naming them)
        so that files from newer PEFT versions still load."""
        known = {key: value for key, value in data.items() if key in cls.model_fields}
        unknown = sorted(key for key in data if key not in cls.model_fields and key not in _PEFT_BOOKKEEPING)
        ignored = [key for key in unknown if not _is_off(data[key], cls.inert_peft_keys.get(key, _NO_DEFAULT))]
        if ignored:
            warnings.warn(
                f"{cls.__name__}: ignoring adapter_config.json settings this version does not support: "
                + ", ".join(f"{key}={data[key]!r}" for key in ignored),
                UserWarning,
                stacklevel=2,
            )
        return cls.model_validate(known)

    def to_dict(self) -> dict[str, Any]:
        """The fields as ``adapter_config.json`` holds them (the core adds ``peft_type``)."""
        return self.model_dump(mode="json")


_PEFT_BOOKKEEPING = frozenset({"peft_type", "peft_version", "auto_mapping"})
_NO_DEFAULT = object()


def _is_off(value: Any, inert: Any) -> bool:
    return value is None or value is False or value == {} or value == [] or value == inert


class TunerLayer(nn.Module):
    """A module wrapping ``base_layer`` with named adapters, as PEFT's tuner layers do.

    The core sets :attr:`active_adapters`, :attr:`disable_adapters` and, for one forward of a
    mixed batch, :attr:`row_adapters` (an adapter name, or :data:`BASE_ADAPTER`, per row of the
    input's first dimension). Subclasses implement how one adapter changes the output and how
    adapters fold into the base weights.
    """

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.active_adapters: list[str] = []
        self.merged_adapters: list[str] = []
        self.disable_adapters = False
        self.row_adapters: Sequence[str] | None = None

    @property
    def merged(self) -> bool:
        return bool(self.merged_adapters)

    @property
    @abstractmethod
    def adapter_names(self) -> list[str]:
        """The adapters this layer holds."""

    @abstractmethod
    def update_layer(self, adapter_name: str, config: TunerConfig) -> None:
        """Add (or re-initialise) one adapter, with the config this module gets."""

    @abstractmethod
    def delete_adapter(self, adapter_name: str) -> None:
        """Drop one adapter's parameters."""

    @abstractmethod
    def adapter_output(self, adapter_name: str, x: torch.Tensor, result: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """``result`` (the output so far for input ``x``) with one adapter's effect applied."""

    @abstractmethod
    def merge(self, adapter_names: Sequence[str] | None = None) -> None:
        """Fold the given (default: active) adapters into the base weights, so forward costs
        nothing extra; records them in :attr:`merged_adapters`."""

    @abstractmethod
    def unmerge(self) -> None:
        """Undo :meth:`merge` for every merged adapter, restoring the base weights."""

    def set_adapter(self, adapter_names: Sequence[str]) -> None:
        """Make these adapters active; only their parameters require grad afterwards."""
        self.active_adapters = [name for name in adapter_names if name in self.adapter_names]
        for name, parameter in self.adapter_parameters():
            parameter.requires_grad_(name in self.active_adapters)

    def adapter_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """(adapter name, parameter) for every adapter parameter, found by the container layout
        ``<container>.<adapter>[.<tensor>]``."""
        found = []
        for key, parameter in self.named_parameters():
            parts = key.split(".")
            if parts[0] != "base_layer" and len(parts) >= 2:
                found.append((parts[1], parameter))
        return found

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        if self.row_adapters is not None:
            return self._forward_mixed(x, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        if self.merged:
            return result
        for name in self.active_adapters:
            result = self.adapter_output(name, x, result, *args, **kwargs)
        return result

    def _forward_mixed(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """One adapter per row: the base output for all rows, then each adapter's effect on its
        group of rows, one call per adapter."""
        rows = self.row_adapters
        assert rows is not None
        if self.merged:
            raise RuntimeError("a mixed batch (adapter_names) needs unmerged adapters; call unmerge_adapter() first")
        if len(rows) != x.shape[0]:
            raise ValueError(f"adapter_names has {len(rows)} entries but the batch has {x.shape[0]} rows")
        result = self.base_layer(x, *args, **kwargs)
        for name in dict.fromkeys(rows):
            if name == BASE_ADAPTER or name not in self.adapter_names:
                continue
            index = torch.tensor([i for i, row in enumerate(rows) if row == name], device=result.device)
            group = self.adapter_output(name, x[index], result[index], *args, **kwargs)
            result = result.index_copy(0, index, group.to(result.dtype))
        return result


class Tuner(ABC):
    """One PEFT method: its config schema, its state-dict prefix, and how to wrap a module."""

    config_class: ClassVar[type[TunerConfig]]
    #: Every adapter container's attribute name starts with this (``"lora_"``).
    prefix: ClassVar[str]

    @abstractmethod
    def can_wrap(self, module: nn.Module) -> bool:
        """Whether this method can adapt ``module`` (e.g. Linear and Embedding for LoRA)."""

    @abstractmethod
    def wrap(self, module: nn.Module, adapter_name: str, config: TunerConfig) -> TunerLayer:
        """Return a :class:`TunerLayer` around ``module`` holding the adapter ``adapter_name``.

        ``config`` is already the one this module gets (:meth:`TunerConfig.for_module`). Only
        the adapter's parameters (in containers named with :attr:`prefix`) require grad.
        """

    def trained_base_parameters(self, config: TunerConfig, model: nn.Module, wrapped: Sequence[str]) -> list[str]:
        """Names (in ``model``) of base parameters this method trains and saves with the
        adapter, e.g. LoRA's ``bias="all"``; ``wrapped`` names the wrapped modules."""
        return []

    def on_optimizer_step(self, model: Any, adapter_name: str, step: int) -> None:
        """Called while ``adapter_name`` trains, after each optimizer step and before the gradients
        are cleared (``step`` counts optimizer steps from 1): a method whose adapter changes as it
        trains (AdaLoRA's rank allocation) acts here. ``model`` is the
        :class:`kernel_core.peft.PeftModel`. ``kcore finetune`` calls it, and so does any
        ``Trainer`` given :class:`kernel_core.finetune.callbacks.TunerTrainingCallback`. Since API 1.2."""

    def training_loss(self, model: Any, adapter_name: str) -> torch.Tensor | None:
        """A term the method adds to the loss while ``adapter_name`` trains and the forward is
        given labels (AdaLoRA's orthogonality regulariser), or ``None``. Since API 1.2."""
        return None

    def add_weighted_adapter(self, model: Any, adapters: Sequence[str], weights: Sequence[float], adapter_name: str, **options: Any) -> None:
        """Add ``adapter_name`` to ``model`` (a :class:`kernel_core.peft.PeftModel`) as a weighted
        combination of existing adapters; methods that can combine adapters override this."""
        raise NotImplementedError(f"{type(self).__name__} cannot combine adapters")

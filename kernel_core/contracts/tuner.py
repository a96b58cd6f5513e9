"""The contract a PEFT-method (tuner) plugin implements.

The core finds target modules, walks the model and does PEFT-format I/O; a tuner says which
modules it can adapt and how to wrap one, and its layers know how to merge into the base.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from pydantic import BaseModel, ConfigDict
from torch import nn


class TunerConfig(BaseModel):
    """Hyper-parameters of one adapter; subclasses add the method's own fields."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    target_modules: list[str] | str | None = None


class TunerLayer(ABC):
    """Mixin of a wrapped module: holds adapters by name and can fold them into the base."""

    merged: bool = False

    @abstractmethod
    def merge(self) -> None:
        """Add the active adapter into the base weights, so forward costs nothing extra."""

    @abstractmethod
    def unmerge(self) -> None:
        """Undo :meth:`merge`, restoring the base weights."""


class Tuner(ABC):
    """One PEFT method: its config schema, its state-dict key marker, and how to wrap a module."""

    config_class: ClassVar[type[TunerConfig]]
    prefix: ClassVar[str]

    @abstractmethod
    def can_wrap(self, module: nn.Module) -> bool:
        """Whether this method can adapt ``module`` (e.g. Linear and Embedding for LoRA)."""

    @abstractmethod
    def wrap(self, module: nn.Module, adapter_name: str, config: TunerConfig) -> nn.Module:
        """Return a module behaving like ``module`` plus the adapter, implementing ``TunerLayer``.

        Only the adapter's parameters (names containing :attr:`prefix`) are trainable.
        """

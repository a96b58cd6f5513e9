"""Per-architecture defaults: what a method's config leaves out (``target_modules=None``), taken
from the method's table by the transformers ``model_type``, as PEFT's per-method mappings do.

The tables belong to the methods (``Tuner.default_target_modules``, and whatever else a method
fills in ``Tuner.before_inject``); this module only looks them up, with one clear error.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from torch import nn

from kernel_core.contracts.tuner import Tuner, BaseTunerConfig
from kernel_core.errors import InvalidAdapterConfigError

T = TypeVar("T")
ConfigT = TypeVar("ConfigT", bound=BaseTunerConfig)


def model_type(model: nn.Module) -> str | None:
    """The transformers ``config.model_type`` of ``model`` (a ``PeftModel`` or the model
    itself), or None for a model without one."""
    value = getattr(getattr(model, "config", None), "model_type", None)
    return value if isinstance(value, str) and value else None


def by_model_type(table: Mapping[str, T], model: nn.Module, *, method: str, field: str) -> T:
    """``table[model_type(model)]``; otherwise an error naming the model type, the method, the
    field to set and the model types that have defaults."""
    kind = model_type(model)
    if kind is not None and kind in table:
        return table[kind]
    known = ", ".join(sorted(table)) or "none"
    raise InvalidAdapterConfigError(
        f"{method} has no default {field} for model type {kind!r} (it has defaults for: {known}); "
        f"set {field} in the config"
    )


def resolve_target_modules(config: ConfigT, tuner: Tuner, method: str, model: nn.Module) -> ConfigT:
    """``config`` with ``target_modules`` filled from ``tuner.default_target_modules`` when it
    is None (names as a list, as PEFT saves them, or a regex string); unchanged otherwise."""
    if config.target_modules is not None:
        return config
    targets: Any = by_model_type(tuner.default_target_modules, model, method=method, field="target_modules")
    return config.model_copy(update={"target_modules": targets if isinstance(targets, str) else list(targets)})

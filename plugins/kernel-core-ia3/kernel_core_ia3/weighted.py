"""IA3 adapter arithmetic, as PEFT defines it: a new adapter whose vector on each module is the
weighted sum of the given adapters' vectors there, targeting the union of their modules."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from kernel_core_ia3.config import IA3Config
from kernel_core_ia3.layer import IA3Layer


def add_weighted_adapter(model: Any, adapters: Sequence[str], weights: Sequence[float], adapter_name: str) -> None:
    """Add ``adapter_name`` to ``model`` (a ``PeftModel``) as ``sum(weight * ia3_l)`` of ``adapters``."""
    configs = [model.peft_config[name] for name in adapters]
    if sum(bool(config.modules_to_save) for config in configs) > 1:
        raise ValueError("cannot combine several IA3 adapters with modules_to_save: each holds its own copy")
    assert all(isinstance(config, IA3Config) for config in configs)
    merged = configs[0].model_copy(
        update={
            "target_modules": _union("target_modules", [config.target_modules for config in configs]),
            "feedforward_modules": _union("feedforward_modules", [config.feedforward_modules for config in configs]),
        }
    )
    model.add_adapter(adapter_name, merged)
    with torch.no_grad():
        for name, layer in model.named_modules():
            if not isinstance(layer, IA3Layer) or adapter_name not in layer.ia3_l:
                continue
            combined = torch.zeros_like(layer.ia3_l[adapter_name])
            for source, weight in zip(adapters, weights):
                if source not in layer.ia3_l:
                    continue
                if layer.ia3_l[source].shape != combined.shape:
                    raise ValueError(
                        f"{name}: adapter {source!r} scales its {'input' if layer.feedforward[source] else 'output'}, "
                        f"but the combination the {'input' if layer.feedforward[adapter_name] else 'output'}"
                    )
                combined += weight * layer.ia3_l[source]
            layer.ia3_l[adapter_name].copy_(combined)


def _union(field: str, values: Sequence[list[str] | str | None]) -> list[str] | str | None:
    """Lists join as a set, regexes as alternatives (PEFT's rule); mixing the two is refused."""
    if all(isinstance(value, list) for value in values):
        return sorted({entry for value in values for entry in value})  # type: ignore[union-attr]
    if all(isinstance(value, str) for value in values):
        return "|".join(f"({value})" for value in values)
    raise ValueError(f"the adapters' {field} must all be lists or all be regexes to combine them, got {values!r}")

"""A new LoRA adapter as a weighted combination of existing ones (PEFT's semantics).

``linear``: A = sum(sign * sqrt|w s| A_i), B = sum(sqrt|w s| B_i) (equal ranks).
``cat``: A = [w_i s_i A_i] stacked, B = [B_i] side by side: exactly sum(w_i s_i B_i A_i).
``svd``: the rank-``svd_rank`` truncated SVD of sum(w_i s_i B_i A_i).
The new adapter has ``lora_alpha = r``, so its own scaling is 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from kernel_core_lora.config import LoraConfig
from kernel_core_lora.layers import LoraLayer

COMBINATIONS = ("linear", "cat", "svd")


def add_weighted_adapter(
    model: Any,
    adapters: Sequence[str],
    weights: Sequence[float],
    adapter_name: str,
    combination_type: str = "svd",
    svd_rank: int | None = None,
    svd_clamp: float | None = None,
    svd_full_matrices: bool = True,
    svd_driver: str | None = None,
) -> None:
    """Add ``adapter_name`` to ``model`` (a ``PeftModel``) combining ``adapters``."""
    configs: list[LoraConfig] = [model.peft_config[name] for name in adapters]
    if combination_type not in COMBINATIONS:
        raise ValueError(f"combination_type must be one of {', '.join(COMBINATIONS)}, not {combination_type!r}")
    if any(config.use_dora for config in configs):
        raise ValueError("DoRA adapters cannot be combined: their magnitudes do not add")
    if any(config.modules_to_save for config in configs):
        raise ValueError("adapters with modules_to_save cannot be combined")
    combination = "linear" if len(adapters) == 1 else combination_type
    ranks = [config.max_rank for config in configs]
    if combination == "linear" and len(set(ranks)) > 1:
        raise ValueError(f"combination_type 'linear' needs equal ranks, got {dict(zip(adapters, ranks))}; use 'cat' or 'svd'")
    new_rank = {"linear": ranks[0], "cat": sum(ranks), "svd": svd_rank or max(ranks)}[combination]
    new_config = configs[0].model_copy(
        update={
            "r": new_rank,
            "lora_alpha": new_rank,
            "target_modules": _union_of_targets(configs),
            "rank_pattern": {},
            "alpha_pattern": {},
        }
    )
    model.add_adapter(adapter_name, new_config)
    for layer in model.model.modules():
        if isinstance(layer, LoraLayer) and adapter_name in layer.adapter_names:
            present = [(name, weight) for name, weight in zip(adapters, weights) if name in layer.adapter_names]
            lora_a, lora_b = layer.factors(adapter_name)
            with torch.no_grad():
                if combination == "svd":
                    new_a, new_b = _svd(layer, present, new_rank, svd_clamp, svd_full_matrices, svd_driver)
                else:
                    new_a, new_b = (_cat if combination == "cat" else _linear)(layer, present)
                lora_a.zero_()[: new_a.shape[0]] = new_a
                lora_b.zero_()[:, : new_b.shape[1]] = new_b


def _union_of_targets(configs: Sequence[LoraConfig]) -> list[str] | str:
    targets = [config.target_modules for config in configs]
    if all(target == targets[0] for target in targets):
        return targets[0]  # type: ignore[return-value]
    if all(isinstance(target, str) for target in targets):
        return "|".join(f"({target})" for target in targets)
    if all(isinstance(target, list) for target in targets):
        return sorted({name for target in targets for name in target})
    raise ValueError("cannot combine adapters whose target_modules mix lists and regex strings")


def _linear(layer: LoraLayer, present: list[tuple[str, float]]) -> tuple[torch.Tensor, torch.Tensor]:
    new_a, new_b = 0, 0
    for name, weight in present:
        lora_a, lora_b = layer.factors(name)
        scaled = weight * layer.scaling[name]
        root = math.sqrt(abs(scaled))
        new_a = new_a + math.copysign(root, scaled) * lora_a
        new_b = new_b + root * lora_b
    return new_a, new_b  # type: ignore[return-value]


def _cat(layer: LoraLayer, present: list[tuple[str, float]]) -> tuple[torch.Tensor, torch.Tensor]:
    factors = [(layer.factors(name), weight * layer.scaling[name]) for name, weight in present]
    return torch.cat([a * scaled for (a, _), scaled in factors], dim=0), torch.cat([b for (_, b), _ in factors], dim=1)


def _svd(
    layer: LoraLayer, present: list[tuple[str, float]], rank: int, clamp: float | None, full_matrices: bool, driver: str | None
) -> tuple[torch.Tensor, torch.Tensor]:
    delta = sum(weight * layer.scaling[name] * layer.lora_weight(name) for name, weight in present)
    u, s, vh = torch.linalg.svd(delta, full_matrices=full_matrices, driver=driver)
    u, vh = u[:, :rank] @ torch.diag(s[:rank]), vh[:rank]
    if clamp is not None:
        high = torch.quantile(torch.cat([u.flatten(), vh.flatten()]), clamp)
        u, vh = u.clamp(-high, high), vh.clamp(-high, high)
    return vh, u

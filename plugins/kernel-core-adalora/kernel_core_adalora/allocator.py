"""AdaLoRA's rank allocation (Zhang et al., 2023), as PEFT's ``update_and_allocate`` does it.

After every optimizer step (gradients still in place) each adapter tensor's importance
``|p * grad|`` is smoothed (``beta1``) and its uncertainty ``|importance - smoothed|`` tracked
(``beta2``); a triplet's score is its E entry's ``smoothed * uncertainty`` plus the mean of its A
row's and its B column's. A budget of triplets shrinks on a cubic schedule from every module's
``init_r`` to ``target_r`` per module; the lowest-scored triplets beyond it are masked (their E
set to zero). The pattern is fixed at step ``total_step - tfinal`` and kept until the end.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from kernel_core_adalora.config import RANK_KEY, AdaLoraConfig
from kernel_core_adalora.layer import SVDLayer

Layers = Sequence[tuple[str, SVDLayer]]


class RankAllocator:
    """The importance statistics and budget of one training adapter over ``layers``."""

    def __init__(self, layers: Layers, adapter_name: str) -> None:
        self.adapter_name = adapter_name
        self.init_budget = sum(layer.lora_A[adapter_name].shape[0] for _, layer in layers)
        self.reset()

    def reset(self) -> None:
        self.smoothed: dict[str, torch.Tensor] = {}
        self.uncertainty: dict[str, torch.Tensor] = {}

    def budget(self, config: AdaLoraConfig, modules: int, step: int) -> tuple[int, bool]:
        """The number of triplets kept after ``step``, and whether this step masks."""
        assert config.total_step is not None
        target_budget = config.target_r * modules
        if step <= config.tinit:
            return self.init_budget, False
        left = 1 - (step - config.tinit) / (config.total_step - config.tfinal - config.tinit)
        return int((self.init_budget - target_budget) * left**3 + target_budget), step % config.deltaT == 0

    def update(self, layers: Layers, config: AdaLoraConfig) -> None:
        """Fold this step's gradients into the smoothed importance and uncertainty."""
        with torch.no_grad():
            for module, layer in layers:
                for name, container in (("lora_A", layer.lora_A), ("lora_B", layer.lora_B), ("lora_E", layer.lora_E)):
                    parameter, key = container[self.adapter_name], f"{module}.{name}"
                    if parameter.grad is None:
                        raise RuntimeError(f"AdaLoRA's allocation needs the gradient of {key}: call it before the gradients are cleared")
                    importance = (parameter * parameter.grad).abs()
                    smoothed = self.smoothed.get(key, torch.zeros_like(parameter))
                    uncertainty = self.uncertainty.get(key, torch.zeros_like(parameter))
                    smoothed = config.beta1 * smoothed + (1 - config.beta1) * importance
                    self.uncertainty[key] = config.beta2 * uncertainty + (1 - config.beta2) * (importance - smoothed).abs()
                    self.smoothed[key] = smoothed

    def _score(self, key: str) -> torch.Tensor:
        return self.smoothed[key] * self.uncertainty[key]

    def mask(self, layers: Layers, budget: int) -> dict[str, list[bool]]:
        """Zero the E entries of all but the ``budget`` best-scored triplets (ties at the
        threshold are masked); returns the rank pattern."""
        scores = {}
        for module, _ in layers:
            rows = self._score(f"{module}.lora_A").mean(dim=1, keepdim=True)
            columns = self._score(f"{module}.lora_B").mean(dim=0).view(-1, 1)
            scores[module] = self._score(f"{module}.lora_E").view(-1) + torch.cat([rows, columns], dim=1).sum(dim=1)
        threshold = torch.kthvalue(torch.cat(list(scores.values())), k=self.init_budget - budget)[0].item()
        pattern = {}
        with torch.no_grad():
            for module, layer in layers:
                dropped = (scores[module] <= threshold).view(-1, 1)
                layer.lora_E[self.adapter_name].masked_fill_(dropped, 0.0)
                pattern[RANK_KEY.format(module=module)] = (~dropped).view(-1).tolist()
        return pattern

    def step(self, layers: Layers, config: AdaLoraConfig, step: int) -> dict[str, list[bool]] | None:
        """One call of PEFT's ``update_and_allocate(step)``: the new rank pattern, if any."""
        assert config.total_step is not None
        final = config.total_step - config.tfinal
        if step < final:
            self.update(layers, config)
            budget, masks = self.budget(config, len(layers), step)
            return self.mask(layers, budget) if masks else None
        if step == final:
            pattern = self.mask(layers, self.budget(config, len(layers), step)[0])
            self.reset()
            return pattern
        if config.rank_pattern:
            apply_pattern(layers, self.adapter_name, config.rank_pattern)
        return None


def apply_pattern(layers: Layers, adapter_name: str, pattern: dict[str, list[bool]]) -> None:
    """Zero the E entries ``pattern`` drops (the final phase keeps the fixed pattern)."""
    with torch.no_grad():
        for module, layer in layers:
            kept = pattern.get(RANK_KEY.format(module=module))
            if kept is not None:
                E = layer.lora_E[adapter_name]
                E.masked_fill_(~torch.tensor(kept, device=E.device).view(-1, 1), 0.0)

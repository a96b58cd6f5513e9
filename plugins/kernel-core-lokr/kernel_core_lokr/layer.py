"""The LoKr layer: per adapter, the Kronecker product of two factors, scaled by ``alpha / r``,
is the update of the wrapped ``nn.Linear``'s weight.

The output dimension splits as ``out = a * b`` and the input as ``in = c * d`` (see
:func:`factorization`); ``W1`` is ``(a, c)`` and ``W2`` is ``(b, d)``, so ``W1 ⊗ W2`` is
``(out, in)``. A factor is kept whole (``lokr_w1``, ``lokr_w2``) or, when ``r`` is under half
its larger side, as a rank-``r`` product (``lokr_w1_a @ lokr_w1_b``, ``lokr_w2_a @ lokr_w2_b``;
``W1`` only with ``decompose_both``), PEFT's names and shapes. The forward, merge and unmerge
that follow from the update come from :class:`DeltaWeightLayer`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from kernel_core.contracts.delta_weight import DeltaWeightLayer
from kernel_core.contracts.tuner import BaseTunerConfig
from kernel_core_lokr.config import LoKrConfig
from kernel_core_lokr.factorization import factorization


class LoKrLayer(DeltaWeightLayer):
    """LoKr around an ``nn.Linear``; each adapter's rank, alpha and options come from its config
    for this module (``rank_pattern``/``alpha_pattern`` already applied)."""

    def __init__(self, base_layer: nn.Linear, adapter_name: str, config: LoKrConfig) -> None:
        super().__init__(base_layer)
        self.lokr_w1 = nn.ParameterDict()
        self.lokr_w1_a = nn.ParameterDict()
        self.lokr_w1_b = nn.ParameterDict()
        self.lokr_w2 = nn.ParameterDict()
        self.lokr_w2_a = nn.ParameterDict()
        self.lokr_w2_b = nn.ParameterDict()
        self.configs: dict[str, LoKrConfig] = {}
        self.update_layer(adapter_name, config)
        self.set_adapter([adapter_name])

    def update_layer(self, adapter_name: str, config: BaseTunerConfig) -> None:
        if not isinstance(config, LoKrConfig):
            raise TypeError(f"LoKr needs a LoKrConfig, got {type(config).__name__}")
        if adapter_name in self.merged_adapters:
            raise ValueError(f"adapter {adapter_name!r} is merged; unmerge before re-initialising it")
        for container in (self.lokr_w1, self.lokr_w1_a, self.lokr_w1_b, self.lokr_w2, self.lokr_w2_a, self.lokr_w2_b):
            if adapter_name in container:  # re-initialised with other options, a factor may change form
                del container[adapter_name]
        (a, b), (c, d) = factorization(self.out_features, config.decompose_factor), factorization(self.in_features, config.decompose_factor)
        first_zero = config.init_weights is True  # True: W1 starts at zero; "lycoris": W2 does
        self._add_factor(adapter_name, "lokr_w1", (a, c), config.r if config.decompose_both else None, zero=first_zero)
        self._add_factor(adapter_name, "lokr_w2", (b, d), config.r, zero=config.init_weights == "lycoris")
        self.configs[adapter_name] = config
        self.set_adapter(self.active_adapters)  # a new adapter trains only once it is set active

    def _add_factor(self, adapter_name: str, name: str, shape: tuple[int, int], rank: int | None, *, zero: bool) -> None:
        """The factor ``name`` of ``shape``, whole, or as ``name_a @ name_b`` of rank ``rank`` when
        that is under half its larger side. A zero factor makes the adapter the identity: a
        whole one is zero, a product has its ``_a`` (W1) or ``_b`` (W2) zero, as PEFT."""
        weight = self.base_layer.weight

        def parameter(shape: tuple[int, int], zeroed: bool) -> nn.Parameter:
            tensor = torch.empty(shape, dtype=self.adapter_dtype, device=weight.device)
            return nn.Parameter(nn.init.zeros_(tensor) if zeroed else nn.init.kaiming_uniform_(tensor, a=math.sqrt(5)))

        if rank is None or rank >= max(shape) / 2:
            getattr(self, name)[adapter_name] = parameter(shape, zero)
            return
        zero_side = "_a" if name == "lokr_w1" else "_b"
        getattr(self, name + "_a")[adapter_name] = parameter((shape[0], rank), zero and zero_side == "_a")
        getattr(self, name + "_b")[adapter_name] = parameter((rank, shape[1]), zero and zero_side == "_b")

    def delete_adapter(self, adapter_name: str) -> None:
        super().delete_adapter(adapter_name)
        self.configs.pop(adapter_name, None)

    def delta_weight(self, adapter_name: str, *, training: bool = False) -> torch.Tensor:
        """``W1 ⊗ W2 * alpha / r``; while training, each output row is dropped with probability
        ``rank_dropout`` (the kept rows rescaled by the kept fraction with ``rank_dropout_scale``)."""
        config = self.configs[adapter_name]
        delta = torch.kron(self._factor("lokr_w1", adapter_name), self._factor("lokr_w2", adapter_name)) * config.scaling
        if training and config.rank_dropout:
            keep = (torch.rand(delta.shape[0]) > config.rank_dropout).float()
            if config.rank_dropout_scale:
                keep = keep / keep.mean()
            delta = delta * keep.to(delta.device).unsqueeze(1)
        return delta

    def _factor(self, name: str, adapter_name: str) -> torch.Tensor:
        whole = getattr(self, name)
        if adapter_name in whole:
            return whole[adapter_name]
        return getattr(self, name + "_a")[adapter_name] @ getattr(self, name + "_b")[adapter_name]

    def adapter_output(self, adapter_name: str, x: torch.Tensor, result: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """While training, the whole adapter is skipped with probability ``module_dropout``."""
        dropout = self.configs[adapter_name].module_dropout
        if self.training and dropout and torch.rand(1).item() <= dropout:
            return result
        return super().adapter_output(adapter_name, x, result, *args, **kwargs)

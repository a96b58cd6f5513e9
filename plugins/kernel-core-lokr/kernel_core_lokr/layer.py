"""The LoKr layer: per adapter, the Kronecker product of two factors, scaled by ``alpha / r``,
is the update of the wrapped layer's weight.

The output dimension splits as ``out = a * b`` and the input (per group, on a ``Conv2d``) as
``in = c * d`` (see :func:`factorization`); ``W1`` is ``(a, c)`` and ``W2`` is ``(b, d)``, so
``W1 ⊗ W2`` is ``(out, in)``; on a ``Conv2d`` ``W2`` also spans the kernel, ``(b, d, kh, kw)``.
A factor is kept whole (``lokr_w1``, ``lokr_w2``) or, when ``r`` is under half its larger side,
as a rank-``r`` product (``lokr_w1_a @ lokr_w1_b``, ``lokr_w2_a @ lokr_w2_b``; ``W1`` only with
``decompose_both``); a ``Conv2d`` kernel above 1x1 with ``use_effective_conv2d`` keeps a
low-rank ``W2`` as a CP decomposition (core ``lokr_t2``). PEFT's names and shapes. The forward,
merge and unmerge that follow from the update come from :class:`DeltaWeightLayer`.
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
    """LoKr around an ``nn.Linear`` or ``nn.Conv2d``; each adapter's rank, alpha and options
    come from its config for this module (``rank_pattern``/``alpha_pattern`` already applied)."""

    def __init__(self, base_layer: nn.Linear | nn.Conv2d, adapter_name: str, config: LoKrConfig) -> None:
        super().__init__(base_layer)
        self.lokr_w1 = nn.ParameterDict()
        self.lokr_w1_a = nn.ParameterDict()
        self.lokr_w1_b = nn.ParameterDict()
        self.lokr_w2 = nn.ParameterDict()
        self.lokr_w2_a = nn.ParameterDict()
        self.lokr_w2_b = nn.ParameterDict()
        self.lokr_t2 = nn.ParameterDict()
        self.configs: dict[str, LoKrConfig] = {}
        self.update_layer(adapter_name, config)
        self.set_adapter([adapter_name])

    def update_layer(self, adapter_name: str, config: BaseTunerConfig) -> None:
        if not isinstance(config, LoKrConfig):
            raise TypeError(f"LoKr needs a LoKrConfig, got {type(config).__name__}")
        if adapter_name in self.merged_adapters:
            raise ValueError(f"adapter {adapter_name!r} is merged; unmerge before re-initialising it")
        for container in (self.lokr_w1, self.lokr_w1_a, self.lokr_w1_b, self.lokr_w2, self.lokr_w2_a, self.lokr_w2_b, self.lokr_t2):
            if adapter_name in container:  # re-initialised with other options, a factor may change form
                del container[adapter_name]
        out_features, in_per_group, *kernel = self.base_layer.weight.shape if self.is_conv2d else (self.out_features, self.in_features)
        (a, b), (c, d) = factorization(out_features, config.decompose_factor), factorization(in_per_group, config.decompose_factor)
        r, first_zero, second_zero = config.r, config.init_weights is True, config.init_weights == "lycoris"
        if config.decompose_both and r < max(a, c) / 2:
            self._add(adapter_name, {"lokr_w1_a": ((a, r), first_zero), "lokr_w1_b": ((r, c), False)})
        else:
            self._add(adapter_name, {"lokr_w1": ((a, c), first_zero)})
        if r >= max(b, d) / 2:
            self._add(adapter_name, {"lokr_w2": ((b, d, *kernel), second_zero)})
        elif config.use_effective_conv2d and kernel and kernel != [1, 1]:
            self._add(adapter_name, {"lokr_w2_a": ((r, b), False), "lokr_w2_b": ((r, d), second_zero), "lokr_t2": ((r, r, *kernel), False)})
        else:
            self._add(adapter_name, {"lokr_w2_a": ((b, r), False), "lokr_w2_b": ((r, d * math.prod(kernel)), second_zero)})
        self.configs[adapter_name] = config
        self.set_adapter(self.active_adapters)  # a new adapter trains only once it is set active

    def _add(self, adapter_name: str, factors: dict[str, tuple[tuple[int, ...], bool]]) -> None:
        """Each named factor of the given shape, zero where asked (a zero factor makes the adapter
        the identity: ``W1`` or its ``_a`` for ``init_weights=True``, ``W2`` or its ``_b`` for
        ``"lycoris"``, as PEFT), He-initialised otherwise."""
        weight = self.base_layer.weight
        for name, (shape, zero) in factors.items():
            tensor = torch.empty(shape, dtype=self.adapter_dtype, device=weight.device)
            getattr(self, name)[adapter_name] = nn.Parameter(nn.init.zeros_(tensor) if zero else nn.init.kaiming_uniform_(tensor, a=math.sqrt(5)))

    def delete_adapter(self, adapter_name: str) -> None:
        super().delete_adapter(adapter_name)
        self.configs.pop(adapter_name, None)

    def delta_weight(self, adapter_name: str, *, training: bool = False) -> torch.Tensor:
        """``W1 ⊗ W2 * alpha / r`` in the base weight's shape; while training, each output row is
        dropped with probability ``rank_dropout`` (the kept rows rescaled by the kept fraction
        with ``rank_dropout_scale``)."""
        config = self.configs[adapter_name]
        first, second = self._factor("lokr_w1", adapter_name), self._factor("lokr_w2", adapter_name)
        if second.dim() == 4:  # a whole or CP conv factor: W1 spans no kernel positions
            first = first[:, :, None, None]
        delta = (torch.kron(first, second) * config.scaling).reshape(self.base_layer.weight.shape)
        if training and config.rank_dropout:
            keep = (torch.rand(delta.shape[0]) > config.rank_dropout).float()
            if config.rank_dropout_scale:
                keep = keep / keep.mean()
            delta = delta * keep.to(delta.device).view(-1, *[1] * (delta.dim() - 1))
        return delta

    def _factor(self, name: str, adapter_name: str) -> torch.Tensor:
        whole = getattr(self, name)
        if adapter_name in whole:
            return whole[adapter_name]
        a, b = getattr(self, name + "_a")[adapter_name], getattr(self, name + "_b")[adapter_name]
        if name == "lokr_w2" and adapter_name in self.lokr_t2:  # CP: core (r, r, kh, kw), a (r, b), b (r, d)
            return torch.einsum("ijkl,ip,jr->prkl", self.lokr_t2[adapter_name], a, b)
        return a @ b

    def adapter_output(self, adapter_name: str, x: torch.Tensor, result: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """While training, the whole adapter is skipped with probability ``module_dropout``."""
        dropout = self.configs[adapter_name].module_dropout
        if self.training and dropout and torch.rand(1).item() <= dropout:
            return result
        return super().adapter_output(adapter_name, x, result, *args, **kwargs)

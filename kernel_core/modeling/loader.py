"""Read a model's weights by Hugging Face name, fusing projections, and remember where each went.

A model plugin builds its layers from HF parameter names (``model.layers.0.self_attn.q_proj``)
while the forward runs fused tensors (one q/k/v weight per layer). The loader keeps the map
between the two (``slices``), which adapter serving and weight-addressing tools need to reach one HF
module inside a fused projection. Public (:mod:`kernel_core.modeling`, plugin API 1.3).
"""

from __future__ import annotations

import torch

from kernel_core.modeling.layers import FusedLinear
from kernel_core.modeling.weights import SafetensorsCheckpoint


class WeightLoader:
    """Reads one model's tensors from ``checkpoint`` into ``dtype`` on ``device``.

    ``slices`` maps every HF parameter name read so far to the tensor holding it and its rows
    there: ``model.layers.0.self_attn.k_proj.weight`` → (the layer's fused QKV weight, the k rows).
    ``linears`` lists every :class:`FusedLinear` it built, whose weights a platform's GEMM policy
    may later replace with its own layout (``DecoderModel.prepare_weights``).
    """

    def __init__(self, checkpoint: SafetensorsCheckpoint, dtype: torch.dtype, device: torch.device) -> None:
        self.checkpoint, self.dtype, self.device = checkpoint, dtype, device
        self.slices: dict[str, tuple[torch.Tensor, slice]] = {}
        self.linears: list[FusedLinear] = []

    def tensor(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        """The tensor ``name``, which must have ``shape`` (else the error names both)."""
        loaded = self.checkpoint.read([name], [shape], self.dtype, self.device)
        self.slices[name] = (loaded, slice(0, shape[0]))
        return loaded

    def linear(self, modules: dict[str, int], in_features: int, bias: bool) -> FusedLinear:
        """One :class:`FusedLinear` stacking the HF ``modules`` (name → output features) in order,
        e.g. ``{prefix.q_proj: q, prefix.k_proj: kv, prefix.v_proj: kv}`` for one fused QKV GEMM."""
        parts, start = {}, 0
        for name, out_features in modules.items():
            parts[name] = slice(start, start + out_features)
            start += out_features
        fused = FusedLinear(
            self._stack(modules, "weight", (in_features,)), self._stack(modules, "bias", ()) if bias else None, parts
        )
        self.linears.append(fused)
        for name, rows in parts.items():
            self.slices[f"{name}.weight"] = (fused.weight, rows)
            if fused.bias is not None:
                self.slices[f"{name}.bias"] = (fused.bias, rows)
        return fused

    def _stack(self, modules: dict[str, int], kind: str, trailing: tuple[int, ...]) -> torch.Tensor:
        names = [f"{name}.{kind}" for name in modules]
        shapes = [(out_features, *trailing) for out_features in modules.values()]
        return self.checkpoint.read(names, shapes, self.dtype, self.device)

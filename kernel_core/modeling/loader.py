"""Read a model's weights by Hugging Face name, fusing projections, and remember where each went.

A model plugin builds its layers from HF parameter names (``model.layers.0.self_attn.q_proj``)
while the forward runs fused tensors (one q/k/v weight per layer). The loader keeps the map
between the two (``slices``), which adapter serving and weight-addressing tools need to reach one HF
module inside a fused projection. Public (:mod:`kernel_core.modeling`, plugin API 1.3).
"""

from __future__ import annotations

import torch

from kernel_core.modeling.group import SINGLE, TensorParallel
from kernel_core.modeling.layers import ColumnParallelLinear, FusedLinear, RowParallelLinear
from kernel_core.modeling.weights import SafetensorsCheckpoint


class WeightLoader:
    """Reads one model's tensors from ``checkpoint`` into ``dtype`` on ``device``.

    ``slices`` maps every HF parameter name read so far to the tensor holding it and its rows
    there: ``model.layers.0.self_attn.k_proj.weight`` → (the layer's fused QKV weight, the k rows).
    ``linears`` lists every :class:`FusedLinear` it built, whose weights a platform's GEMM policy
    may later replace with its own layout (``DecoderModel.prepare_weights``).

    ``tp`` is the rank's tensor-parallel group (plugin API 1.7): :meth:`column` and :meth:`row`
    then read only the rank's shard of each projection (safetensors slices); at size 1 they are
    :meth:`linear`.
    """

    def __init__(
        self, checkpoint: SafetensorsCheckpoint, dtype: torch.dtype, device: torch.device, tp: TensorParallel = SINGLE
    ) -> None:
        self.checkpoint, self.dtype, self.device, self.tp = checkpoint, dtype, device, tp
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
        return self._record(
            FusedLinear(
                self._stack(modules, "weight", (in_features,)), self._stack(modules, "bias", ()) if bias else None, parts
            )
        )

    def column(self, modules: dict[str, tuple[int, slice]], in_features: int, bias: bool) -> FusedLinear:
        """A column-parallel :meth:`linear`: each HF module's ``(out features, rows this rank
        keeps)`` (:func:`~kernel_core.modeling.attention.qkv_rows`, :meth:`TensorParallel.even_split`);
        the rank's output is its columns of each module's output. Recorded in ``slices`` by the
        rows held (of the shard)."""
        if self.tp.world_size == 1:
            return self.linear({name: out for name, (out, _) in modules.items()}, in_features, bias)
        parts = {
            name: (
                self.checkpoint.lazy(f"{name}.weight", (out, in_features)),
                self.checkpoint.lazy(f"{name}.bias", (out,)) if bias else None,
            )
            for name, (out, _) in modules.items()
        }
        rows = {name: kept for name, (_, kept) in modules.items()}
        return self._record(ColumnParallelLinear.shard(parts, rows, self.tp, dtype=self.dtype, device=self.device))

    def row(self, name: str, out_features: int, in_features: int, bias: bool, *, reduce: bool = True) -> FusedLinear:
        """A row-parallel :meth:`linear` of the one HF module ``name``: this rank's equal share of
        the input columns, its partial sums all-reduced (by the caller where ``reduce`` is False)."""
        if self.tp.world_size == 1:
            return self.linear({name: out_features}, in_features, bias)
        weight = self.checkpoint.lazy(f"{name}.weight", (out_features, in_features))
        bias_source = self.checkpoint.lazy(f"{name}.bias", (out_features,)) if bias else None
        return self._record(
            RowParallelLinear.shard(name, weight, bias_source, self.tp, dtype=self.dtype, device=self.device, reduce=reduce)
        )

    def _record(self, fused: FusedLinear) -> FusedLinear:
        self.linears.append(fused)
        for name, rows in fused.parts.items():
            self.slices[f"{name}.weight"] = (fused.weight, rows)
            if fused.bias is not None:
                self.slices[f"{name}.bias"] = (fused.bias, rows)
        return fused

    def _stack(self, modules: dict[str, int], kind: str, trailing: tuple[int, ...]) -> torch.Tensor:
        names = [f"{name}.{kind}" for name in modules]
        shapes = [(out_features, *trailing) for out_features in modules.values()]
        return self.checkpoint.read(names, shapes, self.dtype, self.device)

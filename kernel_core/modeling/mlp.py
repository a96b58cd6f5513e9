"""The gated (SwiGLU) MLP of a decoder layer: ``down(silu(gate(x)) * up(x))``, gate and up fused.

Llama, Mistral and Qwen layers use it as their MLP; mixture-of-experts layers use it for a shared
expert. Public (:mod:`kernel_core.modeling`, plugin API 1.3).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import PreTrainedConfig

from kernel_core.errors import UnsupportedModelError
from kernel_core.modeling.layers import FusedLinear
from kernel_core.modeling.loader import WeightLoader


class GatedMLP:
    """``[T, hidden]`` → ``[T, hidden]`` in two GEMMs: gate and up in one, then down."""

    def __init__(self, gate_up_proj: FusedLinear, down_proj: FusedLinear) -> None:
        self.gate_up_proj, self.down_proj = gate_up_proj, down_proj

    @classmethod
    def load(
        cls,
        config: PreTrainedConfig,
        loader: WeightLoader,
        prefix: str,
        *,
        bias: bool = False,
        intermediate_size: int | None = None,
        reduce: bool = True,
    ) -> GatedMLP:
        """The MLP whose HF modules are ``{prefix}.gate_proj``, ``.up_proj`` and ``.down_proj``, of
        ``intermediate_size`` (default: the config's ``intermediate_size``); under tensor
        parallelism (``loader.tp``) gate/up column-parallel and down row-parallel, whose partial
        sums the caller all-reduces when ``reduce`` is False (a MoE layer's shared expert)."""
        if config.hidden_act != "silu":
            raise UnsupportedModelError(f"hidden_act {config.hidden_act!r} in config.json is not supported (only silu)")
        hidden, intermediate = config.hidden_size, intermediate_size or config.intermediate_size
        rows = loader.tp.even_split(intermediate, f"the intermediate size of {prefix}")
        gate_up = {f"{prefix}.gate_proj": (intermediate, rows), f"{prefix}.up_proj": (intermediate, rows)}
        return cls(
            loader.column(gate_up, hidden, bias),
            loader.row(f"{prefix}.down_proj", hidden, intermediate, bias, reduce=reduce),
        )

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(hidden).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate).mul_(up))

    def adapter_projections(self) -> dict[str, FusedLinear]:
        """The projections served adapters may act on, by name within the layer."""
        return {"gate_up_proj": self.gate_up_proj, "down_proj": self.down_proj}

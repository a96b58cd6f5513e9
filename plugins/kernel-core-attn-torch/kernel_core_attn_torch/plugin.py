"""Entry point: registers the torch attention backend by name, importing no torch."""

from __future__ import annotations

import kernel_core
from kernel_core.contracts.records import AttentionBackendSpec

kernel_core_api = "1.6"


@kernel_core.hookimpl
def kernel_core_attention_backends() -> list[AttentionBackendSpec]:
    """The torch backend: every platform's default, so it must run wherever torch does."""
    return [
        AttentionBackendSpec(
            name="torch",
            description="Pure torch over the paged KV cache, decode requests batched; any device.",
            implementation="kernel_core_attn_torch.backend:TorchAttention",
            device_types=frozenset({"cpu", "cuda", "xpu"}),
        )
    ]

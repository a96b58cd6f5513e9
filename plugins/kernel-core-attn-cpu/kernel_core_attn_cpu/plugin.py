"""Entry point: registers the CPU attention backend by name, importing no torch."""

from __future__ import annotations

import kernel_core
from kernel_core.contracts.records import AttentionBackendSpec

kernel_core_api = "1.0"


@kernel_core.hookimpl
def kernel_core_attention_backends() -> list[AttentionBackendSpec]:
    """The CPU backend: the CPU platform's default where it was measured faster (see its README)."""
    return [
        AttentionBackendSpec(
            name="cpu",
            description="Decode steps by a C++/OpenMP kernel reading the paged KV cache in place, built on "
            "first use for this CPU; prefill by the torch backend.",
            implementation="kernel_core_attn_cpu.backend:CPUAttention",
            device_types=frozenset({"cpu"}),
        )
    ]

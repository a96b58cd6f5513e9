"""Entry point: registers the Triton attention backend by name, importing neither torch nor triton."""

from __future__ import annotations

import kernel_core
from kernel_core.contracts.records import AttentionBackendSpec

kernel_core_api = "1.6"


@kernel_core.hookimpl
def kernel_core_attention_backends() -> list[AttentionBackendSpec]:
    """The Triton backend: GPUs only (ROCm's torch calls its devices "cuda"). No platform names it
    yet, so an engine gets it only by ``attention_backend="triton"``."""
    return [
        AttentionBackendSpec(
            name="triton",
            description="One Triton kernel per layer over the paged KV cache for the whole mixed step "
            "(vLLM's unified triton_attn design): causal prefill, chunked prefill and decode, GQA, "
            "sliding windows; float32, bfloat16, float16.",
            implementation="kernel_core_attn_triton.backend:TritonAttention",
            device_types=frozenset({"cuda", "xpu"}),
        )
    ]

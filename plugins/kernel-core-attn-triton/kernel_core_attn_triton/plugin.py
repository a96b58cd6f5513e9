"""Entry point: registers the Triton attention backend by name, importing neither torch nor triton."""

from __future__ import annotations

import kernel_core
from kernel_core.contracts.records import AttentionBackendSpec

kernel_core_api = "1.6"

#: Model dtypes the kernel computes (float32 accumulation in each), by torch name.
DTYPES = frozenset({"float32", "bfloat16", "float16"})
#: Largest head size: the kernel holds a [rows, head size] float32 accumulator per program. Any
#: size up to it runs (padded to the next power of two, at least 16, with masked columns).
MAX_HEAD_SIZE = 256


@kernel_core.hookimpl
def kernel_core_attention_backends() -> list[AttentionBackendSpec]:
    """The Triton backend: GPUs only (ROCm's torch calls its devices "cuda"), where the CUDA, ROCm and
    XPU platforms name it as their default; the CPU engine never selects it."""
    return [
        AttentionBackendSpec(
            name="triton",
            description="One Triton kernel per layer over the paged KV cache for the whole mixed step "
            "(vLLM's unified triton_attn design): causal prefill, chunked prefill and decode, GQA, "
            "sliding windows; float32, bfloat16, float16.",
            implementation="kernel_core_attn_triton.backend:TritonAttention",
            device_types=frozenset({"cuda", "xpu"}),
            dtypes=DTYPES,
            head_sizes=frozenset(range(1, MAX_HEAD_SIZE + 1)),
            # block_sizes left empty: any (the kernel's tiles do not depend on the cache's blocks).
        )
    ]

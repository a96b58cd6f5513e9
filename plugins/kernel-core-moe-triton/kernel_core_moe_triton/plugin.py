"""Entry point: registers the Triton MoE kernel by name, importing neither torch nor triton."""

from __future__ import annotations

import kernel_core
from kernel_core.contracts.records import MoEKernelSpec

kernel_core_api = "1.3"


@kernel_core.hookimpl
def kernel_core_moe_kernels() -> list[MoEKernelSpec]:
    """The fused Triton kernel: GPUs only (ROCm's torch calls its devices "cuda"), and above the
    portable torch kernel's priority 0 so that a GPU picks it when no ``moe_kernel`` is named."""
    return [
        MoEKernelSpec(
            name="triton",
            description="Fused Triton MoE (vLLM's fused_moe design): tokens sorted by expert, "
            "gate/up GEMM with SiLU fused, down GEMM weighted by the router; int8 experts.",
            implementation="kernel_core_moe_triton.moe:TritonMoE",
            priority=10,
            device_types=frozenset({"cuda", "xpu"}),
            quantizations=frozenset({"int8"}),
        )
    ]

"""Entry point: registers the Triton LoRA kernel by name, importing neither torch nor triton."""

from __future__ import annotations

import kernel_core
from kernel_core.contracts.records import LoRAKernelSpec

kernel_core_api = "1.6"


@kernel_core.hookimpl
def kernel_core_lora_kernels() -> list[LoRAKernelSpec]:
    """The SGMV Triton kernel: GPUs only (ROCm's torch calls its devices "cuda"), and above the
    portable torch kernel's priority 0 so that a GPU picks it when no ``lora_kernel`` is named."""
    return [
        LoRAKernelSpec(
            name="triton",
            description="Batched unmerged LoRA in Triton (Punica's SGMV): one shrink and one expand "
            "launch per projection over the step's slot segments, float32 accumulation.",
            implementation="kernel_core_lora_triton.kernel:TritonLoRAKernel",
            priority=10,
            device_types=frozenset({"cuda", "xpu"}),
        )
    ]

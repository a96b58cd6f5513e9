"""Entry point: registers the torch LoRA kernel by name, importing no torch (discovery stays fast)."""

from __future__ import annotations

import kernel_core
from kernel_core.contracts.records import LoRAKernelSpec

kernel_core_api = "1.1"


@kernel_core.hookimpl
def kernel_core_lora_kernels() -> list[LoRAKernelSpec]:
    """The pure-torch batched LoRA kernel, for any device; platforms and plugins may register faster ones."""
    return [
        LoRAKernelSpec(
            name="torch",
            description="Batched unmerged LoRA (shrink/expand per adapter group) in plain torch, any device.",
            implementation="kernel_core_lora_torch.kernel:TorchLoRAKernel",
            priority=0,
        )
    ]

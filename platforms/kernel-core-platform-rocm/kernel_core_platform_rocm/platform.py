"""AMD GPUs as a kernel-core platform."""

from __future__ import annotations

import os

import torch

from kernel_core.contracts.platform import MemoryInfo, Platform

VISIBILITY_VARIABLES = ("HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES")


class ROCmPlatform(Platform):
    """AMD GPUs through a ROCm build of torch, which exposes them as ``torch.cuda`` devices.

    So the torch device type is ``cuda``, and detection calls ``torch.cuda.is_available()``,
    which initialises the HIP runtime but creates no device context.
    """

    name = "rocm"
    device_type = "cuda"
    # Triton's kernels by name (plugin API 1.6): each gives way, with a warning, to the portable
    # torch one (attention) or the highest-priority one that runs here (LoRA, MoE) where its plugin
    # is not installed or reports itself unavailable.
    default_attention_backend = "triton"
    default_attention_reason = "one Triton kernel launch per layer for the whole mixed step over the paged cache"
    default_lora_kernel = "triton"
    default_lora_reason = "Triton shrink and expand over the step's per-token adapter slots"
    default_moe_kernel = "triton"
    default_moe_reason = "Triton's fused top-k expert GEMMs"

    @classmethod
    def is_available(cls) -> bool:
        """A ROCm build of torch that sees at least one GPU."""
        return torch.version.hip is not None and torch.cuda.is_available()

    @classmethod
    def unavailable_reason(cls) -> str:
        if torch.version.hip is None:
            if torch.version.cuda is not None:
                return (
                    f"torch {torch.__version__} is a CUDA build (CUDA {torch.version.cuda}), not ROCm; "
                    "use the cuda platform"
                )
            return f"torch {torch.__version__} was built without ROCm"
        hints = "".join(f"; {v}={os.environ[v]!r}" for v in VISIBILITY_VARIABLES if v in os.environ)
        return f"no ROCm device visible (torch {torch.__version__}, HIP {torch.version.hip}{hints})"

    def device_count(self) -> int:
        return torch.cuda.device_count()

    def device_name(self, index: int = 0) -> str:
        return torch.cuda.get_device_name(index)

    def supported_dtypes(self) -> tuple[torch.dtype, ...]:
        """bfloat16 first: it has float32's range at half the memory, and torch counts it as
        supported on every ROCm GPU (``torch.cuda.is_bf16_supported()`` is True on any HIP
        build, so asking would add nothing). Then float16, then float32."""
        return (torch.bfloat16, torch.float16, torch.float32)

    def distributed_backend(self) -> str:
        """RCCL, which ROCm builds of torch expose under the name ``nccl``."""
        return "nccl"

    def memory_info(self, index: int = 0) -> MemoryInfo:
        """What the runtime reports free on the whole device, other processes' use included."""
        free, total = torch.cuda.mem_get_info(index)
        return MemoryInfo(total_bytes=total, free_bytes=free)

"""NVIDIA GPUs as a kernel-core platform."""

from __future__ import annotations

import os

import torch

from kernel_core.contracts.platform import MemoryInfo, Platform


class CUDAPlatform(Platform):
    """NVIDIA GPUs through a CUDA build of torch.

    Detection calls ``torch.cuda.is_available()``, which initialises the driver but creates no
    device context; set ``PYTORCH_NVML_BASED_CUDA_CHECK=1`` to keep even the driver untouched
    (for example before forking workers).
    """

    name = "cuda"
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
        """A CUDA (not ROCm) build of torch that sees at least one GPU."""
        return torch.version.hip is None and torch.cuda.is_available()

    @classmethod
    def unavailable_reason(cls) -> str:
        if torch.version.hip is not None:
            return (
                f"torch {torch.__version__} is a ROCm build (HIP {torch.version.hip}); "
                "use the rocm platform"
            )
        if torch.version.cuda is None:
            return f"torch {torch.__version__} was built without CUDA"
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        hint = f"; CUDA_VISIBLE_DEVICES={visible!r}" if visible is not None else ""
        return f"no CUDA device visible (torch {torch.__version__}, CUDA {torch.version.cuda}{hint})"

    def device_count(self) -> int:
        return torch.cuda.device_count()

    def device_name(self, index: int = 0) -> str:
        return torch.cuda.get_device_name(index)

    def supported_dtypes(self) -> tuple[torch.dtype, ...]:
        """bfloat16 first where the GPU computes it natively (compute capability 8.0+): it has
        float32's range at half the memory, so it cannot overflow where float16 might. Then
        float16, then float32 (exact, but twice the memory and far slower on tensor cores)."""
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return (torch.bfloat16, torch.float16, torch.float32)
        return (torch.float16, torch.float32)

    def distributed_backend(self) -> str:
        return "nccl"

    def memory_info(self, index: int = 0) -> MemoryInfo:
        """What the driver reports free on the whole device, other processes' use included."""
        free, total = torch.cuda.mem_get_info(index)
        return MemoryInfo(total_bytes=total, free_bytes=free)

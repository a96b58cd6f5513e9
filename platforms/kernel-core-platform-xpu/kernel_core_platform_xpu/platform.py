"""Intel GPUs as a kernel-core platform."""

from __future__ import annotations

import os

import torch

from kernel_core.contracts.platform import MemoryInfo, Platform

VISIBILITY_VARIABLES = ("ZE_AFFINITY_MASK", "ONEAPI_DEVICE_SELECTOR")


class XPUPlatform(Platform):
    """Intel GPUs through ``torch.xpu``; detection asks ``torch.xpu.is_available()``, which
    counts devices without initialising torch's XPU state."""

    name = "xpu"
    device_type = "xpu"
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
        """A torch with XPU support that sees at least one Intel GPU."""
        return hasattr(torch, "xpu") and torch.xpu.is_available()

    @classmethod
    def unavailable_reason(cls) -> str:
        if not hasattr(torch, "xpu"):
            return f"torch {torch.__version__} has no torch.xpu module"
        if torch.version.xpu is None:
            return f"torch {torch.__version__} was built without XPU support"
        hints = "".join(f"; {v}={os.environ[v]!r}" for v in VISIBILITY_VARIABLES if v in os.environ)
        return f"no XPU device visible (torch {torch.__version__}, SYCL {torch.version.xpu}{hints})"

    def device_count(self) -> int:
        return torch.xpu.device_count()

    def device_name(self, index: int = 0) -> str:
        return torch.xpu.get_device_name(index)

    def supported_dtypes(self) -> tuple[torch.dtype, ...]:
        """bfloat16 first where the GPU converts it natively (float32's range at half the
        memory), float16 where the GPU has it, float32 always, last (twice the memory)."""
        halves = []
        if torch.xpu.is_bf16_supported(including_emulation=False):
            halves.append(torch.bfloat16)
        if torch.xpu.get_device_properties().has_fp16:
            halves.append(torch.float16)
        return (*halves, torch.float32)

    def distributed_backend(self) -> str:
        """oneCCL (``xccl``) when this torch was built with it, else ``gloo``, which moves the
        data through host memory. (``is_xccl_available`` is absent where torch.distributed is.)"""
        is_xccl_available = getattr(torch.distributed, "is_xccl_available", None)
        return "xccl" if is_xccl_available is not None and is_xccl_available() else "gloo"

    def memory_info(self, index: int = 0) -> MemoryInfo:
        """Free memory as the driver reports it; where the driver cannot report it
        (``mem_get_info`` raises RuntimeError), total minus what this process has reserved."""
        try:
            free, total = torch.xpu.mem_get_info(index)
        except RuntimeError:
            total = torch.xpu.get_device_properties(index).total_memory
            free = total - torch.xpu.memory_reserved(index)
        return MemoryInfo(total_bytes=total, free_bytes=free)

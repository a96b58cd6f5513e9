"""Entry point: registers the ROCm platform by name, importing no torch (discovery stays fast)."""

from __future__ import annotations

import kernel_core
from kernel_core.contracts.records import PlatformSpec

kernel_core_api = "1.6"


@kernel_core.hookimpl
def kernel_core_platforms() -> list[PlatformSpec]:
    """The ROCm platform, above CPU (0) and XPU (50); it never ties with CUDA (also 100)
    because a torch build is either CUDA or ROCm, and each reports itself unavailable on the other."""
    return [
        PlatformSpec(
            name="rocm",
            description="AMD GPUs through a ROCm build of torch (bfloat16, RCCL as nccl).",
            implementation="kernel_core_platform_rocm.platform:ROCmPlatform",
            priority=100,
            capabilities=frozenset({"graphs", "pinned-memory", "triton"}),
        )
    ]

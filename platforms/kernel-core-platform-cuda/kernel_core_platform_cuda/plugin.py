"""Entry point: registers the CUDA platform by name, importing no torch (discovery stays fast)."""

from __future__ import annotations

import kernel_core
from kernel_core.contracts.records import PlatformSpec

kernel_core_api = "1.6"


@kernel_core.hookimpl
def kernel_core_platforms() -> list[PlatformSpec]:
    """The CUDA platform, above CPU (0) and XPU (50); it never ties with ROCm (also 100)
    because a torch build is either CUDA or ROCm, and each reports itself unavailable on the other."""
    return [
        PlatformSpec(
            name="cuda",
            description="NVIDIA GPUs through a CUDA build of torch (bfloat16 where native, nccl).",
            implementation="kernel_core_platform_cuda.platform:CUDAPlatform",
            priority=100,
            capabilities=frozenset({"graphs", "pinned-memory", "triton"}),
        )
    ]

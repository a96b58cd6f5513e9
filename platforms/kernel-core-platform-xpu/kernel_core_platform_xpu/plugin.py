"""Entry point: registers the XPU platform by name, importing no torch (discovery stays fast)."""

from __future__ import annotations

import kernel_core
from kernel_core.contracts.records import PlatformSpec

kernel_core_api = "1.6"


@kernel_core.hookimpl
def kernel_core_platforms() -> list[PlatformSpec]:
    """The XPU platform, above CPU (0) and below CUDA and ROCm (100): a machine with both an
    Intel GPU and a discrete NVIDIA or AMD one runs on the latter unless told otherwise."""
    return [
        PlatformSpec(
            name="xpu",
            description="Intel GPUs through torch.xpu (bfloat16 where native, xccl when built in).",
            implementation="kernel_core_platform_xpu.platform:XPUPlatform",
            priority=50,
            capabilities=frozenset({"graphs", "pinned-memory", "triton"}),
        )
    ]

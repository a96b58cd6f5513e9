"""Entry point: registers the CPU platform by name, importing no torch (discovery stays fast)."""

from __future__ import annotations

import kernel_core
from kernel_core.contracts.records import PlatformSpec

kernel_core_api = "1.0"


@kernel_core.hookimpl
def kernel_core_platforms() -> list[PlatformSpec]:
    """The CPU platform, at priority 0 so that any available accelerator wins over it."""
    return [
        PlatformSpec(
            name="cpu",
            description="Host CPU through torch; always available, the fallback (float32, gloo).",
            implementation="kernel_core_platform_cpu.platform:CPUPlatform",
            priority=0,
            capabilities=frozenset({"host-memory"}),
        )
    ]

"""Entry point: registers the CPU MoE kernel by name, importing no torch."""

from __future__ import annotations

import kernel_core
from kernel_core.contracts.records import MoEKernelSpec

kernel_core_api = "1.6"


@kernel_core.hookimpl
def kernel_core_moe_kernels() -> list[MoEKernelSpec]:
    """The CPU kernel: the CPU platform's default on AVX-512 F/BW/VL CPUs, where it was measured."""
    return [
        MoEKernelSpec(
            name="cpu",
            description="The torch kernel's grouping, with int8 experts multiplied by a compiled AVX-512 GEMM "
            "that converts the weights in registers (built on first use for this CPU).",
            implementation="kernel_core_moe_cpu.kernel:CPUMoE",
            device_types=frozenset({"cpu"}),
            quantizations=frozenset({"int8"}),
            # Above the portable torch kernel (0), below the Triton kernel (10) where that runs.
            priority=5,
        )
    ]

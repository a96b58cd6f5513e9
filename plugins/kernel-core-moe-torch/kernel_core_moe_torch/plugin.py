"""Entry point: registers the torch MoE kernel by name, importing no torch."""

from __future__ import annotations

import kernel_core
from kernel_core.contracts.records import MoEKernelSpec

kernel_core_api = "1.3"


@kernel_core.hookimpl
def kernel_core_moe_kernels() -> list[MoEKernelSpec]:
    """The torch kernel: the default wherever no faster kernel registers a higher priority."""
    return [
        MoEKernelSpec(
            name="torch",
            description="Tokens sorted by expert, one GEMM pair per expert that received tokens; int8 experts; "
            "any device.",
            implementation="kernel_core_moe_torch.kernel:TorchMoE",
            device_types=frozenset({"cpu", "cuda", "xpu"}),
            quantizations=frozenset({"int8"}),
        )
    ]

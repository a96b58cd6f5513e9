"""Entry point: registers the multiprocess executor by name, importing no torch (discovery stays fast)."""

from __future__ import annotations

import kernel_core
from kernel_core.contracts.records import ExecutorSpec

kernel_core_api = "1.7"


@kernel_core.hookimpl
def kernel_core_executors() -> list[ExecutorSpec]:
    """The ``mp`` executor, at priority 0: below uniproc, so size 1 stays in one process, and the
    one a size above 1 selects when no other runs it."""
    return [
        ExecutorSpec(
            name="mp",
            description="Rank 0 in the engine's process, one process per other rank on this node; "
            "steps broadcast over torch.distributed (gloo on the CPU, NCCL on GPUs).",
            implementation="kernel_core_executor_mp.executor:MultiprocExecutor",
            priority=0,
        )
    ]

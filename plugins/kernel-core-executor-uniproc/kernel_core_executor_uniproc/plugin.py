"""Entry point: registers the uniproc executor by name, importing no torch (discovery stays fast)."""

from __future__ import annotations

import kernel_core
from kernel_core.contracts.records import ExecutorSpec

kernel_core_api = "1.7"


@kernel_core.hookimpl
def kernel_core_executors() -> list[ExecutorSpec]:
    """The uniproc executor, at priority 10: the default wherever one worker runs the model."""
    return [
        ExecutorSpec(
            name="uniproc",
            description="One worker in the engine's process (tensor_parallel_size 1); nothing copied per step.",
            implementation="kernel_core_executor_uniproc.executor:UniprocExecutor",
            priority=10,
            max_tensor_parallel_size=1,
        )
    ]

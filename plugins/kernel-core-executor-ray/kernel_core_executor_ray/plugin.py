"""Entry point: registers the Ray executor by name, importing neither torch nor ray."""

from __future__ import annotations

import kernel_core
from kernel_core.contracts.records import ExecutorSpec

kernel_core_api = "1.7"


@kernel_core.hookimpl
def kernel_core_executors() -> list[ExecutorSpec]:
    """The ``ray`` executor, at priority -10: named (``distributed_executor="ray"``), never chosen
    over the local ``mp`` one by priority."""
    return [
        ExecutorSpec(
            name="ray",
            description="Rank 0 in the engine's process, the other ranks as Ray actors on a Ray cluster "
            "(one node or many); steps broadcast over torch.distributed.",
            implementation="kernel_core_executor_ray.executor:RayExecutor",
            priority=-10,
        )
    ]

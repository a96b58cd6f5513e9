"""One worker, built and called in the engine's process: a step's plain data is handed over by
reference, so the seam costs a method call per step and no copy."""

from __future__ import annotations

from kernel_core.contracts.executor import Executor, ExecutorContext, ModelStep, StepResult, Worker
from kernel_core.contracts.serving import ServedAdapter
from kernel_core.errors import KernelCoreError


class UniprocExecutor(Executor):
    """Today's engine: a single worker of rank 0, ``tensor_parallel_size`` 1 only."""

    def __init__(self, context: ExecutorContext) -> None:
        if context.tensor_parallel_size != 1:
            raise KernelCoreError(
                f"tensor_parallel_size {context.tensor_parallel_size}: the uniproc executor runs one worker in the "
                "engine's process; install kernel-core-executor-mp and set distributed_executor 'mp' to split the "
                "model across ranks"
            )
        super().__init__(context)
        self._worker: Worker | None = context.create_worker(0, 1)

    @property
    def worker(self) -> Worker:
        """The worker, while the executor runs."""
        if self._worker is None:
            raise KernelCoreError("the uniproc executor was shut down: build a new engine to run steps")
        return self._worker

    def execute(self, step: ModelStep) -> StepResult:
        result = self.worker.execute(step)
        assert result is not None, "the driver worker returned no result"
        return result

    def write_adapter(self, slot: int, kind: str, adapter: ServedAdapter) -> None:
        self.worker.write_adapter(slot, kind, adapter)

    def check_health(self) -> None:
        """Raises once shut down; a worker in this process cannot die alone."""
        if self._worker is None:
            raise KernelCoreError("the uniproc executor was shut down")

    def shutdown(self) -> None:
        self._worker = None  # its model, KV caches and slots are freed with the last reference

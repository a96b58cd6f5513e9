"""Tensor parallelism on one node: rank 0 runs in the engine's process, every other rank in a
process of its own, started with ``spawn``, which loads its shard and then runs the steps rank 0
broadcasts over the ranks' ``torch.distributed`` group (:class:`~kernel_core_executor_mp.group.GroupExecutor`)."""

from __future__ import annotations

import multiprocessing
import time
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from kernel_core.contracts.executor import ExecutorContext
from kernel_core.errors import KernelCoreError
from kernel_core_executor_mp.group import GroupExecutor, GroupSettings
from kernel_core_executor_mp.rank import FAILED, RankSetup, main


class MultiprocExecutor(GroupExecutor):
    """``tensor_parallel_size`` ranks on this node; a dead or hung rank fails the step that needed
    it, and every later one, naming the rank, rather than hanging the engine."""

    def __init__(self, context: ExecutorContext, settings: GroupSettings | None = None) -> None:
        self._processes: dict[int, BaseProcess] = {}
        super().__init__(context, settings)

    def start_ranks(self, setups: list[RankSetup]) -> None:
        spawn = multiprocessing.get_context("spawn")
        pipes: dict[int, Connection] = {}
        for setup in setups:
            receive, send = spawn.Pipe(duplex=False)
            process = spawn.Process(target=main, args=(setup, send), name=f"kcore-tp-rank-{setup.rank}", daemon=True)
            process.start()
            send.close()
            self._processes[setup.rank], pipes[setup.rank] = process, receive
        deadline = time.monotonic() + self.settings.start_timeout_s
        while pipes:
            for rank, pipe in list(pipes.items()):
                if pipe.poll(0.05):
                    try:
                        status, detail = pipe.recv()
                    except EOFError:
                        status, detail = FAILED, self._exit_text(rank)
                    if status == FAILED:
                        raise KernelCoreError(f"tensor-parallel worker rank {rank} failed to start: {detail}")
                    del pipes[rank]
                elif not self._processes[rank].is_alive():
                    raise KernelCoreError(f"tensor-parallel worker rank {rank} failed to start: {self._exit_text(rank)}")
            if pipes and time.monotonic() > deadline:
                waiting = ", ".join(map(str, sorted(pipes)))
                raise KernelCoreError(
                    f"tensor-parallel worker rank(s) {waiting} did not load their shards within start_timeout_s "
                    f"{self.settings.start_timeout_s:g} (--plugin-option executor.mp.start_timeout_s=...)"
                )

    def _exit_text(self, rank: int) -> str:
        process = self._processes[rank]
        process.join(1)
        return f"process {process.pid} exited with code {process.exitcode}"

    def gone_ranks(self) -> dict[int, str]:
        return {rank: self._exit_text(rank) for rank, process in self._processes.items() if not process.is_alive()}

    def stop_ranks(self) -> None:
        """Asked, then terminated, then killed."""
        for process in self._processes.values():
            process.join(5)
        for process in self._processes.values():
            if process.is_alive():
                process.terminate()
                process.join(5)
            if process.is_alive():
                process.kill()
                process.join()

"""Tensor parallelism on one node: rank 0 runs in the engine's process (the driver, which samples
and answers), every other rank in a process of its own, started with ``spawn``. Each step's plain
data is broadcast to the ranks over their ``torch.distributed`` group, the same group whose
all-reduces the sharded model runs: there is no transport of our own."""

from __future__ import annotations

import logging
import multiprocessing
import os
import socket
import time
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

import torch
import torch.distributed as dist
from pydantic import Field

from kernel_core.contracts.executor import Executor, ExecutorContext, ModelStep, StepResult, Worker
from kernel_core.contracts.serving import ServedAdapter
from kernel_core.contracts.settings import PluginSettings
from kernel_core.errors import KernelCoreError
from kernel_core_executor_mp.rank import FAILED, RankSetup, Step, Stop, WriteAdapter, broadcast, join_group, main

log = logging.getLogger(__name__)


class MultiprocSettings(PluginSettings):
    """``--plugin-option executor.mp.KEY=VALUE``."""

    start_timeout_s: float = Field(
        default=600, gt=0, description="How long the ranks may take to load their shards before start-up fails."
    )
    collective_timeout_s: float = Field(
        default=300, gt=0, description="How long a collective may wait for a rank before the step fails (a hung rank)."
    )
    threads_per_rank: int | None = Field(
        default=None, ge=1,
        description="torch threads of each rank, the engine's process included; None: the CPU's cores shared "
        "evenly between the ranks on the CPU, torch's default on GPUs.",
    )


class MultiprocExecutor(Executor):
    """``tensor_parallel_size`` ranks on this node; a dead or hung rank fails the step that needed
    it, and every later one, naming the rank, rather than hanging the engine."""

    Settings = MultiprocSettings

    def __init__(self, context: ExecutorContext, settings: MultiprocSettings | None = None) -> None:
        super().__init__(context)
        self.settings = settings or MultiprocSettings()
        size = context.tensor_parallel_size
        if dist.is_initialized():
            raise KernelCoreError(
                f"tensor_parallel_size {size}: this process already belongs to a torch.distributed group; the mp "
                "executor starts its own (run the engine in a process of its own)"
            )
        threads = self.settings.threads_per_rank
        if threads is None and context.distributed_backend == "gloo":
            threads = max(1, (os.cpu_count() or 1) // size)
        if threads is not None:
            torch.set_num_threads(threads)
        self._failure: str | None = None
        self._processes: dict[int, BaseProcess] = {}
        self._driver: Worker | None = None
        address = f"tcp://127.0.0.1:{_free_port()}"
        setups = [
            RankSetup(
                context.build_worker, rank, size, address, context.distributed_backend,
                self.settings.collective_timeout_s, threads,
            )
            for rank in range(size)
        ]
        try:
            self._start(setups[1:])
            self._driver = context.create_worker(0, size)
            join_group(setups[0])
        except BaseException:
            self._stop_processes()
            raise

    def _start(self, setups: list[RankSetup]) -> None:
        """Start a process per rank and wait until each has loaded its shard; the first that fails
        (or dies, or outlasts ``start_timeout_s``) stops them all, named in the error."""
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

    @property
    def driver(self) -> Worker:
        if self._driver is None:
            raise KernelCoreError("the mp executor was shut down: build a new engine to run steps")
        if self._failure is not None:
            raise KernelCoreError(self._failure)
        return self._driver

    def execute(self, step: ModelStep) -> StepResult:
        driver = self.driver
        try:
            broadcast(Step(step))
            result = driver.execute(step)
        except Exception as exc:
            self._check_ranks(exc)
            raise
        assert result is not None, "the driver worker returned no result"
        return result

    def write_adapter(self, slot: int, kind: str, adapter: ServedAdapter) -> None:
        driver = self.driver
        try:
            broadcast(WriteAdapter(slot, kind, adapter))
            driver.write_adapter(slot, kind, adapter)
        except Exception as exc:
            self._check_ranks(exc)
            raise

    def _check_ranks(self, exc: Exception) -> None:
        """After a failed step: a rank that is gone (or a collective that timed out) breaks the
        executor for good, so this and every later step fail naming it; otherwise the step's own
        error stands (a bad request) and the ranks go on."""
        if isinstance(exc, KernelCoreError) or not isinstance(exc, RuntimeError | dist.DistBackendError):
            return
        deadline = time.monotonic() + 2  # a killed rank's peers may notice before its exit is reaped
        while time.monotonic() < deadline and all(p.is_alive() for p in self._processes.values()):
            time.sleep(0.05)
        gone = [f"rank {rank} ({self._exit_text(rank)})" for rank, p in self._processes.items() if not p.is_alive()]
        what = f"tensor-parallel worker {', '.join(gone)} is gone" if gone else f"a collective failed: {exc}"
        self._failure = f"{what}; the engine cannot run steps any more: shut it down and start a new one"
        self._stop_processes()
        raise KernelCoreError(self._failure) from exc

    def check_health(self) -> None:
        self.driver
        gone = [rank for rank, process in self._processes.items() if not process.is_alive()]
        if gone:
            raise KernelCoreError(
                f"tensor-parallel worker rank(s) {', '.join(map(str, gone))} are gone: "
                + "; ".join(self._exit_text(rank) for rank in gone)
            )

    def shutdown(self) -> None:
        if self._driver is None:
            return
        if self._failure is None and all(p.is_alive() for p in self._processes.values()):
            try:
                broadcast(Stop())
            except Exception:  # noqa: BLE001 - the processes are stopped below either way
                log.warning("tensor-parallel workers did not take the stop; stopping them", exc_info=True)
        self._stop_processes()
        self._driver = None

    def _stop_processes(self) -> None:
        """Every worker process ended (asked, then terminated, then killed) and the group left."""
        for process in self._processes.values():
            process.join(5)
        for process in self._processes.values():
            if process.is_alive():
                process.terminate()
                process.join(5)
            if process.is_alive():
                process.kill()
                process.join()
        if dist.is_initialized():
            dist.destroy_process_group()


def _free_port() -> int:
    """A TCP port free on the loopback now, for the group's rendezvous."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]

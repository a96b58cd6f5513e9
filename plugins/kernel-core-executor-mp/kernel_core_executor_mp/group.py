"""The driver side of tensor parallelism, whatever runs the other ranks: rank 0 in the engine's
process (it samples and answers), the others started by a subclass (local processes, Ray actors),
each step's plain data broadcast over the ranks' ``torch.distributed`` group, and a rank that is
gone failing the step, and every later one, by name. Public, so that an executor placing ranks
elsewhere (``kernel-core-executor-ray``) says only how to start, watch and stop them."""

from __future__ import annotations

import logging
import os
import socket
import time
from abc import abstractmethod

import torch
import torch.distributed as dist
from pydantic import Field

from kernel_core.contracts.executor import Executor, ExecutorContext, ModelStep, StepResult, Worker
from kernel_core.contracts.serving import ServedAdapter
from kernel_core.contracts.settings import PluginSettings
from kernel_core.errors import KernelCoreError
from kernel_core_executor_mp.rank import RankSetup, Step, Stop, WriteAdapter, broadcast, join_group

log = logging.getLogger(__name__)


class GroupSettings(PluginSettings):
    """``--plugin-option executor.NAME.KEY=VALUE`` of an executor built on :class:`GroupExecutor`."""

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


class GroupExecutor(Executor):
    """``tensor_parallel_size`` ranks in one ``torch.distributed`` group, rank 0 in this process.

    A subclass starts ranks 1..N-1 (:meth:`start_ranks`, returning once each has loaded its shard
    or raising naming the first that failed), says which are gone (:meth:`gone_ranks`) and stops
    them (:meth:`stop_ranks`); :meth:`rendezvous_host` is where the others reach rank 0."""

    Settings = GroupSettings

    def __init__(self, context: ExecutorContext, settings: GroupSettings | None = None) -> None:
        super().__init__(context)
        self.settings = settings or self.Settings()
        size = context.tensor_parallel_size
        if dist.is_initialized():
            raise KernelCoreError(
                f"tensor_parallel_size {size}: this process already belongs to a torch.distributed group; the "
                f"{type(self).__name__} starts its own (run the engine in a process of its own)"
            )
        threads = self.settings.threads_per_rank
        if threads is None and context.distributed_backend == "gloo":
            threads = max(1, (os.cpu_count() or 1) // size)
        if threads is not None:
            torch.set_num_threads(threads)
        self._failure: str | None = None
        self._driver: Worker | None = None
        host = self.rendezvous_host()
        address = f"tcp://{host}:{_free_port(host)}"
        setups = [
            RankSetup(
                context.build_worker, rank, size, address, context.distributed_backend,
                self.settings.collective_timeout_s, threads,
            )
            for rank in range(size)
        ]
        try:
            self.start_ranks(setups[1:])
            self._driver = context.create_worker(0, size)
            join_group(setups[0])
        except BaseException:
            self._stop()
            raise

    # --- what a subclass says ---------------------------------------------------------------------

    def rendezvous_host(self) -> str:
        """The address the other ranks reach this process on (default: the loopback)."""
        return "127.0.0.1"

    @abstractmethod
    def start_ranks(self, setups: list[RankSetup]) -> None:
        """Start a rank per setup and wait, within ``start_timeout_s``, until each has built its
        worker; raise :class:`KernelCoreError` naming the first that failed (the caller stops all)."""

    @abstractmethod
    def gone_ranks(self) -> dict[int, str]:
        """Rank -> how it ended, for every started rank that is no longer running."""

    @abstractmethod
    def stop_ranks(self) -> None:
        """End every started rank (asked to stop already, when it could be): nothing left running."""

    # --- the driver ------------------------------------------------------------------------------

    @property
    def driver(self) -> Worker:
        if self._driver is None:
            raise KernelCoreError(f"the {type(self).__name__} was shut down: build a new engine to run steps")
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
        if isinstance(exc, KernelCoreError) or not isinstance(exc, RuntimeError):  # torch.distributed errors included
            return
        deadline = time.monotonic() + 2  # a killed rank's peers may notice before its end is seen
        while time.monotonic() < deadline and not self.gone_ranks():
            time.sleep(0.05)
        gone = self.gone_ranks()
        listed = ", ".join(f"rank {rank} ({how})" for rank, how in sorted(gone.items()))
        what = f"tensor-parallel worker {listed} is gone" if gone else f"a collective failed: {exc}"
        self._failure = f"{what}; the engine cannot run steps any more: shut it down and start a new one"
        self._stop()
        raise KernelCoreError(self._failure) from exc

    def check_health(self) -> None:
        self.driver
        gone = self.gone_ranks()
        if gone:
            raise KernelCoreError(
                "tensor-parallel worker " + ", ".join(f"rank {rank} ({how})" for rank, how in sorted(gone.items()))
                + " is gone"
            )

    def shutdown(self) -> None:
        if self._driver is None:
            return
        if self._failure is None and not self.gone_ranks():
            try:
                broadcast(Stop())
            except Exception:  # noqa: BLE001 - the ranks are stopped below either way
                log.warning("tensor-parallel workers did not take the stop; stopping them", exc_info=True)
        self._stop()
        self._driver = None

    def _stop(self) -> None:
        self.stop_ranks()
        if dist.is_initialized():
            dist.destroy_process_group()


def _free_port(host: str) -> int:
    """A TCP port free on ``host`` now, for the group's rendezvous."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]

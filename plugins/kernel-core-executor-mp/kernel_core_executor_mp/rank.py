"""What runs in each worker process: build the rank's worker (its model shard), say so to the
engine's process, join the ranks' ``torch.distributed`` group, then run every command rank 0
broadcasts until told to stop or until the group breaks (rank 0 gone)."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from multiprocessing.connection import Connection
from typing import Any

import torch
import torch.distributed as dist

from kernel_core.contracts.executor import ModelStep, Worker
from kernel_core.contracts.serving import ServedAdapter

log = logging.getLogger(__name__)

#: What a worker sends once built: READY, or FAILED with the error's text.
READY, FAILED = "ready", "failed"


@dataclass(frozen=True)
class RankSetup:
    """Everything a worker process needs, sent to it when it starts (picklable)."""

    build_worker: Callable[[int, int], Worker]
    rank: int
    world_size: int
    init_method: str
    backend: str
    timeout_s: float
    threads: int | None


@dataclass(frozen=True)
class Step:
    step: ModelStep


@dataclass(frozen=True)
class WriteAdapter:
    slot: int
    kind: str
    adapter: ServedAdapter


@dataclass(frozen=True)
class Stop:
    pass


Command = Step | WriteAdapter | Stop


def broadcast(command: Command | None) -> Command:
    """Rank 0 sends ``command`` to every rank; the others pass None and get it."""
    box: list[Any] = [command]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def join_group(setup: RankSetup) -> None:
    """This process's membership of the ranks' group (rank 0 calls it in the engine's process)."""
    dist.init_process_group(
        setup.backend, init_method=setup.init_method, rank=setup.rank, world_size=setup.world_size,
        timeout=timedelta(seconds=setup.timeout_s),
    )


def main(setup: RankSetup, connection: Connection) -> None:
    """A worker process's whole life; its exit code is 0 after a Stop, 1 otherwise."""
    if setup.threads is not None:
        torch.set_num_threads(setup.threads)
    try:
        worker = setup.build_worker(setup.rank, setup.world_size)
    except BaseException as exc:  # noqa: BLE001 - reported to the engine, which names this rank
        connection.send((FAILED, f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
        raise SystemExit(1) from None
    connection.send((READY, ""))
    connection.close()
    join_group(setup)
    try:
        serve(worker)
    finally:
        dist.destroy_process_group()


def serve(worker: Worker) -> None:
    """Run what rank 0 broadcasts. A step that raises here raised on rank 0 too (every rank runs
    the same computation), so the error is logged and the next command awaited; a broken group
    (rank 0 gone, a collective timed out) ends the process."""
    while True:
        command = broadcast(None)
        if isinstance(command, Stop):
            return
        try:
            if isinstance(command, Step):
                worker.execute(command.step)
            else:
                worker.write_adapter(command.slot, command.kind, command.adapter)
        except Exception:  # noqa: BLE001 - a failed step fails its requests on rank 0, not the ranks
            log.exception("tensor-parallel rank %d: command failed", dist.get_rank())

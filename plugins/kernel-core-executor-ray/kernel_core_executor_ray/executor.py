"""Tensor-parallel ranks placed on a Ray cluster: rank 0 in the engine's process, every other rank
a Ray actor (one CPU per thread, or one GPU, each) that loads its shard, joins the ranks'
``torch.distributed`` group at this node's address and runs the steps rank 0 broadcasts
(:class:`~kernel_core_executor_mp.group.GroupExecutor`). Ray places and watches the workers;
the step data never goes through Ray."""

from __future__ import annotations

import os
import socket
from typing import Any

import ray
import torch
import torch.distributed as dist
from pydantic import Field
from ray.exceptions import GetTimeoutError, RayActorError, RayError, RayTaskError

from kernel_core.contracts.executor import ExecutorContext, Worker
from kernel_core.errors import KernelCoreError
from kernel_core_executor_mp.group import GroupExecutor, GroupSettings
from kernel_core_executor_mp.rank import RankSetup, join_group, serve

#: The shared memory a Ray instance started for the engine reserves: the ranks exchange nothing
#: through Ray's object store beyond their start-up settings.
LOCAL_OBJECT_STORE_BYTES = 256 * 2**20


class RaySettings(GroupSettings):
    """``--plugin-option executor.ray.KEY=VALUE``."""

    address: str | None = Field(
        default=None,
        description="The Ray cluster's address (host:port of its head, as `ray start --head` prints); None: "
        "RAY_ADDRESS, else a Ray instance started on this machine for the engine and stopped with it.",
    )
    connect_timeout_s: float = Field(
        default=10, gt=0, description="How long the cluster's address may take to answer before start-up fails."
    )


class RankActor:
    """One rank, run by Ray as an actor: :meth:`build` loads its shard, :meth:`serve` runs until stopped."""

    def __init__(self) -> None:
        self.worker: Worker | None = None

    def build(self, setup: RankSetup) -> str:
        if setup.threads is not None:
            torch.set_num_threads(setup.threads)
        self.worker = setup.build_worker(setup.rank, setup.world_size)
        return f"{socket.gethostname()} pid {os.getpid()}"

    def serve(self, setup: RankSetup) -> None:
        assert self.worker is not None, "serve before build"
        join_group(setup)
        try:
            serve(self.worker)
        finally:
            dist.destroy_process_group()


class RayExecutor(GroupExecutor):
    """``tensor_parallel_size`` ranks on a Ray cluster (``address``), or on a Ray instance started
    here; a rank whose actor dies or hangs fails the step, and every later one, by name."""

    Settings = RaySettings

    def __init__(self, context: ExecutorContext, settings: RaySettings | None = None) -> None:
        settings = settings or RaySettings()
        self._actors: dict[int, Any] = {}
        self._serving: dict[int, Any] = {}
        self._started_ray = _connect(settings, context.tensor_parallel_size)
        super().__init__(context, settings)

    def rendezvous_host(self) -> str:
        return ray.util.get_node_ip_address()

    def start_ranks(self, setups: list[RankSetup]) -> None:
        actor_class = ray.remote(RankActor)
        builds = {}
        for setup in setups:
            resources = {"num_gpus": 1} if setup.backend == "nccl" else {"num_cpus": setup.threads or 1}
            self._actors[setup.rank] = actor_class.options(**resources).remote()
            builds[setup.rank] = self._actors[setup.rank].build.remote(setup)
        for rank, ref in builds.items():
            try:
                ray.get(ref, timeout=self.settings.start_timeout_s)
            except GetTimeoutError:
                raise KernelCoreError(
                    f"tensor-parallel worker rank {rank} did not load its shard within start_timeout_s "
                    f"{self.settings.start_timeout_s:g} (is the cluster short of CPUs or GPUs? `ray status` tells; "
                    "--plugin-option executor.ray.start_timeout_s=...)"
                ) from None
            except RayError as exc:
                raise KernelCoreError(f"tensor-parallel worker rank {rank} failed to start: {_cause(exc)}") from None
        for setup in setups:
            self._serving[setup.rank] = self._actors[setup.rank].serve.remote(setup)

    def gone_ranks(self) -> dict[int, str]:
        gone = {}
        for rank, ref in self._serving.items():
            ready, _ = ray.wait([ref], timeout=0)
            if ready:
                try:
                    ray.get(ref)
                    gone[rank] = "its actor stopped"
                except RayError as exc:
                    gone[rank] = f"its Ray actor ended: {_cause(exc)}"
        return gone

    def stop_ranks(self) -> None:
        """Asked (by the stop already broadcast), then killed; a Ray instance started here stopped."""
        if self._serving:
            ray.wait(list(self._serving.values()), num_returns=len(self._serving), timeout=5)
        for actor in self._actors.values():
            ray.kill(actor)
        self._actors.clear()
        self._serving.clear()
        if self._started_ray:
            ray.shutdown()
            self._started_ray = False


def _connect(settings: RaySettings, size: int) -> bool:
    """Join the cluster at ``settings.address`` (else ``RAY_ADDRESS``), refusing at once one that
    does not answer; else start a Ray instance here. True when it was started here."""
    if ray.is_initialized():
        return False
    address = settings.address or os.environ.get("RAY_ADDRESS")
    if address in (None, "", "local"):
        ray.init(
            num_cpus=max(os.cpu_count() or 1, size), include_dashboard=False,
            object_store_memory=LOCAL_OBJECT_STORE_BYTES, configure_logging=False,
        )
        return True
    if address != "auto":
        host, _, port = address.removeprefix("ray://").rpartition(":")
        try:
            with socket.create_connection((host, int(port)), timeout=settings.connect_timeout_s):
                pass
        except (OSError, ValueError) as exc:
            raise KernelCoreError(
                f"the Ray cluster at {address!r} does not answer ({exc}): start it (`ray start --head` on its head "
                "node) or name another with --plugin-option executor.ray.address=HOST:PORT"
            ) from None
    ray.init(address=address, configure_logging=False)
    return False


def _cause(exc: RayError) -> str:
    """The error a rank raised (not Ray's wrapping of it), or how its actor died."""
    if isinstance(exc, RayTaskError) and exc.cause is not None:
        return f"{type(exc.cause).__name__}: {exc.cause}"
    if isinstance(exc, RayActorError):
        return "the actor's process died"
    return str(exc)

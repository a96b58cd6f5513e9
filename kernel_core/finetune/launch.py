"""``kcore finetune --nproc N``: the same command on N processes of this machine, through torch's
elastic launcher (what ``torchrun`` runs), each rank running ``python -m kernel_core finetune ...``.

``Trainer`` finds the ranks from the launcher's environment and trains with DDP over
``torch.distributed`` (the platform's backend: gloo on the CPU, NCCL on GPUs). When a rank dies,
the launcher stops the others and this module says which rank died and how; nothing is left running.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Sequence

from kernel_core.errors import KernelCoreError

#: Environment a launcher sets on every rank; present means "already one rank of a launched run".
RANK_ENV = "LOCAL_RANK"


def launched() -> bool:
    """Whether this process is one rank of a ``torchrun``/``accelerate launch``/``--nproc`` run."""
    return RANK_ENV in os.environ


def max_processes() -> tuple[int, str]:
    """How many ranks this machine can run, and what limits it: one per GPU, else one per usable core."""
    from kernel_core.platforms import current_platform

    platform = current_platform()
    if platform.device().type == "cpu":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return cores, f"{cores} usable CPU core(s)"
    count = platform.device_count()
    return count, f"{count} {platform.device().type} device(s)"


def check_nproc(nproc: int) -> None:
    """Refuse more ranks than the machine has devices (or cores, on the CPU), naming both numbers."""
    limit, what = max_processes()
    if nproc > limit:
        raise KernelCoreError(f"--nproc {nproc} is more than this machine allows: it has {what}")


def launch(nproc: int, argv: Sequence[str]) -> None:
    """Run ``python -m kernel_core finetune *argv`` on ``nproc`` local ranks and wait for them;
    a rank that fails fails the run with a :class:`KernelCoreError` saying which and how."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    check_nproc(nproc)
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=f"kcore-finetune-{os.getpid()}",
        rdzv_backend="c10d",
        rdzv_endpoint="127.0.0.1:0",
        max_restarts=0,
        monitor_interval=0.2,
    )
    # the launcher's own log lines repeat, less readably, what describe_failure says
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    try:
        elastic_launch(config, entrypoint=sys.executable)("-m", "kernel_core", "finetune", *argv)
    except ChildFailedError as exc:
        raise KernelCoreError(describe_failure(exc.failures, nproc)) from None


def describe_failure(failures: dict[int, object], nproc: int) -> str:
    """Which rank failed and how (its exit status, or the signal that killed it). Ranks the launcher
    stopped with SIGTERM because another failed are not the cause, so they are left out."""
    causes = {rank: f for rank, f in failures.items() if getattr(f, "exitcode", None) != -signal.SIGTERM} or failures
    parts = []
    for rank, failure in sorted(causes.items()):
        code = getattr(failure, "exitcode", None)
        how = f"was killed by {signal.Signals(-code).name}" if code is not None and code < 0 else f"exited with status {code} (its error is above)"
        parts.append(f"rank {rank} of {nproc} (pid {getattr(failure, 'pid', '?')}) {how}")
    return "; ".join(parts) + "; the other ranks were stopped and nothing is left running"

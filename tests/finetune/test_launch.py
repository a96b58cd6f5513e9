"""``--nproc``: the rank limit, and how a failed rank is reported (the real launches are in
tests/finetune/test_distributed.py)."""

from __future__ import annotations

import os
import signal
from types import SimpleNamespace

import pytest

from kernel_core.errors import KernelCoreError
from kernel_core.finetune import launch


def test_more_ranks_than_cores_is_refused_with_both_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KERNEL_CORE_PLATFORM", "cpu")
    cores = len(os.sched_getaffinity(0))
    launch.check_nproc(cores)
    with pytest.raises(KernelCoreError, match=rf"--nproc {cores + 1} is more than this machine allows: it has {cores} usable CPU core"):
        launch.check_nproc(cores + 1)


def test_the_failed_rank_is_named_not_the_ones_stopped_after_it() -> None:
    failures = {
        0: SimpleNamespace(exitcode=-signal.SIGTERM, pid=11),
        1: SimpleNamespace(exitcode=-signal.SIGKILL, pid=12),
    }
    message = launch.describe_failure(failures, 2)
    assert message.startswith("rank 1 of 2 (pid 12) was killed by SIGKILL;") and "rank 0" not in message
    assert "nothing is left running" in message


def test_ranks_that_exit_with_an_error_point_at_it() -> None:
    message = launch.describe_failure({0: SimpleNamespace(exitcode=2, pid=5), 1: SimpleNamespace(exitcode=2, pid=6)}, 2)
    assert "rank 0 of 2 (pid 5) exited with status 2 (its error is above); rank 1 of 2 (pid 6) exited with status 2" in message


def test_launched_reads_the_launcher_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert not launch.launched()
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert launch.launched()

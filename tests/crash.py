"""Crash tests' tools: run an operation in a real child process and kill it with SIGKILL, either
right before its N-th write or after a delay, as SQLite's and PostgreSQL's crash tests do.

:func:`killed_before_write` and :func:`killed_after` fork the test process, so the child starts in
milliseconds with everything the test built; it does file work only (torch in it runs on one
thread, as in a DataLoader worker after a fork). Whole commands (``kcore finetune``, a model
conversion) run in children of a :class:`Zygote`: a fresh process that imports torch and
transformers once, computes nothing, and forks a child per run, so a run starts in a fraction of a
second instead of several and many kills fit in a test.
"""

from __future__ import annotations

import builtins
import io
import itertools
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: The ``os`` calls that change the disk; with opening a file for writing, the "write points".
WRITE_CALLS = ("mkdir", "replace", "rename", "unlink", "rmdir", "fsync")


def killed_before_write(operation: Callable[[], object], n: int) -> bool:
    """Run ``operation`` in a child that kills itself with SIGKILL right before its ``n``-th write
    point; True when it was killed, False when it finished first (it wrote fewer than ``n`` times)."""
    return _reap(_fork(lambda: (_kill_at_write(n), operation())))


def killed_after(operation: Callable[[], object], delay: float) -> bool:
    """Run ``operation`` in a child and SIGKILL it ``delay`` seconds later; True when it was killed,
    False when it had finished by then."""
    pid = _fork(operation)
    time.sleep(delay)
    os.kill(pid, signal.SIGKILL)  # a finished child stays a zombie until reaped: the pid is still its
    return _reap(pid)


def timed(operation: Callable[[], object]) -> float:
    """Seconds ``operation`` takes in a child, to spread kill delays over."""
    started = time.perf_counter()
    assert not _reap(_fork(operation))
    return time.perf_counter() - started


def _fork(operation: Callable[[], object]) -> int:
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            if "torch" in sys.modules:
                sys.modules["torch"].set_num_threads(1)
            operation()
            status = 0
        except BaseException:  # noqa: BLE001 - report anything, then leave without pytest's teardown
            traceback.print_exc()
        finally:
            os._exit(status)
    return pid


def _reap(pid: int) -> bool:
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
        return True
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"the child failed (wait status {status})"
    return False


def _kill_at_write(n: int) -> None:
    """Patch the write points of this (child) process so that the ``n``-th one kills it."""
    count = itertools.count(1)

    def armed(function: Callable[..., Any], is_write: Callable[..., bool] = lambda *a, **k: True) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            if is_write(*args, **kwargs) and next(count) == n:
                os.kill(os.getpid(), signal.SIGKILL)
            return function(*args, **kwargs)

        return call

    for name in WRITE_CALLS:
        setattr(os, name, armed(getattr(os, name)))
    builtins.open = io.open = armed(io.open, _opens_for_writing)


def _opens_for_writing(file: object, mode: str = "r", *args: Any, **kwargs: Any) -> bool:
    return any(flag in mode for flag in "wax+")


_ZYGOTE = """
import importlib, json, os, sys, traceback
for module in sys.argv[1:]:
    importlib.import_module(module)
print("ready", flush=True)
for line in sys.stdin:
    command = json.loads(line)
    if "reap" in command:
        print(os.waitpid(command["reap"], 0)[1], flush=True)
        continue
    # the log is emptied before the pid is answered: a test reading it never sees the last run's
    log = os.open(command["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    pid = os.fork()
    if pid == 0:
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.environ.update(command["env"])
        status = 0
        try:
            exec(command["code"], {"__name__": "__main__"})
        except SystemExit as exit:
            status = exit.code if isinstance(exit.code, int) else 1
        except BaseException:
            traceback.print_exc()
            status = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    os.close(log)
    print(pid, flush=True)
"""


class Zygote:
    """A process that has imported ``preload`` and forks one child per :meth:`start`; children run
    on the CPU with one thread, whatever the machine has. A child stays unreaped (a zombie) until
    :meth:`Child.wait`, so its pid is never another process's when the test kills it."""

    def __init__(self, *preload: str) -> None:
        environment = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "KERNEL_CORE_PLATFORM": "cpu"}
        self.process = subprocess.Popen(
            [sys.executable, "-c", _ZYGOTE, *preload], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env=environment,
        )
        assert self.process.stdout is not None and self.process.stdout.readline() == "ready\n", "the zygote died"

    def start(self, code: str, log: Path, env: dict[str, str] | None = None) -> Child:
        """Fork a child that runs the Python ``code`` (as ``python -c`` would), output into ``log``."""
        return Child(self, int(self.request({"code": code, "log": str(log), "env": env or {}})), log)

    def request(self, command: dict[str, Any]) -> str:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        assert line, "the zygote died"
        return line

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=60)


class Child:
    """One run forked by a :class:`Zygote`."""

    def __init__(self, zygote: Zygote, pid: int, log: Path) -> None:
        self.zygote, self.pid, self.log = zygote, pid, log

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def ended(self) -> bool:
        """Whether the run is over (a zombie, waiting for :meth:`wait`)."""
        return Path(f"/proc/{self.pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"

    def wait_for(self, text: str, timeout: float = 300.0) -> None:
        """Until ``text`` is in the output, or the run has ended."""
        deadline = time.monotonic() + timeout
        while text not in self.output() and not self.ended():
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"no {text!r} after {timeout} s: {self.output()}")
            time.sleep(0.01)

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)  # a zombie ignores it

    def wait(self, timeout: float = 300.0) -> int:
        """The run's exit status, or minus the signal that killed it (as ``Popen.wait``)."""
        deadline = time.monotonic() + timeout
        while not self.ended():
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"the run did not end in {timeout} s: {self.output()}")
            time.sleep(0.01)
        status = int(self.zygote.request({"reap": self.pid}))
        return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)

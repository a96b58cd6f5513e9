"""A real ``kcore`` process for tests: its command line, its output collected as it comes, and the
check that Ctrl-C ended it as ``kcore`` promises (one line on stderr, status 130, no traceback)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import TypeVar

#: ``kcore`` run by this interpreter, from the working tree, with Ctrl-C armed as under a terminal:
#: a test run started in the background of a non-interactive shell (``make test &``) inherits SIGINT
#: ignored, and Python then installs no KeyboardInterrupt handler, so the Ctrl-C tests would test nothing.
KCORE = [
    sys.executable, "-c",
    "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "from kernel_core.cli import main; sys.exit(main())",
]
#: The exit status of a command stopped by Ctrl-C.
INTERRUPTED = 130
T = TypeVar("T")


class Output:
    """Everything a pipe or pty gives, read by a thread, so a test can wait for what it needs."""

    def __init__(self, fd: int) -> None:
        self._chunks: list[bytes] = []
        self._thread = threading.Thread(target=self._read, args=(fd,), daemon=True)
        self._thread.start()

    def _read(self, fd: int) -> None:
        while True:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # a pty whose other side closed
                return
            if not chunk:
                return
            self._chunks.append(chunk)

    @property
    def text(self) -> str:
        return b"".join(self._chunks).decode(errors="replace")

    def wait_for(self, pattern: str, process: subprocess.Popen, timeout: float = 120.0) -> re.Match[str]:
        """The first match of ``pattern``; fails if the process ends or ``timeout`` passes first."""
        return wait_until(lambda: re.search(pattern, self.text), process, lambda: f"{pattern!r} in:\n{self.text}",
                          timeout)

    def rest(self, timeout: float = 10.0) -> str:
        """The whole text once the other side has closed."""
        self._thread.join(timeout)
        return self.text


def wait_until(condition: Callable[[], T], process: subprocess.Popen, what: Callable[[], str],
               timeout: float = 120.0) -> T:
    """``condition()`` once true; fails, saying ``what()`` was awaited, if ``process`` ends or
    ``timeout`` passes first."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert process.poll() is None, f"exited {process.returncode} before {what()}"
        assert time.monotonic() < deadline, f"nothing within {timeout} s: {what()}"
        time.sleep(0.02)
    return result


def assert_stopped_by_ctrl_c(code: int, stderr: str, command: str, note: str = "") -> None:
    """Status 130, no traceback, and stderr ending with ``kcore``'s one line for ``command``."""
    assert code == INTERRUPTED, stderr
    assert "Traceback" not in stderr, stderr
    assert stderr.rsplit("\n", 2)[-2:] == [f"kcore: {command} interrupted{note}", ""], stderr

"""Compiled CPU kernels for plugins: one C++ source built on first use, once per machine, with the host's
C++ compiler for this CPU (``-march=native``), cached under ``$KERNEL_CORE_CACHE/<folder>`` keyed by the
source, the flags, the compiler and the CPU, then loaded with ctypes.

Sources include no torch headers, so a build takes about a second, not the minute a
``torch.utils.cpp_extension`` build takes: a fresh clone's test run pays it once. Their OpenMP runtime
is the ``libgomp.so.1`` torch has already loaded (same soname), so kernels and torch share one pool.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

FLAGS = ("-O3", "-march=native", "-fopenmp", "-std=c++17", "-shared", "-fPIC")
#: Environment variable naming the compiler (default ``c++``, then ``g++``).
ENV_COMPILER = "KERNEL_CORE_CXX"


class BuildError(RuntimeError):
    """The compiler is missing or rejected the source."""


def build_library(source: Path, folder: str, flags: tuple[str, ...] = FLAGS) -> Path:
    """The shared library built from ``source`` with ``flags`` for this machine, compiled now unless
    the cache has it (a test may add ``-mno-...`` flags to build a kernel's portable path).

    Raises :class:`BuildError` (no compiler, or it failed: its last error lines are in the message) or
    ``OSError`` / ``subprocess.SubprocessError`` from running it.
    """
    compiler = _compiler()
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60).stdout
    digest = hashlib.sha256(
        b"\0".join([source.read_bytes(), " ".join(flags).encode(), version.encode(), _cpu_signature()])
    ).hexdigest()[:16]
    root = Path(os.environ.get("KERNEL_CORE_CACHE") or "~/.cache/kernel_core").expanduser() / folder
    target = root / f"{source.stem}-{digest}.so"
    if target.is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    # Compile beside the target, then rename: a reader never loads a half-written library.
    handle, staging = tempfile.mkstemp(prefix=f".{source.stem}-", suffix=".so", dir=root)
    os.close(handle)
    try:
        done = subprocess.run([compiler, *flags, str(source), "-o", staging], capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise BuildError(f"{compiler} failed on {source.name} (exit {done.returncode}): {done.stderr.strip()[-2000:]}")
        os.replace(staging, target)
    finally:
        if os.path.exists(staging):
            os.unlink(staging)
    return target


def _compiler() -> str:
    for name in filter(None, (os.environ.get(ENV_COMPILER), "c++", "g++")):
        found = shutil.which(name)
        if found:
            return found
    raise BuildError(f"no C++ compiler found (c++, g++, or ${ENV_COMPILER})")


def _cpu_signature() -> bytes:
    """The CPU's model and flags, so that a cache shared by machines never loads another's build."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return os.uname().machine.encode()
    wanted = ("model name", "flags", "Features", "CPU part")
    return "\n".join(sorted({line for line in lines if line.split(":")[0].strip() in wanted})).encode()

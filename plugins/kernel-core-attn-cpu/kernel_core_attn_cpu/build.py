"""Build the decode kernel on first use, once per machine: ``paged_decode.cpp`` compiled with the host's
C++ compiler for this CPU (``-march=native``) and cached under ``$KERNEL_CORE_CACHE/attn-cpu``, keyed
by the source, the compiler and the CPU, then loaded with ctypes.

The source includes no torch headers, so a build takes about a second, not the minute a
``torch.utils.cpp_extension`` build of the same loop takes: a fresh clone's test run pays it once.
Its OpenMP runtime is the ``libgomp.so.1`` torch has already loaded (same soname), so the kernel and
torch share one thread pool.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

SOURCE = Path(__file__).with_name("paged_decode.cpp")
FLAGS = ("-O3", "-march=native", "-fopenmp", "-std=c++17", "-shared", "-fPIC")
#: Environment variable naming the compiler (default ``c++``, then ``g++``).
ENV_COMPILER = "KERNEL_CORE_CXX"


class Layout(ctypes.Structure):
    """Mirror of ``Layout`` in ``paged_decode.cpp``."""

    _fields_ = [
        (name, ctypes.c_int64)
        for name in (
            "q_token_stride", "q_head_stride", "out_token_stride", "out_head_stride", "num_heads",
            "num_kv_heads", "head_size", "block_size", "table_stride", "window",
        )
    ] + [("scale", ctypes.c_float)]


@dataclass(frozen=True)
class Kernel:
    """The loaded library, or why there is none."""

    library: ctypes.CDLL | None
    error: str | None
    max_heads: int = 0
    max_head: int = 0


@functools.cache
def kernel() -> Kernel:
    """The decode kernel for this machine, built (or found in the cache) on the first call."""
    try:
        path = _build()
        library = ctypes.CDLL(str(path))
    except (OSError, subprocess.SubprocessError, BuildError) as exc:
        return Kernel(None, str(exc))
    pointer = ctypes.c_void_p
    arguments = [pointer, pointer, ctypes.c_int64, pointer, pointer, pointer, pointer, ctypes.c_int64,
                 ctypes.POINTER(Layout), pointer, ctypes.c_int]
    for name in ("kc_decode_f32", "kc_decode_bf16"):
        function = getattr(library, name)
        function.argtypes, function.restype = arguments, None
    library.kc_max_heads.restype = library.kc_max_head.restype = ctypes.c_int64
    return Kernel(library, None, library.kc_max_heads(), library.kc_max_head())


class BuildError(RuntimeError):
    """The compiler is missing or rejected the source."""


def _compiler() -> str:
    for name in filter(None, (os.environ.get(ENV_COMPILER), "c++", "g++")):
        found = shutil.which(name)
        if found:
            return found
    raise BuildError("no C++ compiler found (c++, g++, or $KERNEL_CORE_CXX)")


def _cpu_signature() -> bytes:
    """The CPU's model and flags, so that a cache shared by machines never loads another's build."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return os.uname().machine.encode()
    wanted = ("model name", "flags", "Features", "CPU part")
    return "\n".join(sorted({line for line in lines if line.split(":")[0].strip() in wanted})).encode()


def _build() -> Path:
    compiler = _compiler()
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60).stdout
    digest = hashlib.sha256(
        b"\0".join([SOURCE.read_bytes(), " ".join(FLAGS).encode(), version.encode(), _cpu_signature()])
    ).hexdigest()[:16]
    root = Path(os.environ.get("KERNEL_CORE_CACHE") or "~/.cache/kernel_core").expanduser() / "attn-cpu"
    target = root / f"paged_decode-{digest}.so"
    if target.is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    # Compile beside the target, then rename: a reader never loads a half-written library.
    handle, staging = tempfile.mkstemp(prefix=".paged_decode-", suffix=".so", dir=root)
    os.close(handle)
    try:
        done = subprocess.run(
            [compiler, *FLAGS, str(SOURCE), "-o", staging], capture_output=True, text=True, timeout=300
        )
        if done.returncode != 0:
            raise BuildError(f"{compiler} failed on {SOURCE.name} (exit {done.returncode}): {done.stderr.strip()[-2000:]}")
        os.replace(staging, target)
    finally:
        if os.path.exists(staging):
            os.unlink(staging)
    return target

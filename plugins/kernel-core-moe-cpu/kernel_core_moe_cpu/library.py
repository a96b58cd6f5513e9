"""The int8 GEMM, ``int8_gemm.cpp``, built on first use for this CPU by the CPU platform's
:func:`~kernel_core_platform_cpu.native.build_library` (cached under ``$KERNEL_CORE_CACHE/moe-cpu``),
and loaded with ctypes."""

from __future__ import annotations

import ctypes
import functools
import subprocess
from dataclasses import dataclass
from pathlib import Path

from kernel_core_platform_cpu.native import FLAGS, BuildError, build_library

SOURCE = Path(__file__).with_name("int8_gemm.cpp")
#: The GEMM's entry point per activation dtype name.
GEMMS = {"float32": "kc_int8_gemm_f32", "bfloat16": "kc_int8_gemm_bf16", "float16": "kc_int8_gemm_f16"}


@dataclass(frozen=True)
class Library:
    """The loaded library, or why there is none."""

    handle: ctypes.CDLL | None
    error: str | None


@functools.cache
def library() -> Library:
    """The int8 GEMM for this machine, built (or found in the cache) on the first call."""
    return load()


def load(flags: tuple[str, ...] = FLAGS) -> Library:
    """The int8 GEMM built with ``flags`` (the tests build its portable path with ``-mno-avx512f``)."""
    try:
        handle = ctypes.CDLL(str(build_library(SOURCE, "moe-cpu", flags)))
    except (OSError, subprocess.SubprocessError, BuildError) as exc:
        return Library(None, str(exc))
    pointer, size, count = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    handle.kc_int8_pack.argtypes, handle.kc_int8_pack.restype = [pointer, size, size, size, pointer, count], None
    for name in GEMMS.values():
        function = getattr(handle, name)
        function.argtypes = [pointer, size, size, size, pointer, size, pointer, pointer, size, count]
        function.restype = None
    handle.kc_int8_packed_bytes.argtypes, handle.kc_int8_packed_bytes.restype = [size, size], size
    return Library(handle, None)

"""The decode and prefill kernels, ``paged_attention.cpp``, built on first use for this CPU by the CPU platform's
:func:`~kernel_core_platform_cpu.native.build_library` (cached under ``$KERNEL_CORE_CACHE/attn-cpu``),
and loaded with ctypes.
"""

from __future__ import annotations

import ctypes
import functools
import subprocess
from dataclasses import dataclass
from pathlib import Path

from kernel_core_platform_cpu.native import BuildError, build_library

SOURCE = Path(__file__).with_name("paged_attention.cpp")


class Layout(ctypes.Structure):
    """Mirror of ``Layout`` in ``paged_attention.cpp``."""

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
    #: Most prefill chunks (requests) one call takes; 0 when this build has no prefill kernel.
    max_prefill_chunks: int = 0

    def has_prefill(self, head_size: int, group: int) -> bool:
        """Whether the prefill kernel covers heads of ``head_size`` with ``group`` query heads per KV head."""
        return self.library is not None and bool(self.library.kc_has_prefill(head_size, group))


@functools.cache
def kernel() -> Kernel:
    """The kernels for this machine, built (or found in the cache) on the first call."""
    try:
        path = build_library(SOURCE, "attn-cpu")
        library = ctypes.CDLL(str(path))
    except (OSError, subprocess.SubprocessError, BuildError) as exc:
        return Kernel(None, str(exc))
    pointer = ctypes.c_void_p
    arguments = [pointer, pointer, ctypes.c_int64, pointer, pointer, pointer, pointer, ctypes.c_int64,
                 ctypes.POINTER(Layout), pointer, ctypes.c_int]
    for name in ("kc_decode_f32", "kc_decode_bf16"):
        function = getattr(library, name)
        function.argtypes, function.restype = arguments, None
    library.kc_has_prefill.argtypes, library.kc_has_prefill.restype = [ctypes.c_int64, ctypes.c_int64], ctypes.c_int
    for name in ("kc_max_heads", "kc_max_head", "kc_max_prefill_chunks"):
        getattr(library, name).restype = ctypes.c_int64
    chunks = 0
    if hasattr(library, "kc_prefill_f32"):  # AVX-512 builds only; the chunks' token counts follow their rows
        library.kc_prefill_f32.argtypes, library.kc_prefill_f32.restype = arguments[:7] + [pointer] + arguments[7:], None
        chunks = library.kc_max_prefill_chunks()
    return Kernel(library, None, library.kc_max_heads(), library.kc_max_head(), chunks)

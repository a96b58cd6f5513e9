"""The CPU a benchmark ran on, from ``lscpu``: machines of this project's kind differ (an AMD EPYC
with AVX2 only, an Intel Xeon with AVX-512 and AMX), so a number means little without it."""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any

from kernel_core.errors import KernelCoreError

#: The flags that change what the kernels can use, shown beside a number (the JSON keeps them all).
KEY_FLAGS = (
    "avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "avx512_vnni", "avx_vnni", "amx_tile", "amx_bf16",
    "amx_fp16", "amx_int8",
)
#: The flags with which a CPU computes a dtype's dot products natively (oneDNN's and torch's checks).
NATIVE_FLAGS = {"bfloat16": ("amx_bf16", "avx512_bf16"), "float16": ("amx_fp16", "avx512_fp16")}


def describe_cpu() -> dict[str, Any]:
    """``lscpu``'s model name and flags, the key flags present, and the CPUs this process may use."""
    fields = parse_lscpu(_lscpu())
    flags = fields.get("Flags", "").split()
    return {
        "model": fields.get("Model name", "unknown (no lscpu)"),
        "key_flags": [flag for flag in KEY_FLAGS if flag in flags],
        "flags": " ".join(flags),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
    }


def summary(cpu: dict[str, Any]) -> str:
    """One line for a report: the model, the key flags and the usable CPUs of :func:`describe_cpu`."""
    return f"CPU: {cpu['model']}, key flags: {' '.join(cpu['key_flags']) or 'none'}; {cpu['usable_cpus']} usable CPUs"


def dtype_support(dtype: str, cpu: dict[str, Any]) -> str:
    """What the CPU of :func:`describe_cpu` has for ``dtype``, for a report: a bfloat16 number on a
    CPU without bf16 dot products measures conversions to float32, not bf16 arithmetic."""
    if dtype not in NATIVE_FLAGS:
        return f"{dtype}: computed natively"
    flags = cpu["flags"].split()
    native = [flag for flag in NATIVE_FLAGS[dtype] if flag in flags]
    if native:
        return f"{dtype}: the CPU has {' '.join(native)} (native {dtype} dot products)"
    return (
        f"{dtype}: the CPU has none of {' '.join(NATIVE_FLAGS[dtype])}: {dtype} GEMMs convert to float32 "
        "(it runs, at float32 speed or slower)"
    )


def check_dtype(dtype: str, cpu: dict[str, Any]) -> None:
    """Refuse float16 on a CPU without float16 dot products: torch emulates it there, so a number
    would measure the emulation; bfloat16 always runs (:func:`dtype_support` says how)."""
    if dtype == "float16" and not set(NATIVE_FLAGS[dtype]) & set(cpu["flags"].split()):
        raise KernelCoreError(
            f"--dtype float16 needs a CPU with {' or '.join(NATIVE_FLAGS[dtype])}; {cpu['model']} has neither "
            "(use float32 or bfloat16)"
        )


def parse_lscpu(text: str) -> dict[str, str]:
    """``Name: value`` lines of ``lscpu``'s output."""
    fields = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep:
            fields.setdefault(name.strip(), value.strip())
    return fields


def _lscpu() -> str:
    if not (lscpu := shutil.which("lscpu")):
        return ""
    try:
        done = subprocess.run([lscpu], capture_output=True, text=True, timeout=10, env={**os.environ, "LC_ALL": "C"})
        return done.stdout
    except (OSError, subprocess.SubprocessError):
        return ""

"""The CPU a benchmark ran on, from ``lscpu``: machines of this project's kind differ (an AMD EPYC
with AVX2 only, an Intel Xeon with AVX-512 and AMX), so a number means little without it."""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any

#: The flags that change what the kernels can use, shown beside a number (the JSON keeps them all).
KEY_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")


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

"""The host CPU as a kernel-core platform."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

from kernel_core.contracts.platform import LinearPolicy, MemoryInfo, Platform
from kernel_core_platform_cpu.gemm import CPULinearPolicy

CPUINFO = Path("/proc/cpuinfo")
MEMINFO = Path("/proc/meminfo")


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (Linux); empty where that file is absent."""
    return frozenset(_cpuinfo("flags").split())


def _cpuinfo(field: str) -> str:
    """The first non-empty value of ``field`` in /proc/cpuinfo, or ""."""
    try:
        lines = CPUINFO.read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        key, _, value = line.partition(":")
        if key.strip() == field and value.strip():
            return value.strip()
    return ""


def default_attention(flags: frozenset[str]) -> tuple[str, str]:
    """The attention backend for a CPU with ``flags``, and why: kernel-core-attn-cpu's compiled
    decode kernel where it was measured faster than the torch backend (AVX-512F, for which it has
    its hand-vectorized dot product; docs/benchmarks.md, issue #16), else the torch backend."""
    if "avx512f" in flags:
        return "cpu", "AVX-512F CPU, where the compiled paged decode kernel was measured faster than torch's"
    return "torch", "no AVX-512F, where the compiled paged decode kernel has not been measured faster"


#: The flags kernel-core-moe-cpu's int8 GEMM is written for (AVX-512 intrinsics, masked 16-bit stores).
MOE_CPU_FLAGS = frozenset({"avx512f", "avx512bw", "avx512vl"})


def default_moe(flags: frozenset[str]) -> tuple[str, str]:
    """The MoE kernel for a CPU with ``flags``, and why: kernel-core-moe-cpu where its compiled int8
    GEMM runs (AVX-512 F/BW/VL; it was measured faster than the torch kernel's int8 paths there and
    computes full-precision experts as the torch kernel does, docs/benchmarks.md), else the torch one."""
    if MOE_CPU_FLAGS <= flags:
        return "cpu", "AVX-512 CPU, where the compiled int8 expert GEMM was measured faster than the torch kernel's"
    return "torch", "no AVX-512 F/BW/VL, which the compiled int8 expert GEMM needs"


class CPUPlatform(Platform):
    """One device, the host CPU; its memory is the host's memory."""

    name = "cpu"
    device_type = "cpu"
    default_attention_backend, default_attention_reason = default_attention(cpu_flags())
    default_moe_kernel, default_moe_reason = default_moe(cpu_flags())

    @classmethod
    def is_available(cls) -> bool:
        """Always: torch runs on every CPU, which is why this platform is the fallback."""
        return True

    def device_count(self) -> int:
        return 1

    def device_name(self, index: int = 0) -> str:
        _check_index(index)
        return f"{processor_model()}, {usable_cores()} cores"

    def supported_dtypes(self) -> tuple[torch.dtype, ...]:
        """float32 first: without AMX or AVX512-BF16, a CPU emulates half-precision matmuls,
        which then usually run slower than float32 ones."""
        return (torch.float32, torch.bfloat16, torch.float16)

    def distributed_backend(self) -> str:
        return "gloo"

    def memory_info(self, index: int = 0) -> MemoryInfo:
        """Host memory; "free" is what the kernel could hand out without swapping (MemAvailable)."""
        _check_index(index)
        return proc_meminfo() or sysconf_meminfo()

    def linear_policy(self) -> LinearPolicy:
        """oneDNN's linear on weights packed at load, for float32 and (where native) bfloat16."""
        return CPULinearPolicy()


def _check_index(index: int) -> None:
    if index != 0:
        raise IndexError(f"the cpu platform has one device, index 0; got {index}")


def processor_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what the ``platform`` module knows."""
    return _cpuinfo("model name") or platform.processor() or platform.machine() or "unknown CPU"


def usable_cores() -> int:
    """Logical CPUs this process may run on: its affinity mask, not the whole host, where known."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def proc_meminfo() -> MemoryInfo | None:
    """MemTotal and MemAvailable from /proc/meminfo (Linux); None where that file is absent."""
    try:
        lines = MEMINFO.read_text().splitlines()
    except OSError:
        return None
    kib: dict[str, int] = {}
    for line in lines:
        key, _, value = line.partition(":")
        fields = value.split()
        if fields and fields[0].isdigit():
            kib[key] = int(fields[0])
    if "MemTotal" not in kib or "MemAvailable" not in kib:
        return None
    return MemoryInfo(total_bytes=kib["MemTotal"] * 1024, free_bytes=kib["MemAvailable"] * 1024)


def sysconf_meminfo() -> MemoryInfo:
    """Physical and free pages from ``os.sysconf`` (other Unixes); free excludes reclaimable cache."""
    page = os.sysconf("SC_PAGE_SIZE")
    return MemoryInfo(
        total_bytes=page * os.sysconf("SC_PHYS_PAGES"),
        free_bytes=page * os.sysconf("SC_AVPHYS_PAGES"),
    )

"""The CPU platform, for real: it runs wherever the tests run."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest
import torch

from kernel_core.contracts.platform import MemoryInfo
from kernel_core_platform_cpu import platform as cpu_platform
from kernel_core_platform_cpu import plugin
from kernel_core_platform_cpu.platform import CPUPlatform, sysconf_meminfo
from kernel_core_sdk.conformance.platform import PlatformConformance


class TestCPUConformance(PlatformConformance):
    @pytest.fixture
    def platform_class(self) -> type[CPUPlatform]:
        return CPUPlatform

    @pytest.fixture
    def plugin_module(self) -> ModuleType:
        return plugin


def test_is_always_available() -> None:
    assert CPUPlatform.is_available() is True


def test_is_the_fallback() -> None:
    (spec,) = plugin.kernel_core_platforms()
    assert spec.priority == 0


def test_one_cpu_device() -> None:
    cpu = CPUPlatform()
    assert cpu.device_count() == 1
    assert cpu.device() == torch.device("cpu")
    with pytest.raises(IndexError):
        cpu.memory_info(1)


def test_device_name_gives_model_and_cores() -> None:
    name = CPUPlatform().device_name()
    model, _, cores = name.rpartition(", ")
    assert model.strip()
    assert cores.endswith(" cores") and int(cores.split()[0]) >= 1


def test_prefers_float32() -> None:
    dtypes = CPUPlatform().supported_dtypes()
    assert dtypes[0] is torch.float32
    assert set(dtypes) == {torch.float32, torch.bfloat16, torch.float16}


def test_uses_gloo() -> None:
    assert CPUPlatform().distributed_backend() == "gloo"


def test_memory_is_sane() -> None:
    info = CPUPlatform().memory_info()
    assert info.total_bytes > 0
    assert 0 < info.free_bytes <= info.total_bytes


def test_reads_proc_meminfo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(
        "MemTotal:       16384 kB\nMemFree:         1024 kB\nMemAvailable:    8192 kB\n"
        "HugePages_Total:       0\n"
    )
    monkeypatch.setattr(cpu_platform, "MEMINFO", meminfo)
    assert CPUPlatform().memory_info() == MemoryInfo(total_bytes=16384 * 1024, free_bytes=8192 * 1024)


def test_falls_back_to_sysconf_without_proc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu_platform, "MEMINFO", tmp_path / "absent")
    info = CPUPlatform().memory_info()
    assert info.total_bytes == sysconf_meminfo().total_bytes
    assert 0 < info.free_bytes <= info.total_bytes


def test_reads_model_name_from_cpuinfo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Example CPU @ 3.00GHz\nflags\t\t: avx2\n")
    monkeypatch.setattr(cpu_platform, "CPUINFO", cpuinfo)
    assert cpu_platform.processor_model() == "Example CPU @ 3.00GHz"


def test_model_name_falls_back_without_cpuinfo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu_platform, "CPUINFO", tmp_path / "absent")
    assert cpu_platform.processor_model().strip()


def test_attention_default_is_the_compiled_kernel_only_on_avx512() -> None:
    """Where the paged decode kernel was measured faster (AVX-512F), else the portable torch backend."""
    assert cpu_platform.default_attention(frozenset({"avx2", "avx512f"}))[0] == "cpu"
    name, reason = cpu_platform.default_attention(frozenset({"avx2"}))
    assert name == "torch" and "no AVX-512F" in reason


def test_moe_default_is_the_compiled_kernel_only_with_avx512_f_bw_vl() -> None:
    """kernel-core-moe-cpu's GEMM needs all three (masked 16-bit stores): else the torch kernel."""
    assert cpu_platform.default_moe(frozenset({"avx2", "avx512f", "avx512bw", "avx512vl"}))[0] == "cpu"
    for flags in ({"avx2"}, {"avx512f"}, {"avx512f", "avx512bw"}):
        name, reason = cpu_platform.default_moe(frozenset(flags))
        assert name == "torch" and "AVX-512 F/BW/VL" in reason

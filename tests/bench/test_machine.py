"""The CPU description a benchmark records beside its numbers."""

from __future__ import annotations

import pytest

from kernel_core.bench import machine

LSCPU = """Architecture:                            x86_64
Model name:                              Example Xeon(R) Processor
Flags:                                   fpu sse avx2 fma avx512f amx_tile amx_bf16
NUMA node0 CPU(s):                       0,1
"""


def test_lscpu_fields_and_key_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(machine, "_lscpu", lambda: LSCPU)
    cpu = machine.describe_cpu()
    assert cpu["model"] == "Example Xeon(R) Processor"
    assert cpu["key_flags"] == ["avx2", "fma", "avx512f", "amx_tile", "amx_bf16"]
    assert cpu["flags"] == "fpu sse avx2 fma avx512f amx_tile amx_bf16" and cpu["usable_cpus"] >= 1
    assert machine.parse_lscpu(LSCPU)["NUMA node0 CPU(s)"] == "0,1"


def test_without_lscpu_the_model_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(machine.shutil, "which", lambda name: None)
    cpu = machine.describe_cpu()
    assert cpu["model"] == "unknown (no lscpu)" and cpu["key_flags"] == [] and cpu["flags"] == ""


def test_summary_names_the_model_key_flags_and_cpus() -> None:
    cpu = {"model": "Example Xeon", "key_flags": ["avx2", "amx_bf16"], "flags": "fpu avx2 amx_bf16", "usable_cpus": 2}
    assert machine.summary(cpu) == "CPU: Example Xeon, key flags: avx2 amx_bf16; 2 usable CPUs"
    assert machine.summary({**cpu, "key_flags": []}) == "CPU: Example Xeon, key flags: none; 2 usable CPUs"

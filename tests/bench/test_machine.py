"""The CPU description a benchmark records beside its numbers."""

from __future__ import annotations

import pytest

from kernel_core.bench import machine
from kernel_core.errors import KernelCoreError

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


@pytest.mark.parametrize(
    ("flags", "dtype", "says"),
    [
        ("avx2 amx_tile amx_bf16", "bfloat16", "bfloat16: the CPU has amx_bf16 (native bfloat16 dot products)"),
        ("avx2 avx512_bf16", "bfloat16", "the CPU has avx512_bf16"),
        ("avx2 fma", "bfloat16", "none of amx_bf16 avx512_bf16: bfloat16 GEMMs convert to float32"),
        ("avx512_fp16", "float16", "the CPU has avx512_fp16"),
        ("avx2", "float32", "float32: computed natively"),
    ],
)
def test_dtype_support_says_what_the_cpu_has(flags: str, dtype: str, says: str) -> None:
    assert says in machine.dtype_support(dtype, {"model": "x", "flags": flags})


def test_float16_is_refused_without_float16_dot_products_and_bfloat16_never() -> None:
    without = {"model": "Example EPYC", "flags": "avx2 avx512f avx512_bf16"}
    with pytest.raises(KernelCoreError, match="float16 needs a CPU with amx_fp16 or avx512_fp16; Example EPYC"):
        machine.check_dtype("float16", without)
    machine.check_dtype("float16", {**without, "flags": "amx_fp16"})
    for dtype in ("float32", "bfloat16"):
        machine.check_dtype(dtype, {**without, "flags": ""})

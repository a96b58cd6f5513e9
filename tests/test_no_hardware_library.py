"""The core holds no hardware-specific code (issue #17): which GEMM library, which CPU features,
which vendor kernels are platform plugins' business (``Platform.linear_policy``, the platform's
default kernels). The benchmarks (``kernel_core/bench``) are the exception: they measure this
machine's GEMM paths and describe its CPU, by name."""

from __future__ import annotations

import re
from pathlib import Path

import kernel_core

PACKAGE = Path(kernel_core.__file__).parent
HARDWARE = re.compile(r"\b(mkl|mkldnn|onednn|avx\w*|amx\w*|cublas\w*|cudnn|rocblas|hipblas\w*|oneapi|sycl)\b", re.I)
#: Where a hardware library may be named, and why.
ALLOWED = {
    # `kcore bench roofline`'s help lists the GEMM paths the benchmark times.
    "cli/bench.py",
}


def test_the_cpu_gemm_policy_lives_in_the_cpu_platform() -> None:
    assert not (PACKAGE / "models" / "gemm.py").exists()
    cpu_gemm = PACKAGE.parent / "platforms" / "kernel-core-platform-cpu" / "kernel_core_platform_cpu" / "gemm.py"
    assert cpu_gemm.exists()


def test_no_core_module_names_a_hardware_library() -> None:
    found = {}
    for file in sorted(PACKAGE.rglob("*.py")):
        relative = file.relative_to(PACKAGE).as_posix()
        if relative.startswith("bench/") or relative in ALLOWED:
            continue
        names = sorted({match.lower() for match in HARDWARE.findall(file.read_text())})
        if names:
            found[relative] = names
    assert found == {}

"""These tests run the kernel compiled on a CUDA GPU when the machine has one, else in Triton's
interpreter on CPU tensors.

Triton reads ``TRITON_INTERPRET`` when ``@triton.jit`` decorates a kernel (so the mode of ours is
fixed when ``kernel_core_attn_triton.kernels`` is first imported) and again at the first launch.
So this conftest, imported by pytest before the test modules beside it, imports the kernel with
the variable set, and an autouse fixture sets it again for each test of this folder only: the
rest of a run never sees it. (kernel-core-moe-triton's tests do the same, for the same reasons.)
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator

import pytest
import torch

INTERPRET = not torch.cuda.is_available()

if INTERPRET:
    # Modules of the plugin imported earlier in the run (compiled) would be kept: import afresh.
    for name in [m for m in sys.modules if m.startswith("kernel_core_attn_triton.")]:
        del sys.modules[name]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRITON_INTERPRET", "1")
        importlib.import_module("kernel_core_attn_triton.kernels")


@pytest.fixture(autouse=True)
def triton_interpreter(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``TRITON_INTERPRET=1`` during each test here, when there is no GPU."""
    if INTERPRET:
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    yield


class CountingKernel:
    """Wraps the Triton kernel and counts its launches (``kernel[grid](...)``)."""

    def __init__(self, kernel: object) -> None:
        self.kernel = kernel
        self.grids: list[tuple[int, ...]] = []

    def __getitem__(self, grid: tuple[int, ...]) -> object:
        self.grids.append(grid)
        return self.kernel[grid]


@pytest.fixture
def launches(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[int, ...]]]:
    """The grid of each launch of the attention kernel during a test."""
    kernels = importlib.import_module("kernel_core_attn_triton.kernels")
    counter = CountingKernel(kernels._paged_attention_kernel)
    monkeypatch.setattr(kernels, "_paged_attention_kernel", counter)
    yield counter.grids

"""These tests run the kernel compiled on a CUDA GPU when the machine has one, else in Triton's
interpreter on CPU tensors: the kernel is imported here with ``TRITON_INTERPRET`` set, and set
again for each test of this folder only (:func:`kernel_core_sdk.triton.interpret_triton_on_cpu`
says why).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator

import pytest

from kernel_core_sdk.triton import interpret_triton_on_cpu

triton_interpreter = interpret_triton_on_cpu("kernel_core_attn_triton.kernels")


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

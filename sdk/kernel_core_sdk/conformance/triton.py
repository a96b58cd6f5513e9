"""Conformance of a Triton kernel plugin on a machine with or without a GPU: compiled on the GPU
when torch sees one, else the very kernel in Triton's interpreter on CPU tensors, imported so by
the tests' conftest (:func:`kernel_core_sdk.triton.interpret_triton_on_cpu`).
"""

from __future__ import annotations

import importlib
from typing import Any, ClassVar

import pytest
import torch

from kernel_core_sdk.triton import gpu_present


def triton_test_device(kernel_module: str) -> torch.device:
    """Where a Triton plugin's tests place tensors: the CPU when ``kernel_module`` was imported
    interpreted (see :func:`kernel_core_sdk.triton.interpret_triton_on_cpu`), else the GPU torch sees."""
    if importlib.import_module(kernel_module).INTERPRETED:
        return torch.device("cpu")
    return torch.device("cuda" if torch.cuda.is_available() else "xpu")


class TritonKernelTests:
    """Mix in before a kind's conformance suite (``class TestX(TritonKernelTests,
    MoEKernelConformance)``) and set :attr:`kernel_module`: the suite then runs on the GPU, or
    without one in the interpreter on the CPU, where the record rightly lists GPUs only but the
    interpreter runs the very kernel (so the suite does not skip it there)."""

    #: The plugin's module defining the ``@triton.jit`` kernels and ``INTERPRETED``.
    kernel_module: ClassVar[str]

    @pytest.fixture
    def device(self) -> torch.device:
        return triton_test_device(self.kernel_module)

    @pytest.fixture
    def device_types(self, plugin_spec: Any) -> frozenset[str]:
        return plugin_spec.device_types | {"cpu"}

    def test_interpreter_only_without_a_gpu(self) -> None:
        assert importlib.import_module(self.kernel_module).INTERPRETED != gpu_present()

"""The SDK's LoRA kernel conformance suite, run against the pure-torch batched kernel."""

from __future__ import annotations

from types import ModuleType

import pytest

from kernel_core_lora_torch import plugin
from kernel_core_lora_torch.kernel import TorchLoRAKernel
from kernel_core_sdk.conformance import LoRAKernelConformance


class TestTorchLoRAKernel(LoRAKernelConformance):
    @pytest.fixture
    def plugin_module(self) -> ModuleType:
        return plugin

    @pytest.fixture
    def plugin_name(self) -> str:
        return "torch"


def test_record() -> None:
    (spec,) = plugin.kernel_core_lora_kernels()
    assert spec.name == "torch" and "cpu" in spec.device_types
    assert spec.load() is TorchLoRAKernel

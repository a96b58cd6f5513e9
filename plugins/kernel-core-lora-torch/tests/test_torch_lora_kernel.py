"""The SDK's LoRA kernel conformance suite, run against the pure-torch batched kernel."""

from __future__ import annotations

from types import ModuleType

import pytest
import torch

from kernel_core.contracts.serving import NO_SLOT
from kernel_core_lora_torch import plugin
from kernel_core_lora_torch.kernel import TorchLoRAKernel
from kernel_core_sdk.conformance import LoRAKernelConformance
from kernel_core_sdk.conformance.lora import check, make_case


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


def test_batched_gemms_match_the_reference() -> None:
    """A decode-sized bfloat16 step with every slot in use, unevenly (padding), takes the batched
    GEMMs, with factors made outside inference mode as the engine makes them; a slot written
    between steps is seen by the next step."""
    slots, cpu, dtype = [0, 2, 0, 1, 2, 3, 1, 0, 3], torch.device("cpu"), torch.bfloat16
    kernel = TorchLoRAKernel()
    first = make_case(slots, dtype, cpu)
    with torch.inference_mode():
        kernel.apply(first.output, first.x, first.lora_a, first.lora_b, first.batch)
    check(first, dtype)
    second = make_case(slots, dtype, cpu, seed=1)
    first.lora_b[1].copy_(second.lora_b[1])
    second.lora_b = first.lora_b
    second.before = (*second.before[:3], first.lora_b.clone())
    with torch.inference_mode():
        kernel.apply(second.output, second.x, second.lora_a, second.lora_b, second.batch)
    check(second, dtype)


def test_batched_gemms_over_some_slots_with_rows_left_alone() -> None:
    """Two of the slots, one row each against three, beside rows without a slot (NaN input
    there): the batched path gathers only the slots in use and leaves those rows bit for bit."""
    slots, cpu, dtype = [3, NO_SLOT, 1, 3, NO_SLOT, 3], torch.device("cpu"), torch.bfloat16
    with torch.inference_mode():
        case = make_case(slots, dtype, cpu, seed=3)
        case.x[[1, 4]] = float("nan")
        case.before = (case.before[0], case.x.clone(), *case.before[2:])
        TorchLoRAKernel().apply(case.output, case.x, case.lora_a, case.lora_b, case.batch)
    check(case, dtype)


"""The SDK's tuner conformance suite, run against LoRA (and DoRA) on Linear, Embedding and Conv1D."""

from __future__ import annotations

from types import ModuleType

import pytest
import torch
from transformers.pytorch_utils import Conv1D

from kernel_core.contracts.tuner import TunerLayer
from kernel_core_lora import plugin
from kernel_core_lora.config import LoraConfig
from kernel_core_lora.tuner import LoraTuner
from kernel_core_sdk.conformance import TunerConformance
from kernel_core_sdk.conformance.tuner import CANDIDATES


class TestLoraConformance(TunerConformance):
    candidates = {**CANDIDATES, "conv1d": lambda: Conv1D(8, 16)}

    @pytest.fixture
    def plugin_module(self) -> ModuleType:
        return plugin

    @pytest.fixture
    def tuner_config(self) -> LoraConfig:
        # Random A and B, so that a new adapter is not the identity.
        return LoraConfig(r=4, lora_alpha=8, init_lora_weights=False)


class TestDoraConformance(TestLoraConformance):
    """DoRA adapts Linear-like layers only (wrapping an Embedding with it is refused)."""

    candidates = {name: make for name, make in TestLoraConformance.candidates.items() if name != "embedding"}

    @pytest.fixture
    def tuner_config(self) -> LoraConfig:
        return LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, use_dora=True)


def test_record() -> None:
    (spec,) = plugin.kernel_core_tuners()
    assert (spec.name, spec.peft_type) == ("lora", "LORA")
    assert spec.load() is LoraTuner

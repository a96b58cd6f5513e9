"""The SDK's serving conformance suite on LoRA, attention and MLP projections adapted."""

from __future__ import annotations

from types import ModuleType

import pytest

from kernel_core_lora import plugin
from kernel_core_lora.config import LoraConfig
from kernel_core_sdk.conformance import AdapterServingConformance


class TestLoraServing(AdapterServingConformance):
    @pytest.fixture
    def plugin_module(self) -> ModuleType:
        return plugin

    @pytest.fixture
    def tuner_config(self) -> LoraConfig:
        return LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])

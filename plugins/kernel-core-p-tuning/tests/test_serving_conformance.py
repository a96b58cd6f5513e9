"""The SDK's serving conformance suite on P-tuning (4 virtual tokens, MLP encoder)."""

from __future__ import annotations

from types import ModuleType

import pytest

from kernel_core_p_tuning import plugin
from kernel_core_p_tuning.config import PTuningConfig
from kernel_core_sdk.conformance import AdapterServingConformance


class TestPTuningServing(AdapterServingConformance):
    @pytest.fixture
    def plugin_module(self) -> ModuleType:
        return plugin

    @pytest.fixture
    def tuner_config(self) -> PTuningConfig:
        return PTuningConfig(num_virtual_tokens=4, encoder_hidden_size=12)

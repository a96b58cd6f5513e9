"""The SDK's serving conformance suite on prompt tuning (4 virtual tokens, random init)."""

from __future__ import annotations

from types import ModuleType

import pytest

from kernel_core_prompt_tuning import plugin
from kernel_core_prompt_tuning.config import PromptTuningConfig
from kernel_core_sdk.conformance import AdapterServingConformance


class TestPromptTuningServing(AdapterServingConformance):
    @pytest.fixture
    def plugin_module(self) -> ModuleType:
        return plugin

    @pytest.fixture
    def tuner_config(self) -> PromptTuningConfig:
        return PromptTuningConfig(num_virtual_tokens=4)

"""The SDK's serving conformance suite on prefix tuning (4 virtual tokens, per-layer keys and values)."""

from __future__ import annotations

from types import ModuleType

import pytest

from kernel_core_prefix_tuning import plugin
from kernel_core_prefix_tuning.config import PrefixTuningConfig
from kernel_core_sdk.conformance import AdapterServingConformance


class TestPrefixTuningServing(AdapterServingConformance):
    @pytest.fixture
    def plugin_module(self) -> ModuleType:
        return plugin

    @pytest.fixture
    def tuner_config(self) -> PrefixTuningConfig:
        return PrefixTuningConfig(num_virtual_tokens=4)

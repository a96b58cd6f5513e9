"""The SDK's serving conformance suite on IA3: attention outputs and a feed-forward input scaled."""

from __future__ import annotations

from types import ModuleType

import pytest

from kernel_core_ia3 import plugin
from kernel_core_ia3.config import IA3Config
from kernel_core_sdk.conformance import AdapterServingConformance


class TestIA3Serving(AdapterServingConformance):
    @pytest.fixture
    def plugin_module(self) -> ModuleType:
        return plugin

    @pytest.fixture
    def tuner_config(self) -> IA3Config:
        return IA3Config(target_modules=["k_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"])

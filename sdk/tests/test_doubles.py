"""The prefix-caching suite, which no template reaches (the model suite runs against the real
Llama family in tests/models/test_llama.py)."""

from __future__ import annotations

from types import ModuleType

import pytest

from kernel_core_sdk.conformance import PrefixCachingConformance


class TestPrefixCachingDouble(PrefixCachingConformance):
    @pytest.fixture
    def plugin_module(self, doubles) -> ModuleType:
        return doubles("kcore_prefix_double")

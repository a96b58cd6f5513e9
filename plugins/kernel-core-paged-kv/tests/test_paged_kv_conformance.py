"""The SDK's cache-manager conformance suite, prefix-caching tests included."""

from __future__ import annotations

from types import ModuleType

import pytest

from kernel_core_paged_kv import plugin
from kernel_core_paged_kv.manager import PagedCacheManager
from kernel_core_sdk.conformance import PREFIX_CACHING, PrefixCachingConformance


class TestPagedConformance(PrefixCachingConformance):
    @pytest.fixture
    def plugin_module(self) -> ModuleType:
        return plugin


def test_record() -> None:
    (spec,) = plugin.kernel_core_cache_managers()
    assert (spec.name, spec.priority, spec.capabilities) == ("paged", 10, frozenset({PREFIX_CACHING}))
    assert spec.load() is PagedCacheManager

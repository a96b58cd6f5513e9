"""Entry point of the prefix-caching double."""

from __future__ import annotations

import kernel_core
from kernel_core.contracts.records import CacheManagerSpec

kernel_core_api = "1.0"


@kernel_core.hookimpl
def kernel_core_cache_managers() -> list[CacheManagerSpec]:
    return [
        CacheManagerSpec(
            name="prefix-double",
            description="Test double: reference-counted blocks, chained block keys, LRU reuse.",
            implementation="kcore_prefix_double.cache:PrefixDouble",
            capabilities=frozenset({"prefix-caching"}),
        )
    ]

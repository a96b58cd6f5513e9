"""Entry point: registers the paged cache manager by name, importing nothing heavy."""

from __future__ import annotations

import kernel_core
from kernel_core.contracts.records import CacheManagerSpec

kernel_core_api = "1.0"


@kernel_core.hookimpl
def kernel_core_cache_managers() -> list[CacheManagerSpec]:
    """The paged manager, at priority 10 so that it is the default over plain allocators."""
    return [
        CacheManagerSpec(
            name="paged",
            description="Reference-counted KV block pool with chained-hash prefix caching and LRU eviction.",
            implementation="kernel_core_paged_kv.manager:PagedCacheManager",
            priority=10,
            capabilities=frozenset({"prefix-caching"}),
        )
    ]

"""Conformance suite for KV-cache managers."""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import pytest

from kernel_core.contracts.cache import CacheManager
from kernel_core.contracts.records import ImplementationSpec, PluginKind
from kernel_core_sdk.conformance._plugin import PluginUnderTest

#: Capability a cache manager's record declares when it shares full-block prompt prefixes.
PREFIX_CACHING = "prefix-caching"

MakeCacheManager = Callable[[int, int, bool], CacheManager]


class CacheManagerConformance(PluginUnderTest):
    """Subclass as ``TestMyCache(CacheManagerConformance)`` to check a cache manager plugin.

    Fixtures you supply:

    - ``plugin_module``: the imported entry-point module.
    - ``plugin_name`` (optional): the manager's record name, when the module registers several.

    Fixtures you may override:

    - ``make_cache_manager``: ``(num_blocks, block_size, enable_prefix_caching) -> CacheManager``;
      defaults to calling the class with those arguments.

    A manager that shares prompt prefixes subclasses :class:`PrefixCachingConformance`
    instead, which adds the prefix-caching tests.
    """

    kind = PluginKind.CACHE_MANAGER
    contract = CacheManager

    @pytest.fixture
    def make_cache_manager(self, construct: Callable[..., CacheManager]) -> MakeCacheManager:
        def make(num_blocks: int, block_size: int, enable_prefix_caching: bool) -> CacheManager:
            return construct(num_blocks, block_size, enable_prefix_caching=enable_prefix_caching)

        return make

    # -- pool bookkeeping, every manager -----------------------------------------------------

    def test_rejects_empty_pool(self, make_cache_manager: MakeCacheManager) -> None:
        for num_blocks, block_size in ((0, 4), (4, 0)):
            with pytest.raises(ValueError):
                make_cache_manager(num_blocks, block_size, False)

    def test_new_pool_is_full(self, make_cache_manager: MakeCacheManager) -> None:
        stats = make_cache_manager(10, 4, True).stats()
        assert (stats.num_blocks, stats.num_free_blocks, stats.prefix_queries, stats.prefix_hits) == (10, 10, 0, 0)

    @pytest.mark.parametrize("num_tokens", [1, 3, 4, 5, 16, 17])
    def test_allocate_holds_ceil_tokens_over_block_size(
        self, make_cache_manager: MakeCacheManager, num_tokens: int
    ) -> None:
        manager = make_cache_manager(8, 4, False)
        assert manager.allocate("a", num_tokens)
        assert_consistent(manager, {"a": num_tokens})

    def test_allocate_grows_the_table_in_place(self, make_cache_manager: MakeCacheManager) -> None:
        manager = make_cache_manager(8, 4, False)
        assert manager.allocate("a", 3)
        first = manager.block_table("a")
        assert manager.allocate("a", 9)
        grown = manager.block_table("a")
        assert grown[:1] == first and len(grown) == 3
        assert manager.allocate("a", 5), "asking for fewer tokens than held must succeed"
        assert manager.block_table("a") == grown
        assert_consistent(manager, {"a": 9})

    def test_allocate_is_all_or_nothing(self, make_cache_manager: MakeCacheManager) -> None:
        manager = make_cache_manager(4, 4, False)
        assert manager.allocate("a", 12)
        assert not manager.allocate("b", 8), "needs 2 blocks, 1 is free"
        assert manager.stats().num_free_blocks == 1
        table = manager.block_table("a")
        assert not manager.allocate("a", 20), "needs 2 more blocks, 1 is free"
        assert manager.block_table("a") == table
        assert manager.allocate("b", 4)
        assert_consistent(manager, {"a": 12, "b": 4})
        assert not manager.allocate("c", 1)

    def test_free_returns_every_block_and_ignores_unknown_ids(
        self, make_cache_manager: MakeCacheManager
    ) -> None:
        manager = make_cache_manager(6, 2, False)
        assert manager.allocate("a", 5) and manager.allocate("b", 2)
        manager.free("never-seen")
        assert_consistent(manager, {"a": 5, "b": 2})
        manager.free("a")
        manager.free("a")
        assert_consistent(manager, {"b": 2})
        manager.free("b")
        assert manager.stats().num_free_blocks == 6

    def test_disabled_prefix_caching_never_matches(self, make_cache_manager: MakeCacheManager) -> None:
        manager = make_cache_manager(8, 4, False)
        tokens = list(range(12))
        assert manager.match_prefix("a", tokens) == 0
        assert manager.allocate("a", 12)
        manager.commit("a", tokens)
        assert manager.match_prefix("b", [*tokens, 99]) == 0
        assert manager.block_table("b") == []

    @pytest.mark.parametrize("seed", range(4))
    def test_random_workload_returns_pool_to_full(self, make_cache_manager: MakeCacheManager, seed: int) -> None:
        rng = random.Random(seed)
        num_blocks, block_size = rng.randint(8, 40), rng.choice([1, 4, 16])
        manager = make_cache_manager(num_blocks, block_size, False)
        held: dict[str, int] = {}
        for step in range(300):
            free = manager.stats().num_free_blocks
            roll = rng.random()
            if roll < 0.4 or not held:
                request_id, num_tokens = f"r{step}", rng.randint(1, 6 * block_size)
                tokens = [rng.randrange(50) for _ in range(num_tokens)]
                assert manager.match_prefix(request_id, tokens) == 0
                granted = manager.allocate(request_id, num_tokens)
                assert granted == (math.ceil(num_tokens / block_size) <= free)
                if granted:
                    manager.commit(request_id, tokens)
                    held[request_id] = num_tokens
                else:
                    manager.free(request_id)
            elif roll < 0.75:
                request_id = rng.choice(sorted(held))
                before, num_tokens = manager.block_table(request_id), held[request_id] + rng.randint(1, 3 * block_size)
                granted = manager.allocate(request_id, num_tokens)
                assert granted == (math.ceil(num_tokens / block_size) - len(before) <= free)
                assert manager.block_table(request_id)[: len(before)] == before, "blocks must keep their order"
                if granted:
                    held[request_id] = num_tokens
            elif roll < 0.95:
                request_id = rng.choice(sorted(held))
                manager.free(request_id)
                del held[request_id]
            else:
                manager.free(f"unknown-{step}")
            assert_consistent(manager, held)
        for request_id in rng.sample(sorted(held), len(held)):
            manager.free(request_id)
        assert manager.stats().num_free_blocks == num_blocks



class PrefixCachingConformance(CacheManagerConformance):
    """:class:`CacheManagerConformance` plus the prefix-caching tests, for a manager whose record
    declares the ``"prefix-caching"`` capability; same fixtures."""

    def test_record_declares_prefix_caching(self, plugin_spec: ImplementationSpec) -> None:
        assert PREFIX_CACHING in plugin_spec.capabilities

    def test_shared_full_block_prefix_is_matched(
        self, make_cache_manager: MakeCacheManager
    ) -> None:
        manager = make_cache_manager(16, 4, True)
        prompt = list(range(100, 111))  # two full blocks and a partial one
        assert manager.match_prefix("a", prompt) == 0
        assert manager.allocate("a", len(prompt))
        manager.commit("a", prompt)
        before = manager.stats()

        longer = [*prompt, 7, 8]
        assert manager.match_prefix("b", longer) == 8, "the partial third block must not be matched"
        table_a = manager.block_table("a")
        assert manager.block_table("b") == table_a[:2]
        after = manager.stats()
        assert after.prefix_queries - before.prefix_queries == len(longer)
        assert after.prefix_hits - before.prefix_hits == 8
        assert manager.allocate("b", len(longer))
        assert_consistent(manager, {"a": 11, "b": 13}, matched={"b": 8})
        manager.free("a")
        manager.free("b")
        assert manager.stats().num_free_blocks == 16

    def test_extra_key_must_match(self, make_cache_manager: MakeCacheManager) -> None:
        manager = make_cache_manager(16, 4, True)
        prompt = list(range(9))
        manager.match_prefix("a", prompt, extra_key="adapter-1")
        assert manager.allocate("a", 9)
        manager.commit("a", prompt, extra_key="adapter-1")
        assert manager.match_prefix("other-adapter", prompt, extra_key="adapter-2") == 0
        assert manager.match_prefix("base-model", prompt) == 0
        assert manager.match_prefix("same-adapter", prompt, extra_key="adapter-1") == 8
        for request_id in ("a", "other-adapter", "base-model", "same-adapter"):
            manager.free(request_id)
        assert manager.stats().num_free_blocks == 16

    def test_match_depends_on_everything_before(
        self, make_cache_manager: MakeCacheManager
    ) -> None:
        manager = make_cache_manager(16, 4, True)
        first, second = [1, 2, 3, 4], [5, 6, 7, 8]
        manager.match_prefix("a", first + second)
        assert manager.allocate("a", 8)
        manager.commit("a", first + second)
        # A block's KV depends on every token before it, not only on its own tokens.
        assert manager.match_prefix("swapped", second + first) == 0
        assert manager.match_prefix("other-start", [9, 9, 9, 9, *second]) == 0
        for request_id in ("a", "swapped", "other-start"):
            manager.free(request_id)
        assert manager.stats().num_free_blocks == 16

    def test_prefix_outlives_its_request(self, make_cache_manager: MakeCacheManager) -> None:
        manager = make_cache_manager(8, 4, True)
        prompt = list(range(8))
        manager.match_prefix("a", prompt)
        assert manager.allocate("a", 8)
        manager.commit("a", prompt)
        manager.free("a")
        assert manager.stats().num_free_blocks == 8, "cached but unused blocks count as free"
        assert manager.match_prefix("b", [*prompt, 1]) == 8
        assert manager.stats().num_free_blocks == 6
        manager.free("b")
        assert manager.stats().num_free_blocks == 8

    def test_reused_block_is_no_longer_matched(
        self, make_cache_manager: MakeCacheManager
    ) -> None:
        manager = make_cache_manager(4, 4, True)
        prompt, other = list(range(8)), list(range(50, 66))
        manager.match_prefix("a", prompt)
        assert manager.allocate("a", 8)
        manager.commit("a", prompt)
        manager.free("a")
        assert manager.match_prefix("x", other) == 0
        assert manager.allocate("x", 16), "cached blocks nobody holds must be reusable"
        manager.commit("x", other)
        assert manager.match_prefix("b", [*prompt, 1]) == 0
        for request_id in ("x", "b"):
            manager.free(request_id)
        assert manager.stats().num_free_blocks == 4

    @pytest.mark.parametrize("seed", range(4))
    def test_random_prefix_workload(
        self, make_cache_manager: MakeCacheManager, seed: int
    ) -> None:
        rng = random.Random(seed)
        num_blocks, block_size = rng.randint(12, 40), rng.choice([2, 4])
        manager = make_cache_manager(num_blocks, block_size, True)
        system_prompts = [[rng.randrange(1000) for _ in range(rng.randint(1, 4 * block_size))] for _ in range(3)]
        held: dict[str, int] = {}
        matched: dict[str, int] = {}
        for step in range(200):
            if rng.random() < 0.6 or not held:
                request_id, extra_key = f"r{step}", rng.choice([None, "adapter"])
                tokens = rng.choice(system_prompts) + [rng.randrange(1000) for _ in range(rng.randint(0, 6))]
                hit = manager.match_prefix(request_id, tokens, extra_key=extra_key)
                assert hit % block_size == 0 and 0 <= hit <= len(tokens)
                assert len(manager.block_table(request_id)) == hit // block_size
                if manager.allocate(request_id, len(tokens)):
                    manager.commit(request_id, tokens, extra_key=extra_key)
                    held[request_id], matched[request_id] = len(tokens), hit
                else:
                    manager.free(request_id)
            else:
                request_id = rng.choice(sorted(held))
                manager.free(request_id)
                del held[request_id], matched[request_id]
            assert_consistent(manager, held, matched)
        for request_id in rng.sample(sorted(held), len(held)):
            manager.free(request_id)
        stats = manager.stats()
        assert stats.num_free_blocks == num_blocks
        assert stats.prefix_hits > 0, "repeated system prompts should have hit the prefix cache"


def assert_consistent(
    manager: CacheManager, held: dict[str, int], matched: dict[str, int] | None = None
) -> None:
    """Check every live request's table and the pool counters against each other.

    ``held`` maps live requests to the tokens they hold; ``matched`` maps them to how many
    leading tokens came from a prefix match (default none): only those blocks may be shared.
    """
    block_size, num_blocks = manager.block_size, manager.num_blocks
    tables = {request_id: manager.block_table(request_id) for request_id in held}
    for request_id, table in tables.items():
        assert len(table) == math.ceil(held[request_id] / block_size), f"{request_id}: {table}"
        assert len(set(table)) == len(table), f"{request_id} holds a block twice: {table}"
        assert all(0 <= block < num_blocks for block in table), f"{request_id}: {table}"
    computed_by: dict[int, list[str]] = {}  # block -> requests holding it beyond their matched prefix
    for request_id, table in tables.items():
        for block in table[(matched or {}).get(request_id, 0) // block_size :]:
            computed_by.setdefault(block, []).append(request_id)
    shared = {block: owners for block, owners in computed_by.items() if len(owners) > 1}
    assert not shared, f"blocks held by several requests, not through a prefix match: {shared}"
    stats = manager.stats()
    assert stats.num_blocks == num_blocks
    held_blocks = {block for table in tables.values() for block in table}
    assert stats.num_free_blocks == num_blocks - len(held_blocks), "free blocks must be those no request holds"
    assert 0 <= stats.prefix_hits <= stats.prefix_queries

"""Prefix-caching behaviour the conformance suite leaves open: eviction order, sharing, reuse."""

from __future__ import annotations

from collections.abc import Hashable

import pytest

from kernel_core_paged_kv import hashing
from kernel_core_paged_kv.hashing import BlockHasher, root_hash
from kernel_core_paged_kv.manager import PagedCacheManager

BLOCK = 4


def prompt(start: int, num_blocks: int) -> list[int]:
    """``num_blocks`` full blocks of distinct tokens starting at ``start``."""
    return list(range(start, start + num_blocks * BLOCK))


def run(manager: PagedCacheManager, request_id: str, tokens: list[int], extra_key: Hashable = None) -> int:
    """Schedule a whole prompt as the engine does: match, allocate, compute, commit."""
    hit = manager.match_prefix(request_id, tokens, extra_key=extra_key)
    assert manager.allocate(request_id, len(tokens))
    manager.commit(request_id, tokens, extra_key=extra_key)
    manager.check_invariants()
    return hit


def test_least_recently_freed_is_evicted_first() -> None:
    manager = PagedCacheManager(3, BLOCK)
    prompts = {name: prompt(100 * i, 1) for i, name in enumerate("abc")}
    for name, tokens in prompts.items():
        run(manager, name, tokens)
    for name in ("b", "a", "c"):
        manager.free(name)
    assert manager.num_cached_blocks == 3
    run(manager, "new", prompt(900, 1))
    # "b" was freed first, so its block is the one overwritten.
    assert [manager.match_prefix(f"probe-{n}", [*prompts[n], 0]) for n in "abc"] == [BLOCK, 0, BLOCK]
    manager.check_invariants()


def test_uncached_blocks_are_used_before_evicting() -> None:
    manager = PagedCacheManager(4, BLOCK)
    tokens = prompt(0, 1)
    run(manager, "a", tokens)
    manager.free("a")
    assert manager.allocate("fill", 3 * BLOCK)
    assert manager.num_cached_blocks == 1, "three never-used blocks were left: nothing to evict"
    assert manager.allocate("fill", 4 * BLOCK)
    assert manager.num_cached_blocks == 0
    assert manager.match_prefix("b", [*tokens, 0]) == 0
    manager.check_invariants()


def test_free_releases_the_tail_first() -> None:
    manager = PagedCacheManager(3, BLOCK)
    tokens = prompt(0, 3)
    run(manager, "a", tokens)
    table = manager.block_table("a")
    manager.free("a")
    assert manager.allocate("x", BLOCK)
    assert manager.block_table("x") == [table[2]], "the sequence's last block is evicted first"
    assert manager.match_prefix("b", tokens) == 2 * BLOCK
    assert manager.block_table("b") == table[:2]
    manager.check_invariants()


def test_hit_on_a_free_block_revives_it() -> None:
    manager = PagedCacheManager(4, BLOCK)
    tokens = prompt(0, 2)
    run(manager, "a", tokens)
    manager.free("a")
    assert manager.num_free_blocks == 4
    assert manager.match_prefix("b", [*tokens, 1]) == 2 * BLOCK
    assert manager.num_free_blocks == 2
    # Reviving took them off the free list: filling the pool cannot evict them from under "b".
    assert manager.allocate("fill", 2 * BLOCK) and not manager.allocate("more", 1)
    assert manager.match_prefix("c", [*tokens, 1]) == 2 * BLOCK
    for block in manager.block_table("b"):
        assert manager.block_table("c").count(block) == 1
    manager.check_invariants()


def test_shared_prefix_shares_block_ids_and_outlives_one_holder() -> None:
    manager = PagedCacheManager(8, BLOCK)
    system = prompt(0, 2)
    run(manager, "a", [*system, 50, 51])
    assert run(manager, "b", [*system, 60]) == 2 * BLOCK
    assert manager.block_table("b")[:2] == manager.block_table("a")[:2]
    assert manager.num_free_blocks == 8 - 4, "a holds 3 blocks, b one more of its own"
    manager.free("a")
    assert manager.num_free_blocks == 8 - 3, "the shared blocks stay held by b"
    assert manager.match_prefix("c", [*system, 70]) == 2 * BLOCK
    for name in ("b", "c"):
        manager.free(name)
    assert manager.num_free_blocks == 8
    manager.check_invariants()


@pytest.mark.parametrize("keys", [(None, "adapter"), ("adapter", "other"), (1, "1"), (None, "None")])
def test_different_extra_keys_never_share(keys: tuple[Hashable, Hashable]) -> None:
    manager = PagedCacheManager(8, BLOCK)
    tokens = prompt(0, 2)
    run(manager, "a", tokens, extra_key=keys[0])
    assert run(manager, "b", tokens, extra_key=keys[1]) == 0
    assert not set(manager.block_table("a")) & set(manager.block_table("b"))
    assert manager.match_prefix("c", tokens, extra_key=keys[1]) == 2 * BLOCK
    assert manager.block_table("c") == manager.block_table("b")


def test_preempted_request_gets_its_committed_blocks_back() -> None:
    manager = PagedCacheManager(16, BLOCK)
    tokens = prompt(0, 3)
    assert manager.match_prefix("a", tokens[:-1]) == 0
    # Chunked prefill, then decode one token a step.
    for computed in (5, 12, 13, 14):
        assert manager.allocate("a", computed)
        manager.commit("a", tokens[:computed] if computed <= 12 else [*tokens, *range(computed - 12)])
    table = manager.block_table("a")
    manager.free("a")  # preempted
    sequence = [*tokens, 0, 1]
    assert manager.match_prefix("a", sequence[:-1]) == 3 * BLOCK
    assert manager.block_table("a") == table[:3]
    assert manager.allocate("a", len(sequence))
    manager.commit("a", sequence)
    manager.free("a")
    assert manager.num_free_blocks == 16
    manager.check_invariants()


def test_identical_blocks_computed_twice_keep_their_own_ids() -> None:
    manager = PagedCacheManager(8, BLOCK)
    tokens = prompt(0, 2)
    for name in ("a", "b"):  # both scheduled before either committed
        assert manager.match_prefix(name, tokens) == 0
        assert manager.allocate(name, len(tokens))
    tables = {name: manager.block_table(name) for name in ("a", "b")}
    for name in ("a", "b"):
        manager.commit(name, tokens)
        assert manager.block_table(name) == tables[name]
    assert manager.num_cached_blocks == 2, "one copy of each block is indexed"
    manager.free("a")
    assert manager.match_prefix("c", tokens) == 2 * BLOCK
    assert manager.block_table("c") == tables["a"]
    for name in ("b", "c"):
        manager.free(name)
    assert manager.num_free_blocks == 8
    manager.check_invariants()


def test_partial_blocks_are_never_cached() -> None:
    manager = PagedCacheManager(8, BLOCK)
    tokens = prompt(0, 2)[:-1]
    run(manager, "a", tokens)
    assert manager.num_cached_blocks == 1
    manager.free("a")
    assert manager.match_prefix("b", [*tokens, 99]) == BLOCK


def test_commit_hashes_each_block_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = hashing.sha256
    monkeypatch.setattr(hashing, "sha256", lambda data: calls.append(len(data)) or real(data))
    manager = PagedCacheManager(64, BLOCK)
    tokens = list(range(10 * BLOCK))
    for computed in range(1, len(tokens) + 1):  # one token a step, as decoding does
        assert manager.allocate("a", computed)
        manager.commit("a", tokens[:computed])
    assert len(calls) == 1 + 10, "one root hash, then one hash per block as it fills"


def test_commit_ignores_tokens_past_the_table() -> None:
    manager = PagedCacheManager(8, BLOCK)
    assert manager.allocate("a", BLOCK)
    manager.commit("a", prompt(0, 3))
    assert manager.num_cached_blocks == 1
    manager.commit("unknown", prompt(0, 3))
    manager.check_invariants()


def test_matching_a_request_holding_blocks_is_an_error() -> None:
    manager = PagedCacheManager(8, BLOCK)
    assert manager.allocate("a", 1)
    with pytest.raises(ValueError, match="already holds blocks"):
        manager.match_prefix("a", prompt(0, 1))
    assert manager.stats().prefix_queries == 0


def test_stats_count_tokens() -> None:
    manager = PagedCacheManager(8, BLOCK)
    tokens = prompt(0, 2)
    run(manager, "a", tokens)
    run(manager, "b", [*tokens, 1, 2, 3])
    stats = manager.stats()
    assert (stats.prefix_queries, stats.prefix_hits) == (8 + 11, 8)
    assert stats.num_free_blocks == 8 - 3 and stats.usage == pytest.approx(3 / 8)


def test_reset_prefix_cache_forgets_only_free_blocks() -> None:
    manager = PagedCacheManager(8, BLOCK)
    held, freed = prompt(0, 1), prompt(100, 2)
    run(manager, "held", held)
    run(manager, "freed", freed)
    manager.free("freed")
    assert manager.reset_prefix_cache() == 2
    assert manager.num_free_blocks == 7 and manager.num_cached_blocks == 1
    assert manager.match_prefix("a", [*freed, 0]) == 0
    assert manager.match_prefix("b", [*held, 0]) == BLOCK
    manager.check_invariants()


def test_allocate_without_need_tracks_nothing() -> None:
    manager = PagedCacheManager(2, BLOCK)
    assert manager.allocate("a", 0)
    assert manager.block_table("a") == []
    assert not manager.allocate("b", 3 * BLOCK)
    assert manager.block_table("b") == []
    manager.check_invariants()


def test_block_hashes_are_stable() -> None:
    """Hashes are part of a persisted or shared cache's format: changing them needs a version bump."""
    hasher = BlockHasher(BLOCK)
    root = root_hash(None)
    first = hasher(root, [1, 2, 3, 4, 5, 6, 7, 8], 0)
    second = hasher(first, [1, 2, 3, 4, 5, 6, 7, 8], 1)
    expected = ["1b4ffc6d32329e58", "6a42259eefccfbdd", "d2caf22e3a8c172b"]
    assert [h.hex()[:16] for h in (root, first, second)] == expected
    assert hasher(root_hash("adapter"), [1, 2, 3, 4], 0) != first

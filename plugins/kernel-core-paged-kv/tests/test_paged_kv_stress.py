"""Seeded random engine-like workloads, with every invariant checked after every operation.

The workload drives the manager as the engine does (match once, allocate growth every step,
commit what was computed, free on finish or preemption, re-match after preemption) and keeps
an oracle of what KV each block holds, so a prefix hit that would serve wrong KV fails.
"""

from __future__ import annotations

import random
from collections.abc import Hashable
from dataclasses import dataclass

import pytest

from kernel_core_paged_kv.manager import PagedCacheManager
from kernel_core_sdk.conformance.cache import assert_consistent


@dataclass
class SimRequest:
    tokens: list[int]
    extra_key: Hashable
    computed: int = 0
    allocated: int = 0
    matched: int = 0


class Workload:
    """One simulated engine over one manager, with the oracle and the checks."""

    def __init__(self, seed: int):
        self.rng = rng = random.Random(seed)
        self.block_size = rng.choice([1, 2, 4, 16])
        self.manager = PagedCacheManager(rng.randint(8, 48), self.block_size)
        self.prefixes = [self.tokens(rng.randint(1, 5) * self.block_size) for _ in range(4)]
        self.live: dict[str, SimRequest] = {}
        self.preempted: dict[str, SimRequest] = {}
        self.finished: list[list[int]] = []
        #: block -> (extra key, every token up to the block's end): the KV it holds.
        self.kv: dict[int, tuple[Hashable, tuple[int, ...]]] = {}
        self.next_id = 0
        self.preemptions = 0

    def tokens(self, count: int) -> list[int]:
        return [self.rng.randrange(64) for _ in range(count)]

    def op(self) -> None:
        roll = self.rng.random()
        if roll < 0.2 or not self.live:
            self.admit(f"r{self.next_id}", self.new_sequence())
            self.next_id += 1
        elif roll < 0.25 and self.preempted:
            request_id = self.rng.choice(sorted(self.preempted))
            self.admit(request_id, self.preempted.pop(request_id))
        elif roll < 0.85:
            self.step(self.rng.choice(sorted(self.live)))
        elif roll < 0.97:
            request_id = self.rng.choice(sorted(self.live))
            self.finished.append(self.live.pop(request_id).tokens)
            self.manager.free(request_id)
        elif roll < 0.99:
            self.manager.free(f"unknown-{self.rng.randrange(100)}")
        else:
            self.manager.reset_prefix_cache()
        self.check()

    def new_sequence(self) -> SimRequest:
        """A prompt that often shares a system prefix or continues a finished conversation."""
        rng = self.rng
        if self.finished and rng.random() < 0.3:
            head = rng.choice(self.finished)
        else:
            head = rng.choice(self.prefixes) if rng.random() < 0.7 else []
        tail = self.tokens(rng.randint(1, 3 * self.block_size))
        return SimRequest(head + tail, rng.choice([None, "a1", "a2"]))

    def admit(self, request_id: str, seq: SimRequest) -> None:
        """First scheduling (or re-scheduling after preemption): match the prompt less one token."""
        prompt = seq.tokens[:-1]
        hit = self.manager.match_prefix(request_id, prompt, extra_key=seq.extra_key)
        assert hit % self.block_size == 0 and 0 <= hit <= len(prompt)
        table = self.manager.block_table(request_id)
        assert len(table) == hit // self.block_size
        for index, block in enumerate(table):
            end = (index + 1) * self.block_size
            assert self.kv[block] == (seq.extra_key, tuple(seq.tokens[:end])), "a hit must serve the right KV"
        seq.computed = seq.allocated = seq.matched = hit
        self.live[request_id] = seq
        self.step(request_id)

    def step(self, request_id: str) -> None:
        """Advance a prefill chunk or one decode token; preempt when the pool is short."""
        seq = self.live[request_id]
        if seq.computed == len(seq.tokens):
            seq.tokens.append(self.rng.randrange(64))  # the token sampled last step
        chunk = self.rng.choice([1, 1, self.block_size, 3 * self.block_size])
        target = min(len(seq.tokens), seq.computed + chunk)
        before = self.manager.block_table(request_id)
        if not self.manager.allocate(request_id, target):
            assert self.manager.block_table(request_id) == before, "a failed allocate changes nothing"
            self.preempt(request_id)
            return
        seq.allocated = max(seq.allocated, target)
        table = self.manager.block_table(request_id)
        assert table[: len(before)] == before
        for block in table[len(before) :]:
            self.kv.pop(block, None)  # about to be overwritten
        for index in range(seq.computed // self.block_size, target // self.block_size):
            self.kv[table[index]] = (seq.extra_key, tuple(seq.tokens[: (index + 1) * self.block_size]))
        seq.computed = target
        self.manager.commit(request_id, seq.tokens[:target], extra_key=seq.extra_key)

    def preempt(self, request_id: str) -> None:
        self.preemptions += 1
        self.manager.free(request_id)
        seq = self.live.pop(request_id)
        self.preempted[request_id] = SimRequest(seq.tokens, seq.extra_key)

    def check(self) -> None:
        manager = self.manager
        manager.check_invariants()
        held = {rid: seq.allocated for rid, seq in self.live.items()}
        assert_consistent(manager, held, {rid: seq.matched for rid, seq in self.live.items()})
        tables = [manager.block_table(rid) for rid in self.live]
        holders = [0] * manager.num_blocks
        for table in tables:
            for block in table:
                holders[block] += 1
        assert manager._pool.ref_counts == holders, "reference counts != live tables holding each block"
        assert manager.num_free_blocks == holders.count(0)

    def drain(self) -> None:
        for request_id in self.rng.sample(sorted(self.live), len(self.live)):
            self.manager.free(request_id)
            del self.live[request_id]
            self.check()


@pytest.mark.parametrize("seed", range(6))
def test_random_engine_workload(seed: int) -> None:
    workload = Workload(seed)
    for _ in range(3000):
        workload.op()
    workload.drain()
    manager = workload.manager
    stats = manager.stats()
    assert stats.num_free_blocks == manager.num_blocks == manager.num_free_blocks
    assert stats.prefix_hits > 0, "shared prefixes and re-admitted requests should have hit"
    assert workload.preemptions > 0, "the pool should have run short"

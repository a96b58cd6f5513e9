"""The paged KV pool under random add / step / abort / preempt / finish sequences (hypothesis
stateful testing), driven through kernel-core's real scheduler with prefix caching on, prompts
sharing system prefixes and continuing finished conversations, under three adapter keys.

After every rule: reference counts equal the live tables holding each block (none leaked, none
freed twice), free + held blocks == total, only prefix-matched blocks are shared, waiting and
finished requests hold nothing, and every prefix hit serves blocks whose KV (as the simulated
steps wrote it) is exactly the hitting request's tokens under its adapter key. After the run,
every request is finished and the pool is whole.
"""

from __future__ import annotations

import math
from collections.abc import Hashable

import pytest
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from kernel_core.contracts.scheduler import SchedulableRequest, SchedulerPolicy
from kernel_core.engine.request import Request, RequestStatus
from kernel_core.engine.scheduler import Scheduler
from kernel_core_paged_kv.manager import PagedCacheManager
from kernel_core_sdk.conformance.cache import assert_consistent

#: Small token alphabet: unrelated prompts and outputs also share blocks by chance.
TOKENS = st.integers(0, 7)
PREFIXES = [[1, 2, 3, 4, 5, 6, 7, 0] * 3, [7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1], [0, 1] * 9]


#: A request to add: prompt head (a shared prefix, nothing, or None for a finished conversation),
#: prompt tail, max_tokens, adapter key (the prefix cache's extra key), skip_prefix_cache.
Arrival = tuple[list[int] | None, list[int], int, int | None, bool]
ARRIVALS = st.tuples(
    st.one_of(st.sampled_from(PREFIXES), st.just([]), st.just(None)),
    st.lists(TOKENS, min_size=1, max_size=20),
    st.integers(1, 8),
    st.sampled_from([None, 1, 2]),
    st.booleans(),
)


class ArrivalOrder(SchedulerPolicy):
    """First come, first served; the latest arrival is preempted first."""

    def sort_key(self, request: SchedulableRequest) -> tuple[float, str]:
        return (request.arrival_time, request.request_id)


class PoolMachine(RuleBasedStateMachine):
    """One scheduler over one paged manager; steps are simulated as the engine runs them."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: dict[str, Request] = {}  # every request ever added
        self.matched: dict[str, int] = {}  # tokens of each running request that came from a hit
        self.finished_sequences: list[list[int]] = []
        #: block -> (adapter key, every token up to the block's end) of the KV it holds
        self.kv: dict[int, tuple[Hashable, tuple[int, ...]] | None] = {}
        self.hits = self.shortages = 0  # for the statistics: the run must reach both

    @initialize(
        block_size=st.sampled_from([1, 2, 4, 16]),
        num_blocks=st.integers(4, 40),
        budget=st.integers(1, 64),
        max_num_seqs=st.integers(1, 6),
        first=st.lists(ARRIVALS, min_size=1, max_size=4),
        data=st.data(),
    )
    def start(
        self, block_size: int, num_blocks: int, budget: int, max_num_seqs: int, first: list[Arrival], data: st.DataObject
    ) -> None:
        self.cache = PagedCacheManager(num_blocks, block_size, enable_prefix_caching=True)
        self.scheduler = Scheduler(ArrivalOrder(), self.cache, max_num_batched_tokens=budget, max_num_seqs=max_num_seqs)
        for arrival in first:
            self.arrive(arrival, data)

    # -- rules ---------------------------------------------------------------------------------

    @rule(arrival=ARRIVALS, data=st.data())
    def add(self, arrival: Arrival, data: st.DataObject) -> None:
        """A new request arrives, then a step runs."""
        self.arrive(arrival, data)
        self.step_once(data)

    @rule(steps=st.integers(1, 6), data=st.data())
    def step(self, steps: int, data: st.DataObject) -> None:
        """A few engine steps, the invariants checked after each."""
        for _ in range(steps):
            self.step_once(data)
            self.pool_agrees_with_the_requests()

    @rule(kind=st.sampled_from(["abort", "finish", "preempt", "reset prefix cache"]), data=st.data())
    def interrupt(self, kind: str, data: st.DataObject) -> None:
        """Abort any live request, or stop (a stop string, EOS) or preempt a running one, or
        forget every unheld cached block; then a step runs."""
        live = self.scheduler.running if kind != "abort" else [r for r in self.requests.values() if not r.is_finished]
        if kind == "reset prefix cache":
            self.cache.reset_prefix_cache()
        elif live:
            request = data.draw(st.sampled_from(sorted(live, key=lambda r: r.request_id)), label=kind)
            if kind == "preempt":
                self.scheduler.preempt(request)
                self.matched.pop(request.request_id, None)
            else:
                status = RequestStatus.FINISHED_ABORTED if kind == "abort" else RequestStatus.FINISHED_STOPPED
                self.retire(request, status)
        self.step_once(data)

    # -- the simulated engine ------------------------------------------------------------------

    def arrive(self, arrival: Arrival, data: st.DataObject) -> None:
        """Queue a request; a ``head`` of None continues a finished conversation when there is one."""
        head, tail, max_tokens, adapter_key, skip_prefix_cache = arrival
        if head is None:
            head = data.draw(st.sampled_from(self.finished_sequences)) if self.finished_sequences else []
        capacity = self.scheduler.capacity_tokens  # the engine refuses what could never fit
        max_tokens = min(max_tokens, capacity - 1)
        prompt = (head + tail)[: capacity - max_tokens]
        request_id = f"r{len(self.requests)}"
        request = Request(
            request_id, prompt, max_tokens, arrival_time=float(len(self.requests)), adapter_key=adapter_key,
            skip_prefix_cache=skip_prefix_cache,
        )
        self.requests[request_id] = request
        self.scheduler.add(request)

    def step_once(self, data: st.DataObject) -> None:
        """One engine step: schedule, check the prefix hits of admitted requests, write their
        KV, sample a token for those that reached their end."""
        was_running = {r.request_id for r in self.scheduler.running}
        step = self.scheduler.schedule()
        for request in step.preempted:
            self.matched.pop(request.request_id, None)
        self.shortages += len(step.preempted)
        for request, count in zip(step.requests, step.num_new_tokens):
            if request.request_id not in was_running:
                self.check_hit(request)
            self.write_kv(request, request.num_computed_tokens, request.num_computed_tokens + count)
            request.num_computed_tokens += count
        for request in step.requests:
            if request.num_computed_tokens == request.num_tokens:
                request.output_token_ids.append(data.draw(TOKENS, label=f"token of {request.request_id}"))
                if len(request.output_token_ids) >= request.max_tokens:
                    self.retire(request, RequestStatus.FINISHED_LENGTH)

    def retire(self, request: Request, status: RequestStatus) -> None:
        self.scheduler.finish(request, status)
        self.matched.pop(request.request_id, None)
        if status is not RequestStatus.FINISHED_ABORTED:
            self.finished_sequences.append(request.all_token_ids)

    def check_hit(self, request: Request) -> None:
        """A request just admitted: the blocks its prefix hit attached hold its own KV."""
        hit = request.num_computed_tokens
        assert hit % self.cache.block_size == 0 and hit < request.num_tokens
        assert hit == 0 or not request.skip_prefix_cache
        self.matched[request.request_id] = hit
        self.hits += hit > 0
        tokens = request.all_token_ids
        table = self.cache.block_table(request.request_id)
        for index in range(hit // self.cache.block_size):
            end = (index + 1) * self.cache.block_size
            assert self.kv.get(table[index]) == (request.adapter_key, tuple(tokens[:end])), "a hit served wrong KV"

    def write_kv(self, request: Request, start: int, end: int) -> None:
        """What the step computes: positions start..end of the request, into its blocks."""
        block_size = self.cache.block_size
        table = self.cache.block_table(request.request_id)
        assert len(table) * block_size >= end, "scheduled tokens beyond the allocated blocks"
        tokens = request.all_token_ids
        for index in range(start // block_size, math.ceil(end / block_size)):
            block_end = (index + 1) * block_size
            self.kv[table[index]] = (request.adapter_key, tuple(tokens[:block_end])) if block_end <= end else None

    # -- invariants ----------------------------------------------------------------------------

    @invariant()
    def pool_agrees_with_the_requests(self) -> None:
        self.cache.check_invariants()  # reference counts == live tables; free lists; hash index
        running = {r.request_id: r for r in self.scheduler.running}
        assert set(running) == set(self.matched)
        assert_consistent(
            self.cache, {rid: r.num_computed_tokens for rid, r in running.items()}, self.matched
        )
        for request_id, request in self.requests.items():
            if request_id not in running:
                assert self.cache.block_table(request_id) == [], f"{request.status.value} {request_id} holds blocks"
        assert len(self.scheduler.running) <= self.scheduler.max_num_seqs

    def teardown(self) -> None:
        """Finish everything still live: the pool must be whole again."""
        if not hasattr(self, "cache"):
            return
        for request in list(self.requests.values()):
            if not request.is_finished:
                self.retire(request, RequestStatus.FINISHED_ABORTED)
        assert not self.scheduler.has_unfinished()
        self.cache.check_invariants()
        stats = self.cache.stats()
        assert stats.num_free_blocks == self.cache.num_blocks == stats.num_blocks
        assert all(count == 0 for count in self.cache._pool.ref_counts)
        event(f"prefix hits: {'yes' if self.hits else 'none'}; preempted for blocks: {'yes' if self.shortages else 'none'}")


#: Default run: about 10 s on 2 cores; the slow one (about 3 minutes) explores far more sequences.
FAST = settings(max_examples=100, stateful_step_count=50, deadline=None)
LONG = settings(max_examples=1500, stateful_step_count=100, deadline=None)

TestPool = PoolMachine.TestCase
TestPool.settings = FAST


class PoolLongRun(PoolMachine):
    pass


TestPoolLongRun = pytest.mark.slow(PoolLongRun.TestCase)
TestPoolLongRun.settings = LONG

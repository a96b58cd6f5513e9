"""The scheduling mechanism with the default plugins: budget, chunking, admission, preemption."""

from __future__ import annotations

from kernel_core.contracts.records import PluginKind
from kernel_core.engine.request import Request, RequestStatus
from kernel_core.engine.scheduler import Scheduler
from kernel_core.plugins import get_plugin_manager


def scheduler(num_blocks: int, block_size: int = 4, budget: int = 64, max_num_seqs: int = 8) -> Scheduler:
    manager = get_plugin_manager()
    cache = manager.load(manager.select(PluginKind.CACHE_MANAGER))(num_blocks, block_size, enable_prefix_caching=True)
    policy = manager.load(manager.select(PluginKind.SCHEDULER_POLICY, "fcfs"))()
    return Scheduler(policy, cache, max_num_batched_tokens=budget, max_num_seqs=max_num_seqs)


def request(request_id: str, prompt_len: int, arrival: float) -> Request:
    """Prompts of different requests share no token, so no prefix-cache hit blurs the counts."""
    first = 1000 * int(arrival) + 1
    return Request(request_id, list(range(first, first + prompt_len)), max_tokens=8, arrival_time=arrival)


def advance(s: Scheduler) -> list[tuple[str, int]]:
    """One step as the engine does it: schedule, then mark the scheduled tokens computed."""
    step = s.schedule()
    for r, n in zip(step.requests, step.num_new_tokens):
        r.num_computed_tokens += n
        if r.num_computed_tokens == r.num_tokens:
            r.output_token_ids.append(7)
    return [(r.request_id, n) for r, n in zip(step.requests, step.num_new_tokens)]


def test_budget_splits_a_long_prompt_and_mixes_decodes():
    s = scheduler(num_blocks=64, budget=16)
    s.add(request("short", 6, 0.0))
    s.add(request("long", 40, 1.0))
    assert advance(s) == [("short", 6), ("long", 10)]
    assert advance(s) == [("short", 1), ("long", 15)]
    assert advance(s) == [("short", 1), ("long", 15)]
    assert advance(s) == [("short", 1), ("long", 1)]


def test_head_of_line_waits_without_repeating_its_prefix_lookup():
    s = scheduler(num_blocks=6)  # 24 token slots
    s.add(request("big", 20, 0.0))
    s.add(request("next", 12, 1.0))
    advance(s)
    queries = s.cache.stats().prefix_queries
    for _ in range(3):  # "big" keeps its blocks; "next" cannot fit and must not be looked up again
        assert [rid for rid, _ in advance(s)] == ["big"]
    assert s.cache.stats().prefix_queries == queries
    big = s.running[0]
    s.finish(big, RequestStatus.FINISHED_LENGTH)
    assert [rid for rid, _ in advance(s)] == ["next"]


def test_block_shortage_preempts_the_latest_arrival_and_frees_it():
    s = scheduler(num_blocks=5)  # 20 token slots
    s.add(request("first", 8, 0.0))
    s.add(request("second", 8, 1.0))
    advance(s)
    preempted = []
    for _ in range(6):
        step = s.schedule()
        preempted += [r.request_id for r in step.preempted]
        for r, n in zip(step.requests, step.num_new_tokens):
            r.num_computed_tokens += n
            if r.num_computed_tokens == r.num_tokens:
                r.output_token_ids.append(7)
    assert preempted and set(preempted) == {"second"}
    for r in list(s.running) + list(s.waiting):
        s.finish(r, RequestStatus.FINISHED_ABORTED)
    assert s.cache.stats().num_free_blocks == 5

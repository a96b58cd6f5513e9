"""Conformance suite for scheduler policies."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from typing import Any

import pytest

from kernel_core.contracts.records import PluginKind
from kernel_core.contracts.scheduler import SchedulerPolicy
from kernel_core_sdk.conformance._plugin import PluginUnderTest
from kernel_core_sdk.conformance._requests import FakeRequest, request_population

SEEDS = (0, 1, 2)


class SchedulerConformance(PluginUnderTest):
    """Subclass as ``TestMyPolicy(SchedulerConformance)`` to check a scheduler policy plugin.

    Fixtures you supply:

    - ``plugin_module``: the imported entry-point module.
    - ``plugin_name`` (optional): the policy's record name, when the module registers several.

    Fixtures you may override:

    - ``scheduler_policy``: the policy instance under test; defaults to the class called with
      no arguments.
    """

    kind = PluginKind.SCHEDULER_POLICY
    contract = SchedulerPolicy

    @pytest.fixture
    def scheduler_policy(self, construct: Callable[..., SchedulerPolicy]) -> SchedulerPolicy:
        return construct()

    @pytest.fixture(params=SEEDS, ids=lambda seed: f"seed{seed}")
    def requests(self, request: pytest.FixtureRequest) -> list[FakeRequest]:
        return request_population(request.param)

    def test_sort_key_is_a_tuple(self, scheduler_policy: SchedulerPolicy, requests: list[FakeRequest]) -> None:
        assert all(isinstance(scheduler_policy.sort_key(r), tuple) for r in requests)

    def test_sort_key_is_deterministic(
        self, scheduler_policy: SchedulerPolicy, requests: list[FakeRequest]
    ) -> None:
        first = [scheduler_policy.sort_key(r) for r in requests]
        assert [scheduler_policy.sort_key(r) for r in reversed(requests)] == first[::-1]

    def test_sort_key_is_a_strict_total_order(
        self, scheduler_policy: SchedulerPolicy, requests: list[FakeRequest]
    ) -> None:
        keys = sorted(scheduler_policy.sort_key(r) for r in requests)
        ties = [(a, b) for a, b in itertools.pairwise(keys) if not a < b]
        assert not ties, f"different requests share a sort key (end keys with request_id): {ties[:3]}"

    def test_order_is_independent_of_input_order(
        self, scheduler_policy: SchedulerPolicy, requests: list[FakeRequest]
    ) -> None:
        expected = _ids(scheduler_policy.order(requests))
        rng = random.Random(len(requests))
        for _ in range(5):
            shuffled = requests[:]
            rng.shuffle(shuffled)
            assert _ids(scheduler_policy.order(shuffled)) == expected

    def test_order_is_sorted_by_key_and_complete(
        self, scheduler_policy: SchedulerPolicy, requests: list[FakeRequest]
    ) -> None:
        before = requests[:]
        ordered = scheduler_policy.order(requests)
        assert requests == before, "order() must not reorder its argument in place"
        assert sorted(_ids(ordered)) == sorted(_ids(requests))
        assert all(any(o is r for r in requests) for o in ordered), "order() must return the same objects"
        keys = [scheduler_policy.sort_key(r) for r in ordered]
        assert all(a < b for a, b in itertools.pairwise(keys))

    def test_order_of_nothing_is_empty(self, scheduler_policy: SchedulerPolicy) -> None:
        assert list(scheduler_policy.order([])) == []

    def test_pick_victim_is_last_in_order(
        self, scheduler_policy: SchedulerPolicy, requests: list[FakeRequest]
    ) -> None:
        rng = random.Random(7)
        for size in (1, 2, 5, len(requests)):
            running = rng.sample(requests, size)
            victim = scheduler_policy.pick_victim(running)
            assert victim is scheduler_policy.order(running)[-1]
            rng.shuffle(running)
            assert scheduler_policy.pick_victim(running) is victim

    def test_pick_victim_of_nothing_raises(self, scheduler_policy: SchedulerPolicy) -> None:
        with pytest.raises(ValueError):
            scheduler_policy.pick_victim([])


def _ids(requests: list[Any]) -> list[str]:
    return [r.request_id for r in requests]

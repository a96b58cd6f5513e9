"""The priority policy: the SDK's scheduler conformance suite, then its own order."""

from __future__ import annotations

from types import ModuleType, SimpleNamespace

import pytest

from kernel_core_sched_priority import plugin
from kernel_core_sched_priority.policy import PriorityPolicy
from kernel_core_sdk.conformance import SchedulerConformance


class TestPriorityConformance(SchedulerConformance):
    @pytest.fixture
    def plugin_module(self) -> ModuleType:
        return plugin


def request(request_id: str, arrival_time: float, priority: int) -> SimpleNamespace:
    """A request as a policy sees it: only the fields it may read."""
    return SimpleNamespace(
        request_id=request_id,
        arrival_time=arrival_time,
        priority=priority,
        num_prompt_tokens=10,
        num_computed_tokens=0,
    )


def ids(requests: list[SimpleNamespace]) -> list[str]:
    return [r.request_id for r in requests]


def test_is_chosen_only_by_name() -> None:
    (spec,) = plugin.kernel_core_scheduler_policies()
    assert (spec.name, spec.priority) == ("priority", 0)


def test_late_urgent_request_goes_first() -> None:
    requests = [request("early-1", 1.0, 1), request("early-2", 2.0, 1), request("late-0", 9.0, 0)]
    assert ids(PriorityPolicy().order(requests)) == ["late-0", "early-1", "early-2"]


def test_negative_priority_beats_the_default() -> None:
    requests = [request("default", 1.0, 0), request("urgent", 5.0, -1)]
    assert ids(PriorityPolicy().order(requests)) == ["urgent", "default"]


def test_first_come_first_served_within_a_priority() -> None:
    requests = [request("c", 3.0, 2), request("a", 1.0, 2), request("b", 1.0, 2)]
    assert ids(PriorityPolicy().order(requests)) == ["a", "b", "c"]


def test_preempts_the_least_urgent_latest_arrival() -> None:
    running = [
        request("urgent-late", 9.0, 0),
        request("lax-early", 1.0, 3),
        request("lax-late", 5.0, 3),
        request("mid", 7.0, 1),
    ]
    assert PriorityPolicy().pick_victim(running).request_id == "lax-late"

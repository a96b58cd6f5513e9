"""The fcfs policy: the SDK's scheduler conformance suite, then its own order."""

from __future__ import annotations

from types import ModuleType, SimpleNamespace

import pytest

from kernel_core_sched_fcfs import plugin
from kernel_core_sched_fcfs.policy import FcfsPolicy
from kernel_core_sdk.conformance import SchedulerConformance


class TestFcfsConformance(SchedulerConformance):
    @pytest.fixture
    def plugin_module(self) -> ModuleType:
        return plugin


def request(request_id: str, arrival_time: float, priority: int = 0) -> SimpleNamespace:
    """A request as a policy sees it: only the fields it may read."""
    return SimpleNamespace(
        request_id=request_id,
        arrival_time=arrival_time,
        priority=priority,
        num_prompt_tokens=10,
        num_computed_tokens=0,
    )


def test_is_the_default_policy() -> None:
    (spec,) = plugin.kernel_core_scheduler_policies()
    assert (spec.name, spec.priority) == ("fcfs", 10)


def test_ignores_priority() -> None:
    requests = [
        request("late-urgent", 3.0, priority=-5),
        request("early", 1.0, priority=7),
        request("mid", 2.0),
    ]
    assert [r.request_id for r in FcfsPolicy().order(requests)] == ["early", "mid", "late-urgent"]


def test_same_arrival_is_ordered_by_id() -> None:
    requests = [request("b", 1.0), request("a", 1.0)]
    assert [r.request_id for r in FcfsPolicy().order(requests)] == ["a", "b"]


def test_preempts_the_latest_arrival() -> None:
    running = [request("first", 1.0), request("last", 9.0, priority=-5), request("middle", 5.0)]
    assert FcfsPolicy().pick_victim(running).request_id == "last"

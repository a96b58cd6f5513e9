"""The request lifecycle is an explicit state machine: every invalid transition raises."""

import itertools

import pytest

from kernel_core.engine.request import InvalidTransitionError, Request, RequestStatus as S

ALLOWED = {
    (S.WAITING, S.RUNNING),
    (S.RUNNING, S.PREEMPTED),
    (S.PREEMPTED, S.RUNNING),
} | {(a, b) for a in (S.WAITING, S.RUNNING, S.PREEMPTED) for b in S if b.finished}


def request(status: S) -> Request:
    r = Request("r1", [1, 2, 3], max_tokens=4, arrival_time=0.0)
    r.status = status
    return r


@pytest.mark.parametrize(("start", "end"), list(itertools.product(S, S)))
def test_transitions(start, end):
    r = request(start)
    if (start, end) in ALLOWED:
        r.transition(end)
        assert r.status is end
    else:
        with pytest.raises(InvalidTransitionError, match=f"'r1' cannot go from {start.value} to {end.value}"):
            r.transition(end)
        assert r.status is start


def test_finish_reasons():
    assert {s: s.finish_reason for s in S if s.finished} == {
        S.FINISHED_STOPPED: "stop", S.FINISHED_LENGTH: "length",
        S.FINISHED_ABORTED: "abort", S.FINISHED_ERROR: "error",
    }
    assert S.RUNNING.finish_reason is None


def test_token_accounting():
    r = request(S.RUNNING)
    r.output_token_ids += [7, 8]
    assert (r.num_prompt_tokens, r.num_tokens, r.all_token_ids) == (3, 5, [1, 2, 3, 7, 8])


@pytest.mark.parametrize(("start", "end"), [(0, 2), (1, 3), (2, 5), (3, 5), (4, 5), (0, 5), (5, 5)])
def test_token_slice_matches_the_whole_sequence(start, end):
    r = request(S.RUNNING)
    r.output_token_ids += [7, 8]
    assert r.token_slice(start, end) == r.all_token_ids[start:end]

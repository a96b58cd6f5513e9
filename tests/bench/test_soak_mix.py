"""The soak's request mix: seeded, covering every element, and its answer checks catching what a
broken server would send."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from kernel_core.bench.soak_mix import ELEMENTS, Job, _Answer, check_answer, draw_job

ADAPTERS = ["a0", "a1", "a2"]


def _jobs(seed: int, count: int = 2000) -> list[Job]:
    rng = random.Random(seed)
    return [draw_job(rng, "base", ADAPTERS, 16) for _ in range(count)]


def test_the_mix_is_seeded_and_covers_every_element() -> None:
    jobs = _jobs(3)
    assert jobs == _jobs(3) and jobs != _jobs(4)
    seen = Counter(name for job in jobs for name in job.elements())
    seen.update(f"abort {job.abort}" for job in jobs if job.abort)
    assert all(seen[name] > 0 for name in ELEMENTS), seen
    assert {job.model for job in jobs} == {"base", *ADAPTERS}
    assert all(1 <= job.max_tokens <= 16 and 1 <= job.n <= 3 for job in jobs)
    assert all(job.stream for job in jobs if job.abort == "mid-stream")


def test_request_bodies_follow_the_api() -> None:
    jobs = _jobs(5, 400)
    chat = next(j for j in jobs if j.route == "chat" and j.logprobs is not None and j.stream)
    body = chat.body()
    assert body["messages"] == [{"role": "user", "content": chat.prompts[0]}] and "prompt" not in body
    assert (body["logprobs"], body["top_logprobs"]) == (True, chat.logprobs) and chat.logprobs >= 1
    assert body["stream_options"] == {"include_usage": True} and chat.path == "/v1/chat/completions"
    listed = next(j for j in jobs if len(j.prompts) > 1)
    assert listed.body()["prompt"] == list(listed.prompts) and listed.choices == 2 * listed.n
    plain = next(j for j in jobs if j.route == "completions" and not j.stop and not j.stream and j.logprobs is None)
    assert {"stop", "logprobs", "stream_options", "messages"}.isdisjoint(plain.body())


def _job(**fields) -> Job:
    base = dict(route="completions", model="m", adapter=False, prompts=("p",), stream=False, n=2, max_tokens=8,
                logprobs=None, stop=(), temperature=0.0, seed=0)
    return Job(**{**base, **fields})


def _answer(texts: list[str], tokens: int = 6, finish: str = "length", logprob_entries: list[int] = ()) -> _Answer:
    answer = _Answer(completion_tokens=tokens)
    for i, text in enumerate(texts):
        answer.text[i], answer.finish[i] = text, finish
    answer.logprob_entries = dict(enumerate(logprob_entries))
    return answer


def test_a_whole_answer_passes() -> None:
    assert check_answer(_job(stop=("!",), logprobs=2), _answer(["a b", "c d"], logprob_entries=[3, 3])) is None


@pytest.mark.parametrize(("job", "answer", "problem"), [
    (_job(), _answer(["only one"]), "choices [0], wanted indices 0..1"),
    (_job(prompts=("p", "q")), _answer(["a", "b"]), "choices [0, 1], wanted indices 0..3"),
    (_job(), _answer(["a", "b"], tokens=17), "17 completion tokens for 2 choices of max_tokens 8"),
    (_job(), _answer(["a", "b"], finish="abort"), "finish reasons {0: 'abort', 1: 'abort'}"),
    (_job(stop=("\n",)), _answer(["a", "b\nc"]), "stop string in the text: (1, '\\n')"),
    (_job(logprobs=0), _answer(["a", "b"], logprob_entries=[3, 2]), "5 logprobs entries for 6 tokens"),
])
def test_a_wrong_answer_is_named(job: Job, answer: _Answer, problem: str) -> None:
    assert check_answer(job, answer) == problem


def test_an_answer_without_usage_is_wrong() -> None:
    answer = _answer(["a", "b"])
    answer.completion_tokens = None
    assert check_answer(_job(), answer) == "no usage"


def test_stream_chunks_add_up_per_choice() -> None:
    answer = _Answer()
    for chunk in ({"index": 1, "delta": {"role": "assistant", "content": ""}},
                  {"index": 1, "delta": {"content": "Hel"}, "logprobs": {"content": [{}]}},
                  {"index": 0, "delta": {"content": "Yo"}, "logprobs": {"content": [{}, {}]}},
                  {"index": 1, "delta": {"content": "lo"}, "logprobs": {"content": [{}]}, "finish_reason": "stop"}):
        answer.add_choice("chat", chunk, stream=True)
    assert answer.text == {0: "Yo", 1: "Hello"} and answer.logprob_entries == {0: 2, 1: 2}
    assert answer.finish == {0: None, 1: "stop"}

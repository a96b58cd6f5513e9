"""The step-level engine's mechanics on a tiny model: lifecycle, every exit path frees its
blocks, failures stay with their request, bad input is refused naming the culprit."""

from __future__ import annotations

from pathlib import Path

import pytest

from kernel_core.config import EngineConfig
from kernel_core.engine.llm_engine import LLMEngine
from kernel_core.errors import InvalidRequestError
from kernel_core.outputs import RequestOutput
from kernel_core.sampling_params import SamplingParams

GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
PROMPTS = [
    "Hello, my name is",
    "The capital of France is a city with many museums and",
    "def add(a, b):",
    "Once upon a time " * 12,
]


def engine(folder: Path, **config) -> LLMEngine:
    return LLMEngine(EngineConfig(model=str(folder), **{"num_kv_blocks": 256, **config}))


def run(e: LLMEngine) -> dict[str, RequestOutput]:
    finished: dict[str, RequestOutput] = {}
    while e.has_unfinished_requests():
        for output in e.step():
            if output.finished:
                finished[output.request_id] = output
    return finished


def alone(folder: Path, prompt: str, params: SamplingParams = GREEDY) -> list[int]:
    e = engine(folder)
    e.add_request("alone", prompt, params)
    return run(e)["alone"].outputs[0].token_ids


def assert_pool_full(e: LLMEngine) -> None:
    stats = e.components.cache.stats()
    assert stats.num_free_blocks == stats.num_blocks
    assert not e.scheduler.running and not e.scheduler.waiting


def test_batched_outputs_equal_each_request_alone(tiny_model):
    e = engine(tiny_model)
    for i, prompt in enumerate(PROMPTS):
        e.add_request(str(i), prompt, GREEDY)
    outputs = run(e)
    for i, prompt in enumerate(PROMPTS):
        assert outputs[str(i)].outputs[0].token_ids == alone(tiny_model, prompt)
        assert outputs[str(i)].outputs[0].finish_reason == "length"
    assert_pool_full(e)


def test_every_exit_path_returns_the_pool_to_full(tiny_model, monkeypatch):
    e = engine(tiny_model, num_kv_blocks=12, max_num_batched_tokens=32)  # small: forces preemption
    text = alone(tiny_model, PROMPTS[0])
    e.add_request("length", PROMPTS[0], GREEDY)
    e.add_request("stop-token", PROMPTS[1], SamplingParams(temperature=0, max_tokens=12, stop_token_ids=[alone(tiny_model, PROMPTS[1])[3]]))
    e.add_request("abort-running", PROMPTS[2], GREEDY)
    e.add_request("abort-waiting", PROMPTS[3], GREEDY)
    e.add_request("error", PROMPTS[0], GREEDY)
    e.add_request("timeout", PROMPTS[1], GREEDY, timeout=0.0)
    failing = e._completions["error"]
    monkeypatch.setattr(failing.detokenizer, "step", lambda token_id: 1 / 0)
    assert e.abort_request("abort-waiting")
    outputs = {o.request_id: o for o in e.step() if o.finished}
    assert e.abort_request("abort-running")
    outputs |= run(e)
    reasons = {rid: (o.outputs[0].finish_reason, o.outputs[0].error) for rid, o in outputs.items()}
    assert reasons["length"] == ("length", None)
    assert reasons["stop-token"][0] == "stop"
    assert reasons["abort-running"] == ("abort", None)
    assert reasons["error"] == ("error", "ZeroDivisionError: division by zero")
    assert reasons["timeout"] == ("abort", "timed out after 0 s")
    assert outputs["length"].outputs[0].token_ids == text  # preemption did not change it
    assert_pool_full(e)
    assert not e.abort_request("length") and not e.abort_request("nope")


def test_preemption_recomputes_without_changing_outputs(tiny_model):
    e = engine(tiny_model, num_kv_blocks=10, max_num_batched_tokens=64)
    for i, prompt in enumerate(PROMPTS):
        e.add_request(str(i), prompt, SamplingParams(temperature=0, max_tokens=30, ignore_eos=True))
    preemptions = 0
    finished = {}
    while e.has_unfinished_requests():
        preemptions += sum(c.request.num_preemptions for c in e._completions.values())
        finished |= {o.request_id: o for o in e.step() if o.finished}
    assert preemptions > 0
    params = SamplingParams(temperature=0, max_tokens=30, ignore_eos=True)
    for i, prompt in enumerate(PROMPTS):
        assert finished[str(i)].outputs[0].token_ids == alone(tiny_model, prompt, params)
    assert_pool_full(e)


def test_chunked_prefill_gives_the_same_tokens(tiny_model):
    e = engine(tiny_model, max_num_batched_tokens=16, block_size=4)
    for i, prompt in enumerate(PROMPTS):
        e.add_request(str(i), prompt, GREEDY)
    outputs = run(e)
    for i, prompt in enumerate(PROMPTS):
        assert outputs[str(i)].outputs[0].token_ids == alone(tiny_model, prompt)


def test_prefix_cache_hits_give_the_same_tokens(tiny_model):
    e = engine(tiny_model)
    e.add_request("first", PROMPTS[3], GREEDY)
    first = run(e)["first"].outputs[0].token_ids
    e.add_request("second", PROMPTS[3], GREEDY)
    assert run(e)["second"].outputs[0].token_ids == first
    stats = e.components.cache.stats()
    assert stats.prefix_hits > 0


def test_seeded_sampling_is_reproducible_whatever_the_batch(tiny_model):
    params = SamplingParams(temperature=1.0, top_p=0.9, seed=1234, max_tokens=10, ignore_eos=True)
    solo = alone(tiny_model, PROMPTS[0], params)
    e = engine(tiny_model)
    e.add_request("other", PROMPTS[1], SamplingParams(temperature=1.0, max_tokens=10))
    e.add_request("seeded", PROMPTS[0], params)
    assert run(e)["seeded"].outputs[0].token_ids == solo


def test_n_completions_share_the_prompt_and_differ(tiny_model):
    e = engine(tiny_model)
    e.add_request("n", PROMPTS[3], SamplingParams(n=3, temperature=1.0, seed=7, max_tokens=8, ignore_eos=True))
    output = run(e)["n"]
    assert [c.index for c in output.outputs] == [0, 1, 2]
    assert len({tuple(c.token_ids) for c in output.outputs}) > 1
    assert all(len(c.token_ids) == 8 for c in output.outputs)
    assert e.components.cache.stats().prefix_hits > 0  # the siblings reused the prompt's blocks
    assert_pool_full(e)


def test_stop_string_truncates_the_text(tiny_model):
    full = engine(tiny_model)
    full.add_request("full", PROMPTS[0], GREEDY)
    text = run(full)["full"].outputs[0].text
    stop = text[4:7]
    e = engine(tiny_model)
    e.add_request("stop", PROMPTS[0], SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, stop=[stop]))
    out = run(e)["stop"].outputs[0]
    assert (out.finish_reason, out.stop_reason) == ("stop", stop)
    assert out.text == text[: text.index(stop)]


def test_streaming_outputs_only_grow(tiny_model):
    e = engine(tiny_model)
    e.add_request("s", PROMPTS[2], GREEDY)
    texts = []
    while e.has_unfinished_requests():
        texts += [o.outputs[0].text for o in e.step()]
    assert all(b.startswith(a) for a, b in zip(texts, texts[1:]))
    assert len(texts) == GREEDY.max_tokens


def test_priority_policy_serves_the_urgent_request_first(tiny_model):
    e = engine(tiny_model, scheduler_policy="priority", max_num_seqs=1)
    e.add_request("late-but-urgent", PROMPTS[0], GREEDY, priority=-1, arrival_time=2.0)
    e.add_request("early", PROMPTS[1], GREEDY, priority=0, arrival_time=1.0)
    order = []
    while e.has_unfinished_requests():
        order += [o.request_id for o in e.step() if o.finished]
    assert order == ["late-but-urgent", "early"]


def test_observers_see_every_request_and_step(tiny_model, kcore_register, kcore_plugin_manager):
    import types

    from kernel_core import hookimpl

    seen = {"added": [], "finished": [], "steps": 0}
    observer = types.ModuleType("observer")
    observer.kernel_core_api = "1.0"
    observer.kernel_core_request_added = hookimpl(lambda event: seen["added"].append(event.request_id))
    observer.kernel_core_request_finished = hookimpl(lambda event: seen["finished"].append((event.request_id, event.finish_reason)))
    observer.kernel_core_step_done = hookimpl(lambda stats: seen.__setitem__("steps", seen["steps"] + 1))
    e = engine(tiny_model)
    e.plugins = kcore_plugin_manager
    kcore_register(observer)
    e.add_request("a", PROMPTS[0], GREEDY)
    run(e)
    assert seen["added"] == ["a"] and seen["finished"] == [("a", "length")] and seen["steps"] == GREEDY.max_tokens


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ("", "the prompt is empty"),
        ([], "the prompt has no token ids"),
        (3.5, "a prompt is a string or a list of token ids, not float"),
        ([1, 2, 10**9], "token ids [1000000000] are outside the vocabulary"),
        ("word " * 1100, "but max_model_len is 1024"),
    ],
)
def test_bad_prompts_are_refused_naming_the_problem(tiny_model, prompt, message):
    e = engine(tiny_model)
    with pytest.raises(InvalidRequestError, match=message.replace("[", r"\[").replace("]", r"\]")):
        e.add_request("bad", prompt, GREEDY)
    e.add_request("good", PROMPTS[0], GREEDY)
    assert run(e)["good"].outputs[0].token_ids == alone(tiny_model, PROMPTS[0])


def test_duplicate_id_and_kv_overflow_are_refused(tiny_model):
    e = engine(tiny_model, num_kv_blocks=4, block_size=4)
    e.add_request("x", "hi", SamplingParams(max_tokens=2))
    with pytest.raises(InvalidRequestError, match="'x' is already in use"):
        e.add_request("x", "hi", SamplingParams(max_tokens=2))
    with pytest.raises(InvalidRequestError, match="exceed the KV cache \\(16 tokens\\)"):
        e.add_request("y", "hi", SamplingParams(max_tokens=20))


@pytest.mark.parametrize(
    ("field", "value"),
    [("temperature", -1), ("top_p", 0), ("top_k", -2), ("max_tokens", 0), ("n", 0), ("min_p", 2), ("logprobs", 99)],
)
def test_invalid_sampling_parameters_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**{field: value})


@pytest.mark.parametrize(("field", "value"), [("max_num_seqs", 0), ("block_size", -1), ("dtype", "int8"), ("bogus", 1)])
def test_invalid_engine_config_names_the_field(tiny_model, field, value):
    with pytest.raises(ValueError, match=field):
        EngineConfig(model=str(tiny_model), **{field: value})

"""The asyncio engine on a tiny model: streaming, batching of concurrent requests, every way a
request can leave early (consumer gone, abort, timeout, shutdown) frees its blocks, bad input is
raised where a server can turn it into a 400."""

from __future__ import annotations

import asyncio
import time
import types
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from kernel_core import hookimpl
from kernel_core.config import EngineConfig
from kernel_core.engine.async_engine import AsyncLLMEngine, EngineNotRunningError
from kernel_core.engine.llm_engine import LLMEngine
from kernel_core.errors import InvalidRequestError
from kernel_core.outputs import RequestOutput
from kernel_core.sampling_params import SamplingParams

GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
LONG = SamplingParams(temperature=0, max_tokens=400, ignore_eos=True)  # outlives every test that cuts it short
PROMPTS = [
    "Hello, my name is",
    "The capital of France is a city with many museums and",
    "def add(a, b):",
    "Once upon a time " * 12,
]


@pytest.fixture(scope="module")
def llm_engine(tiny_model: Path) -> LLMEngine:
    """One engine for the module (building it dominates a test); each test wraps it anew."""
    return LLMEngine(EngineConfig(model=str(tiny_model), num_kv_blocks=64))


@pytest.fixture
def engine(llm_engine: LLMEngine) -> Iterator[AsyncLLMEngine]:
    """A fresh, unstarted async engine; afterwards the shared engine must be idle with a full pool."""
    yield AsyncLLMEngine(llm_engine)
    assert not llm_engine.has_unfinished_requests()
    stats = llm_engine.components.cache.stats()
    assert stats.num_free_blocks == stats.num_blocks


@pytest.fixture
def observed(llm_engine: LLMEngine, kcore_register, kcore_plugin_manager, monkeypatch) -> types.SimpleNamespace:
    """What the engine's observers see: each step's stats and each finished request."""
    seen = types.SimpleNamespace(steps=[], finished=[])
    observer = types.ModuleType("observer")
    observer.kernel_core_api = "1.0"
    observer.kernel_core_step_done = hookimpl(lambda stats: seen.steps.append(stats))
    observer.kernel_core_request_finished = hookimpl(
        lambda event: seen.finished.append((event.request_id, event.finish_reason))
    )
    monkeypatch.setattr(llm_engine, "plugins", kcore_plugin_manager)
    kcore_register(observer)
    return seen


def run(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """``asyncio.run`` with a deadline, so a hang fails the test instead of the suite."""
    return asyncio.run(asyncio.wait_for(coroutine, 120))


async def collect(
    engine: AsyncLLMEngine, prompt: str, params: SamplingParams = GREEDY, **kwargs: Any
) -> list[RequestOutput]:
    return await drain(engine.generate(prompt, params, **kwargs))


async def drain(stream: AsyncIterator[RequestOutput]) -> list[RequestOutput]:
    return [output async for output in stream]


async def until(condition: Callable[[], bool], seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def alone(llm_engine: LLMEngine, prompt: str) -> list[int]:
    """Token ids of the prompt run by itself on the step-level engine (no worker running)."""
    llm_engine.add_request("alone", prompt, GREEDY)
    while llm_engine.has_unfinished_requests():
        for output in llm_engine.step():
            if output.finished:
                return output.outputs[0].token_ids
    raise AssertionError("no finished output")


def pool_is_full(engine: AsyncLLMEngine) -> bool:
    stats = engine.stats
    return stats.num_free_blocks == stats.num_blocks and stats.num_running == stats.num_waiting == 0


def test_streams_one_growing_output_per_step_ending_with_the_finished_one(engine, llm_engine, monkeypatch):
    expected = alone(llm_engine, PROMPTS[0])
    # One output per step holds only while the consumer keeps up (a slower one gets the newest, by
    # design: Mailbox). A tiny model's steps take about a millisecond, less than the event loop may
    # wait for the GIL, so each step waits 20 ms first (the GIL released) for the loop to take the last.
    step = llm_engine.step
    monkeypatch.setattr(llm_engine, "step", lambda: time.sleep(0.02) or step())

    async def main() -> list[RequestOutput]:
        async with engine:
            return await collect(engine, PROMPTS[0], request_id="r")

    outputs = run(main())
    assert [len(o.outputs[0].token_ids) for o in outputs] == list(range(1, GREEDY.max_tokens + 1))
    assert [o.finished for o in outputs] == [False] * (GREEDY.max_tokens - 1) + [True]
    assert {o.request_id for o in outputs} == {"r"}
    texts = [o.outputs[0].text for o in outputs]
    assert all(later.startswith(earlier) for earlier, later in zip(texts, texts[1:]))
    assert outputs[-1].outputs[0].token_ids == expected
    assert outputs[-1].outputs[0].finish_reason == "length"


def test_a_slow_consumer_gets_only_the_newest_output_and_loses_nothing(engine, llm_engine):
    """Outputs are cumulative: one consumer that cannot keep up skips intermediate ones (nothing
    piles up for it) and still ends with the whole, finished output."""
    expected = alone(llm_engine, PROMPTS[0])

    async def main() -> list[RequestOutput]:
        async with engine:
            outputs = []
            async for output in engine.generate(PROMPTS[0], GREEDY):
                outputs.append(output)
                await until(lambda: output.finished or engine.stats.num_running == 0)  # the engine runs ahead
            return outputs

    outputs = run(main())
    assert len(outputs) < GREEDY.max_tokens
    assert outputs[-1].finished and outputs[-1].outputs[0].token_ids == expected


def test_concurrent_requests_are_batched_and_each_equals_it_run_alone(engine, llm_engine, observed):
    expected = [alone(llm_engine, prompt) for prompt in PROMPTS]
    observed.steps.clear()

    async def main() -> list[list[RequestOutput]]:
        async with engine:
            return await asyncio.gather(*(collect(engine, prompt) for prompt in PROMPTS))

    results = run(main())
    assert [outputs[-1].outputs[0].token_ids for outputs in results] == expected
    assert max(step.num_running for step in observed.steps) > 1


def test_the_event_loop_runs_other_tasks_during_a_generation(engine):
    async def main() -> int:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.001)
                ticks += 1

        async with engine:
            ticker = asyncio.create_task(tick())
            await collect(engine, PROMPTS[3])
            ticker.cancel()
        return ticks

    assert run(main()) >= 3


@pytest.mark.parametrize("how", ["break", "cancel"])
def test_a_consumer_that_leaves_aborts_its_request_and_frees_its_blocks(engine, observed, how):
    async def main() -> None:
        async with engine:
            if how == "break":
                async for output in engine.generate(PROMPTS[3], LONG, "gone"):
                    if len(output.outputs[0].token_ids) == 2:
                        break
            else:
                started = asyncio.Event()

                async def consume() -> None:
                    async for _ in engine.generate(PROMPTS[3], LONG, "gone"):
                        started.set()

                task = asyncio.create_task(consume())
                await started.wait()
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            await until(lambda: pool_is_full(engine))
            assert engine.is_running
            assert (await collect(engine, PROMPTS[0]))[-1].finished  # the engine goes on

    run(main())
    assert observed.finished[0] == ("gone", "abort")


def test_abort_ends_the_stream_with_finish_reason_abort(engine):
    async def main() -> tuple[list[RequestOutput], bool, bool]:
        async with engine:
            stream = engine.generate(PROMPTS[1], LONG, "x")
            await anext(stream)
            assert await engine.abort("x")
            rest = await drain(stream)
            return rest, await engine.abort("x"), await engine.abort("unknown")

    rest, again, unknown = run(main())
    assert rest[-1].finished and rest[-1].outputs[0].finish_reason == "abort"
    assert not again and not unknown


def test_a_request_past_its_timeout_is_aborted(engine):
    async def main() -> list[RequestOutput]:
        async with engine:
            return await collect(engine, PROMPTS[0], LONG, timeout=0.2)

    last = run(main())[-1].outputs[0]
    assert (last.finish_reason, last.error) == ("abort", "timed out after 0.2 s")
    assert len(last.token_ids) < LONG.max_tokens


def test_shutdown_lets_in_flight_requests_finish_and_refuses_new_ones(engine):
    async def main() -> list[list[RequestOutput]]:
        engine.start()
        streams = [engine.generate(prompt, GREEDY) for prompt in PROMPTS[:2]]
        firsts = [await anext(stream) for stream in streams]
        rests = asyncio.gather(*(drain(stream) for stream in streams))
        await engine.shutdown(timeout=60)
        assert not engine.is_running
        with pytest.raises(EngineNotRunningError, match="not running"):
            await collect(engine, PROMPTS[0])
        return [[first, *rest] for first, rest in zip(firsts, await rests)]

    results = run(main())
    assert [outputs[-1].outputs[0].finish_reason for outputs in results] == ["length", "length"]


def test_shutdown_aborts_what_is_left_after_its_timeout(engine, llm_engine):
    async def main() -> list[RequestOutput]:
        engine.start()
        stream = engine.generate(PROMPTS[2], LONG)
        await anext(stream)
        await engine.shutdown(timeout=0.1)
        return await drain(stream)

    rest = run(main())
    assert rest[-1].finished and rest[-1].outputs[0].finish_reason == "abort"
    assert len(rest[-1].outputs[0].token_ids) < LONG.max_tokens


@pytest.mark.parametrize(
    ("prompt", "params", "message"),
    [
        ("", GREEDY, "the prompt is empty"),
        ("word " * 1100, GREEDY, "but max_model_len is 1024"),
        (PROMPTS[0], {"temperature": 0}, "params must be SamplingParams, not dict"),
    ],
)
def test_bad_input_is_raised_from_the_first_anext(engine, prompt, params, message):
    async def main() -> list[RequestOutput]:
        async with engine:
            with pytest.raises(InvalidRequestError, match=message):
                await anext(engine.generate(prompt, params, "bad"))
            return await collect(engine, PROMPTS[0], request_id="bad")  # the id is free, the engine goes on

    assert run(main())[-1].outputs[0].finish_reason == "length"


def test_a_request_id_in_use_is_refused(engine):
    async def main() -> None:
        async with engine:
            stream = engine.generate(PROMPTS[0], GREEDY, "same")
            await anext(stream)
            with pytest.raises(InvalidRequestError, match="'same' is already in use"):
                await anext(engine.generate(PROMPTS[1], GREEDY, "same"))
            assert (await drain(stream))[-1].finished

    run(main())


def test_generate_before_start_is_refused(engine):
    with pytest.raises(EngineNotRunningError, match="start it first"):
        run(collect(engine, PROMPTS[0]))


def test_a_failing_worker_fails_the_streams_and_the_health_check(engine, llm_engine, monkeypatch):
    def boom() -> list[RequestOutput]:
        raise RuntimeError("boom")

    async def main() -> None:
        async with engine:
            monkeypatch.setattr(llm_engine, "step", boom)
            with pytest.raises(EngineNotRunningError, match="the engine failed: boom"):
                await collect(engine, PROMPTS[0], request_id="victim")
            assert not engine.is_running and isinstance(engine.error, RuntimeError)
            with pytest.raises(EngineNotRunningError, match="the engine failed: boom"):
                await collect(engine, PROMPTS[0])

    run(main())
    monkeypatch.undo()
    llm_engine.abort_request("victim")  # the dead worker left it behind: free it for the next tests
    while llm_engine.has_unfinished_requests():
        llm_engine.step()

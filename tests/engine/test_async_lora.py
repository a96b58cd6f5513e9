"""The asyncio engine serving adapters: an adapter per request, and load/unload/list while it
runs, the disk read never pausing the requests already streaming."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from kernel_core.config import EngineConfig
from kernel_core.engine.async_engine import AsyncLLMEngine, EngineNotRunningError
from kernel_core.engine.llm_engine import LLMEngine
from kernel_core.errors import AdapterInUseError, AdapterLoadError, InvalidRequestError, UnknownAdapterError
from kernel_core.adapters import registry as registry_module
from kernel_core.sampling_params import SamplingParams

from ..lora.peft_adapters import ADAPTERS, Oracle, make_adapter

GREEDY = SamplingParams(temperature=0, max_tokens=8)
LONG = SamplingParams(temperature=0, max_tokens=400, ignore_eos=True)
PROMPTS = ["Hello, my name is", "The capital of France is a city with many museums and"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def folders(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("async-adapters")
    return {name: make_adapter(tiny_model, root / name, seed, **ADAPTERS[name])
            for seed, name in enumerate(("qv8", "all16", "pattern8"), 1)}


@pytest.fixture
def engine(tiny_model: Path) -> AsyncLLMEngine:
    config = EngineConfig(model=str(tiny_model), num_kv_blocks=64, enable_lora=True, max_loras=2, max_lora_rank=32)
    return AsyncLLMEngine(LLMEngine(config))


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 120))


async def tokens(engine: AsyncLLMEngine, prompt: str, adapter: str | None, params: SamplingParams = GREEDY) -> list[int]:
    last = None
    async for output in engine.generate(prompt, params, adapter=adapter):
        last = output
    return list(last.outputs[0].token_ids)


def test_each_request_runs_its_own_adapter(engine, folders, tiny_model):
    oracle = Oracle(tiny_model)
    ids = [engine.engine.tokenizer(p)["input_ids"] for p in PROMPTS]
    jobs = [(p, name) for p in range(2) for name in ("qv8", "all16", "pattern8", None)]

    async def main():
        for name in ("qv8", "all16", "pattern8"):
            await engine.load_adapter(name, folders[name])  # before start: right away
        async with engine:
            outputs = await asyncio.gather(*(tokens(engine, PROMPTS[p], name) for p, name in jobs))
            listed = await engine.list_adapters()
        return outputs, listed

    outputs, listed = run(main())
    for (p, name), got in zip(jobs, outputs):
        assert got == oracle.generate(folders[name] if name else None, ids[p], GREEDY.max_tokens), (p, name)
    assert [(i.name, i.num_requests) for i in listed] == [("all16", 0), ("pattern8", 0), ("qv8", 0)]


def test_loading_does_not_pause_running_requests(engine, folders, monkeypatch):
    """The read and conversion run outside the worker: the stream keeps growing meanwhile."""
    real = registry_module.load_host_adapter
    reading = threading.Event()

    def slow_read(*args, **kwargs):
        reading.set()
        assert threading.current_thread().name != "kcore-engine"
        time.sleep(1.0)  # a large adapter on a slow disk
        return real(*args, **kwargs)

    monkeypatch.setattr(registry_module, "load_host_adapter", slow_read)

    async def main():
        async with engine:
            grown = []
            stream = engine.generate(PROMPTS[0], LONG, request_id="long")
            await stream.__anext__()
            load = asyncio.create_task(engine.load_adapter("qv8", folders["qv8"]))
            async for output in stream:  # a step's output every few ms while the load reads
                grown.append(len(output.outputs[0].token_ids))
                if load.done():
                    break
            await load
            used = await tokens(engine, PROMPTS[1], "qv8")
            await stream.aclose()
            return grown, used, await engine.list_adapters()

    grown, used, listed = run(main())
    assert reading.is_set()
    assert len(grown) >= 5, "the running request stalled while the adapter loaded"
    assert len(used) == GREEDY.max_tokens and [i.name for i in listed] == ["qv8"]


def test_bad_adapters_and_unloading_while_in_use(engine, folders, tmp_path):
    async def main():
        await engine.load_adapter("qv8", folders["qv8"])
        async with engine:
            with pytest.raises(AdapterLoadError, match="does not exist"):
                await engine.load_adapter("bad", tmp_path / "missing")
            with pytest.raises(ValueError, match="'qv8' is already loaded"):
                await engine.load_adapter("qv8", folders["all16"])
            with pytest.raises(UnknownAdapterError, match="unknown adapter 'nope'"):
                await tokens(engine, PROMPTS[0], "nope")
            stream = engine.generate(PROMPTS[0], LONG, adapter="qv8")
            await stream.__anext__()
            with pytest.raises(AdapterInUseError, match="'qv8' is used by 1 queued or running"):
                await engine.unload_adapter("qv8")
            await stream.aclose()  # aborts it
            for _ in range(200):
                if (await engine.list_adapters())[0].num_requests == 0:
                    break
                await asyncio.sleep(0.01)
            await engine.unload_adapter("qv8")
            with pytest.raises(UnknownAdapterError, match="'qv8'"):
                await engine.unload_adapter("qv8")
            return await engine.list_adapters()

    assert run(main()) == []
    stats = engine.engine.components.cache.stats()
    assert stats.num_free_blocks == stats.num_blocks
    assert engine.engine.adapters.slots.holders == [0, 0]

    async def after_shutdown():
        with pytest.raises(EngineNotRunningError):
            await engine.list_adapters()

    run(after_shutdown())


def test_without_enable_lora_load_is_refused(tiny_model, folders):
    engine = AsyncLLMEngine(LLMEngine(EngineConfig(model=str(tiny_model), num_kv_blocks=16)))
    with pytest.raises(InvalidRequestError, match="enable_lora=True"):
        run(engine.load_adapter("qv8", folders["qv8"]))

"""Adapter loads and unloads interleaved with running requests (hypothesis stateful testing),
on the tiny model with adapters made by ``peft``: more adapters than slots and than host memory
keeps, one name reloaded from another folder, unknown names, broken folders, aborts, preemption.

Checked after every rule: no request is scheduled with an adapter that is not loaded, or under
another load of its name; slots never exceed ``max_loras`` and each is held by exactly the
running requests of its adapter; each adapter's user count is its queued and running requests;
unloading is refused (AdapterInUseError) exactly while such requests exist. An unknown adapter
fails its own request only. Every completion's tokens equal its adapter's greedy tokens alone,
whatever was loaded, evicted or preempted around it. After draining and unloading everything,
slots, users and the KV pool are back to idle.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from kernel_core.config import EngineConfig
from kernel_core.engine.llm_engine import LLMEngine
from kernel_core.engine.scheduler import ScheduledStep
from kernel_core.errors import AdapterInUseError, AdapterLoadError, UnknownAdapterError
from kernel_core.outputs import RequestOutput
from kernel_core.sampling_params import SamplingParams

from .peft_adapters import make_adapter

NAMES = ["a", "b", "c", "d"]
PROMPTS = ["Hello, my name is", "The capital of France is", "def add(a, b):"]
MAX_TOKENS = 6
GREEDY = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
#: Two slots, host memory for three: four names over three folders evict and reload; 24 tokens
#: of KV for up to four requests of up to 14 tokens: preemption.
CONFIG = dict(enable_lora=True, max_loras=2, max_cpu_loras=3, max_lora_rank=8, num_kv_blocks=6, block_size=4,
              max_num_seqs=4, max_num_batched_tokens=32)
#: The autouse plugin-environment fixture is function-scoped; it holds no state between examples.
FAST = settings(max_examples=100, stateful_step_count=40, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
LONG = settings(FAST, max_examples=1000, stateful_step_count=60)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def folders(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("interleaving-adapters")
    specs = [
        dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
        dict(r=8, lora_alpha=16, target_modules="all-linear"),
        dict(r=8, lora_alpha=8, target_modules=["gate_proj", "up_proj", "down_proj"]),
    ]
    return [make_adapter(tiny_model, root / f"f{i}", seed, **spec) for i, (seed, spec) in enumerate(zip((11, 12, 13), specs))]


@pytest.fixture(scope="module")
def expected(tiny_model: Path, folders: list[Path]) -> dict[tuple[Path | None, str], list[int]]:
    """Greedy tokens of each (folder or base, prompt), each request alone on a fresh engine."""
    engine = LLMEngine(EngineConfig(model=str(tiny_model), **{**CONFIG, "num_kv_blocks": 64}))
    for i, folder in enumerate(folders):
        engine.load_adapter(f"ref{i}", folder)
    tokens = {}
    runs = [(None, None), *((f"ref{i}", folder) for i, folder in enumerate(folders))]
    for (adapter, folder), prompt in itertools.product(runs, PROMPTS):
        engine.add_request("ref", prompt, GREEDY, adapter=adapter)
        while engine.has_unfinished_requests():
            tokens.update({(folder, prompt): o.outputs[0].token_ids for o in engine.step() if o.finished})
    return tokens


@dataclass
class Live:
    """A submitted request not yet finished, as the test expects it."""

    adapter: str | None
    folder: Path | None  # the folder its adapter was loaded from when it was submitted
    prompt: str
    n: int
    unfinished: int  # completions still queued or running: the adapter's users


class Interleavings(RuleBasedStateMachine):
    """One engine; the model of what should be loaded and who uses it, checked against it."""

    make_engine: Callable[[], LLMEngine]
    folders: list[Path]
    broken: Path
    expected: dict[tuple[Path | None, str], list[int]]

    def __init__(self) -> None:
        super().__init__()
        self.engine = engine = self.make_engine()
        self.registry = engine.adapters
        self.loaded: dict[str, tuple[Path, int]] = {}  # name -> (folder, key of this load)
        self.live: dict[str, Live] = {}  # by request id
        self.ids = itertools.count()
        scheduler = engine.scheduler
        schedule = scheduler.schedule

        def checked_schedule() -> ScheduledStep:
            step = schedule()
            for request in step.requests:  # what is about to run: its own load, in a slot
                if request.adapter is not None:
                    assert request.adapter in self.loaded, f"{request.request_id} runs with unloaded {request.adapter}"
                    key = self.loaded[request.adapter][1]
                    assert request.adapter_key == key, f"{request.request_id} runs on another load of {request.adapter}"
                    assert self.registry.slot_of(request.adapter) is not None
            return step

        scheduler.schedule = checked_schedule

    # -- rules ---------------------------------------------------------------------------------

    @initialize(loads=st.lists(st.tuples(st.sampled_from(NAMES), st.integers(0, 2)), max_size=3, unique_by=lambda x: x[0]))
    def start(self, loads: list[tuple[str, int]]) -> None:
        for name, which in loads:
            self.load(name, which)

    @rule(name=st.sampled_from(NAMES), which=st.integers(0, 3))
    def load(self, name: str, which: int) -> None:
        """Load a folder (index 3: a broken one) under a name, maybe one already loaded."""
        folder = self.folders[which] if which < len(self.folders) else self.broken
        if name in self.loaded:
            with pytest.raises(ValueError, match=f"'{name}' is already loaded"):
                self.engine.load_adapter(name, folder)
        elif folder == self.broken:
            with pytest.raises(AdapterLoadError):
                self.engine.load_adapter(name, folder)
        else:
            self.engine.load_adapter(name, folder)
            self.loaded[name] = (folder, self.registry.key_of(name))

    @rule(name=st.sampled_from(NAMES))
    def unload(self, name: str) -> None:
        """Refused while a queued or running request uses it; unknown names are named."""
        if name not in self.loaded:
            with pytest.raises(UnknownAdapterError, match=f"'{name}'"):
                self.engine.unload_adapter(name)
        elif any(live.adapter == name and live.unfinished for live in self.live.values()):
            with pytest.raises(AdapterInUseError, match=f"'{name}'"):
                self.engine.unload_adapter(name)
        else:
            self.engine.unload_adapter(name)
            del self.loaded[name]

    @rule(kind=st.sampled_from(["loaded", "loaded", "base", "any name"]), prompt=st.sampled_from(PROMPTS),
          n=st.integers(1, 2), max_tokens=st.integers(1, MAX_TOKENS), data=st.data())
    def add_request(self, kind: str, prompt: str, n: int, max_tokens: int, data: st.DataObject) -> None:
        """A request for a loaded adapter, the base model, or any name (unloaded, unknown); a step follows."""
        choices = {"loaded": sorted(self.loaded), "base": [None], "any name": [*NAMES, "ghost"]}[kind] or [None]
        adapter = data.draw(st.sampled_from(choices), label="adapter")
        self.submit(adapter, prompt, n, max_tokens)
        self.collect(self.engine.step())

    def submit(self, adapter: str | None, prompt: str, n: int, max_tokens: int) -> None:
        request_id = f"r{next(self.ids)}"
        params = SamplingParams(n=n, temperature=0, max_tokens=max_tokens, ignore_eos=True)
        if adapter is not None and adapter not in self.loaded:
            with pytest.raises(UnknownAdapterError, match=f"request '{request_id}': unknown adapter '{adapter}'"):
                self.engine.add_request(request_id, prompt, params, adapter=adapter)
            return
        self.engine.add_request(request_id, prompt, params, adapter=adapter)
        folder = self.loaded[adapter][0] if adapter is not None else None
        self.live[request_id] = Live(adapter, folder, prompt, n, unfinished=n)

    @rule(steps=st.integers(1, 4))
    def step(self, steps: int) -> None:
        for _ in range(steps):
            self.collect(self.engine.step())

    @rule(data=st.data())
    def abort(self, data: st.DataObject) -> None:
        if self.live:
            request_id = data.draw(st.sampled_from(sorted(self.live)))
            assert self.engine.abort_request(request_id)
            self.collect(self.engine.step())

    # -- checks ----------------------------------------------------------------------------------

    def collect(self, outputs: list[RequestOutput]) -> None:
        """Count each request's unfinished completions (an adapter's users); a finished
        completion's tokens are its adapter's own greedy tokens (a prefix when aborted)."""
        for output in outputs:
            live = self.live[output.request_id]
            assert len(output.outputs) == live.n
            live.unfinished = sum(c.finish_reason is None for c in output.outputs)
            for completion in output.outputs:
                if completion.finish_reason is None:
                    continue
                assert completion.error is None and completion.finish_reason in ("length", "abort"), completion
                reference = self.expected[live.folder, live.prompt]
                assert completion.token_ids == reference[: len(completion.token_ids)], (
                    f"{output.request_id} on adapter {live.adapter} ({live.folder}) is not that adapter's output"
                )
            if output.finished:
                del self.live[output.request_id]

    @invariant()
    def slots_and_users_follow_the_requests(self) -> None:
        registry, slots = self.registry, self.registry.slots
        assert registry.names() == sorted(self.loaded)
        assert sum(adapter is not None for adapter in slots.adapter_in) <= len(slots.adapter_in) == CONFIG["max_loras"]
        users = {name: 0 for name in self.loaded}
        for live in self.live.values():
            if live.adapter is not None:
                users[live.adapter] += live.unfinished
        assert {info.name: info.num_requests for info in registry.info()} == users
        running: dict[str, int] = {}
        for request in self.engine.scheduler.running:
            if request.adapter is not None:
                running[request.adapter] = running.get(request.adapter, 0) + 1
        for name, count in running.items():
            assert slots.holders[registry.slot_of(name)] == count, f"slot of {name} held by other than its requests"
        assert sum(slots.holders) == sum(running.values())
        in_host = [info.name for info in registry.info() if info.in_host_memory]
        assert len(in_host) <= max(CONFIG["max_cpu_loras"], sum(1 for u in users.values() if u) + 1)

    def teardown(self) -> None:
        """Drain every request, unload every adapter: back to idle."""
        while self.engine.has_unfinished_requests():
            self.collect(self.engine.step())
        assert not self.live
        for name in list(self.loaded):
            self.engine.unload_adapter(name)
            del self.loaded[name]
        slots = self.registry.slots
        assert self.registry.names() == [] and slots.adapter_in == [None] * CONFIG["max_loras"]
        assert slots.holders == [0] * CONFIG["max_loras"]
        stats = self.engine.components.cache.stats()
        assert stats.num_free_blocks == stats.num_blocks
        del self.engine.scheduler.schedule  # the class's own again


@pytest.fixture(scope="module")
def machine(tiny_model: Path, folders: list[Path], expected: dict, tmp_path_factory: pytest.TempPathFactory) -> type:
    """The machine class, bound to one engine reused while each run leaves it idle."""
    shared: list[LLMEngine] = []

    def make_engine() -> LLMEngine:
        engine = shared[0] if shared else None
        idle = engine is not None and not engine.has_unfinished_requests() and not engine.adapters.names()
        if not idle:  # first run, or a failed run left it busy: a fresh one
            shared[:] = [LLMEngine(EngineConfig(model=str(tiny_model), **CONFIG))]
        return shared[0]

    broken = tmp_path_factory.mktemp("broken-adapter")
    (broken / "adapter_config.json").write_text("{not json")
    return type("BoundInterleavings", (Interleavings,), dict(
        make_engine=staticmethod(make_engine), folders=folders, broken=broken, expected=expected
    ))


def test_adapter_loads_and_unloads_interleaved_with_requests(machine: type) -> None:
    run_state_machine_as_test(machine, settings=FAST)


@pytest.mark.slow
def test_adapter_interleavings_long_run(machine: type) -> None:
    run_state_machine_as_test(machine, settings=LONG)

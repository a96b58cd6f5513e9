"""Resource faults at the engine level, each ending in progress or a clear error, never a hang or
a leak: more work than the KV pool holds (preemption by recompute, also with shared prefixes, n>1
and more adapters than slots), requests that fit nowhere, an adapter folder damaged while it is
loaded, requests timing out while they wait for blocks.

Every step loop is bounded (:func:`drain`): a livelock fails the test instead of hanging it. The
bound is twice the steps of serving the requests one after another; every request's greedy tokens
must equal those it gets alone, and the pool must be whole at the end."""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from kernel_core.config import EngineConfig
from kernel_core.engine import llm_engine
from kernel_core.engine.llm_engine import LLMEngine
from kernel_core.errors import InvalidRequestError
from kernel_core.outputs import RequestOutput
from kernel_core.sampling_params import SamplingParams

from ..lora.peft_adapters import ADAPTERS, make_adapter

BLOCK_SIZE, NUM_BLOCKS, BUDGET = 4, 12, 16
CAPACITY = BLOCK_SIZE * NUM_BLOCKS  # 48 tokens: the whole pool
SMALL_POOL = dict(num_kv_blocks=NUM_BLOCKS, block_size=BLOCK_SIZE, max_num_batched_tokens=BUDGET)
ADAPTER_NAMES = ("qv8", "rs16", "mlp12")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def greedy(max_tokens: int | None, n: int = 1) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True, n=n)


def tokens(length: int, first: int) -> list[int]:
    """A prompt of ``length`` token ids; prompts with different ``first`` share no prefix."""
    return list(range(first, first + length))


def engine(model: Path, **config) -> LLMEngine:
    return LLMEngine(EngineConfig(model=str(model), **config))


Ask = Callable[..., list[int]]


@pytest.fixture(scope="module")
def adapters(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {name: make_adapter(tiny_model, root / name, seed, **ADAPTERS[name]) for seed, name in enumerate(ADAPTER_NAMES, 1)}


@pytest.fixture(scope="module")
def alone(tiny_model: Path, adapters: dict[str, Path]) -> Ask:
    """A request's greedy tokens run by itself on a roomy engine (no prefix cache, every adapter
    in a slot of its own): what it must also get under any resource pressure."""
    roomy = engine(tiny_model, num_kv_blocks=256, enable_prefix_caching=False, enable_lora=True,
                   max_loras=len(adapters), max_lora_rank=16)
    for name, folder in adapters.items():
        roomy.load_adapter(name, folder)
    answers: dict[tuple, list[int]] = {}

    def ask(prompt: Sequence[int], max_tokens: int, adapter: str | None = None) -> list[int]:
        key = (tuple(prompt), max_tokens, adapter)
        if key not in answers:
            roomy.add_request("alone", list(prompt), greedy(max_tokens), adapter=adapter)
            answers[key] = drain(roomy, bound=max_tokens + len(prompt))["alone"].outputs[0].token_ids
        return answers[key]

    return ask


def drain(e: LLMEngine, bound: int) -> dict[str, RequestOutput]:
    """Step until nothing is unfinished, failing after ``bound`` steps; each step must compute
    something while work remains (no step idles on a full pool)."""
    finished: dict[str, RequestOutput] = {}
    for _ in range(bound):
        if not e.has_unfinished_requests():
            return finished
        waiting_before = [r.request_id for r in e.scheduler.waiting]
        outputs = e.step()
        assert outputs or e.scheduler.running, f"a step did nothing while {waiting_before} waited"
        finished |= {o.request_id: o for o in outputs if o.finished}
    running = [(r.request_id, r.num_computed_tokens, r.num_tokens) for r in e.scheduler.running]
    pytest.fail(f"not done after {bound} steps: running {running}, waiting {[r.request_id for r in e.scheduler.waiting]}")


def serial_bound(requests: Sequence[tuple[Sequence[int], int, int]]) -> int:
    """Twice the steps of running each (prompt, max_tokens, n) completion alone, one after
    another: prompt chunks of the step budget, then one step per output token."""
    return 2 * sum(n * (-(-len(prompt) // BUDGET) + max_tokens) for prompt, max_tokens, n in requests)


def assert_whole(e: LLMEngine) -> None:
    """Every block back in the pool, bookkeeping consistent, no request or adapter user left."""
    cache = e.components.cache
    cache.check_invariants()
    assert cache.stats().num_free_blocks == cache.stats().num_blocks
    assert not e.scheduler.running and not e.scheduler.waiting and not e._completions and not e._groups
    if e.adapters is not None:
        assert not any(e.adapters.slots.holders) and all(i.num_requests == 0 for i in e.list_adapters())


# -- 1. the pool at 100% with waiting work ----------------------------------------------------------


@pytest.mark.parametrize("policy", ["fcfs", "priority"])
def test_more_work_than_the_pool_holds_finishes_as_each_request_alone(policy, tiny_model, alone):
    e = engine(tiny_model, scheduler_policy=policy, **SMALL_POOL)
    requests = [(tokens(5 + 2 * i, 1000 * (i + 1)), 20 + i % 4, 1) for i in range(8)]  # each > 1/2 of the pool
    for i, (prompt, max_tokens, _) in enumerate(requests):
        e.add_request(str(i), prompt, greedy(max_tokens), priority=-i % 3)
    done = drain(e, serial_bound(requests))
    assert e.scheduler.num_preemptions > 0
    for i, (prompt, max_tokens, _) in enumerate(requests):
        assert done[str(i)].outputs[0].token_ids == alone(prompt, max_tokens), i
        assert done[str(i)].outputs[0].finish_reason == "length"
    assert_whole(e)


@pytest.mark.parametrize("big_arrives", ["first", "last"])
def test_one_request_grows_to_the_whole_pool_while_others_wait(big_arrives, tiny_model, alone):
    e = engine(tiny_model, **SMALL_POOL)
    big = (tokens(12, 50), CAPACITY - 12, 1)  # prompt + max_tokens = the pool exactly
    small = [(tokens(8, 1000 * (i + 1)), 10, 1) for i in range(3)]
    ordered = [("big", big)] + [(f"small{i}", r) for i, r in enumerate(small)]
    if big_arrives == "last":
        ordered = ordered[1:] + ordered[:1]
    for arrival, (request_id, (prompt, max_tokens, _)) in enumerate(ordered):
        e.add_request(request_id, prompt, greedy(max_tokens), arrival_time=float(arrival))
    held_whole_pool = []
    step = e.step
    e.step = lambda: (held_whole_pool.append(len(e.components.cache.block_table("big")) == NUM_BLOCKS), step())[1]
    done = drain(e, serial_bound([big, *small]))
    assert any(held_whole_pool)
    assert done["big"].outputs[0].token_ids == alone(big[0], big[1])
    for i, (prompt, max_tokens, _) in enumerate(small):
        assert done[f"small{i}"].outputs[0].token_ids == alone(prompt, max_tokens)
    assert_whole(e)


def test_shared_prefixes_under_a_full_pool(tiny_model, alone):
    e = engine(tiny_model, **SMALL_POOL)
    prefix = tokens(12, 7000)  # three full blocks every request starts with
    requests = [(prefix + tokens(3, 9000 + 10 * i), 14, 1) for i in range(10)]
    for i, (prompt, max_tokens, _) in enumerate(requests):
        e.add_request(str(i), prompt, greedy(max_tokens))
    done = drain(e, serial_bound(requests))
    assert e.scheduler.num_preemptions > 0 and e.components.cache.stats().prefix_hits >= 12 * 9
    for i, (prompt, max_tokens, _) in enumerate(requests):
        assert done[str(i)].outputs[0].token_ids == alone(prompt, max_tokens), i
    assert_whole(e)


def test_n_completions_that_cannot_all_fit_at_once(tiny_model, alone):
    """Four completions of one prompt need more than three times the pool together: they take
    turns (preempting each other) and all finish, beside an unrelated request."""
    e = engine(tiny_model, **SMALL_POOL)
    prompt, other = tokens(10, 300), tokens(6, 5000)
    e.add_request("n", prompt, greedy(30, n=4))
    e.add_request("other", other, greedy(12))
    done = drain(e, serial_bound([(prompt, 30, 4), (other, 12, 1)]))
    assert e.scheduler.num_preemptions > 0
    assert [c.token_ids for c in done["n"].outputs] == [alone(prompt, 30)] * 4
    assert done["other"].outputs[0].token_ids == alone(other, 12)
    assert_whole(e)


@pytest.mark.parametrize("max_loras", [1, 2])
def test_adapters_under_a_full_pool_with_fewer_slots_than_adapters(max_loras, tiny_model, adapters, alone):
    e = engine(tiny_model, enable_lora=True, max_loras=max_loras, max_lora_rank=16, **SMALL_POOL)
    for name, folder in adapters.items():
        e.load_adapter(name, folder)
    names = [*ADAPTER_NAMES, None] * 2
    prompt = tokens(10, 2000)  # the same prompt on every adapter: blocks are shared per adapter only
    requests = [(prompt if i % 2 else tokens(6 + i, 3000 + 100 * i), 22, 1) for i in range(len(names))]
    for i, ((prompt_i, max_tokens, _), name) in enumerate(zip(requests, names)):
        e.add_request(str(i), prompt_i, greedy(max_tokens), adapter=name)
    done = drain(e, serial_bound(requests))
    assert e.scheduler.num_preemptions > 0
    for i, ((prompt_i, max_tokens, _), name) in enumerate(zip(requests, names)):
        assert done[str(i)].outputs[0].token_ids == alone(prompt_i, max_tokens, name), (i, name)
    assert_whole(e)


# -- 2. a request that fits nowhere -------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_pool(tiny_model: Path) -> LLMEngine:
    """The pool (48 tokens) is the limit: max_model_len is the model's 1024."""
    return engine(tiny_model, **SMALL_POOL)


@pytest.fixture(scope="module")
def short_context(tiny_model: Path) -> LLMEngine:
    """max_model_len (24 tokens) is the limit: the pool holds 48."""
    return engine(tiny_model, max_model_len=24, **SMALL_POOL)


REFUSED = {
    "prompt over the pool": ("small_pool", 50, 1, r"the prompt has 50 tokens, but the KV cache holds 48 \(prompt plus"),
    "prompt at the pool": ("small_pool", 48, None, r"the prompt has 48 tokens, but the KV cache holds 48"),
    "prompt + max_tokens over the pool": (
        "small_pool", 40, 9, r"40 prompt \+ 9 output tokens exceed the KV cache \(48 tokens\): lower max_tokens to at most 8",
    ),
    "prompt over max_model_len": ("short_context", 30, 1, r"the prompt has 30 tokens, but max_model_len is 24"),
    "prompt at max_model_len": ("short_context", 24, 1, r"the prompt has 24 tokens, but max_model_len is 24"),
}


@pytest.mark.parametrize(("fixture", "prompt_len", "max_tokens", "message"), REFUSED.values(), ids=REFUSED.keys())
def test_a_request_that_fits_nowhere_is_refused_alone(fixture, prompt_len, max_tokens, message, request, alone):
    e: LLMEngine = request.getfixturevalue(fixture)
    in_flight = tokens(6, 4000)
    e.add_request("in-flight", in_flight, greedy(8))
    e.step()
    with pytest.raises(InvalidRequestError, match=message):
        e.add_request("too-big", tokens(prompt_len, 100), greedy(max_tokens))
    assert e.num_unfinished_requests() == 1
    assert drain(e, 8)["in-flight"].outputs[0].token_ids == alone(in_flight, 8)
    assert_whole(e)


FITS = {
    "prompt + max_tokens = the pool": ("small_pool", 40, 8, 8),
    "max_tokens None: what the pool leaves": ("small_pool", 40, None, 8),
    "one token short of the pool": ("small_pool", 47, 1, 1),
    "prompt + max_tokens = max_model_len": ("short_context", 20, 4, 4),
    "max_tokens None: what max_model_len leaves": ("short_context", 20, None, 4),
    "max_tokens over max_model_len is clipped": ("short_context", 23, 5, 1),
}


@pytest.mark.parametrize(("fixture", "prompt_len", "max_tokens", "made"), FITS.values(), ids=FITS.keys())
def test_a_request_exactly_at_the_limit_runs(fixture, prompt_len, max_tokens, made, request, alone):
    e: LLMEngine = request.getfixturevalue(fixture)
    prompt = tokens(prompt_len, 100)
    e.add_request("edge", prompt, greedy(max_tokens))
    output = drain(e, prompt_len + made)["edge"].outputs[0]
    assert (output.token_ids, output.finish_reason) == (alone(prompt, made), "length")
    assert_whole(e)


# -- 3. an adapter folder damaged while it is loaded -------------------------------------------------


def _delete(folder: Path) -> None:
    shutil.rmtree(folder)


def _truncate(folder: Path) -> None:
    weights = folder / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])


def _garbage_config(folder: Path) -> None:
    (folder / "adapter_config.json").write_bytes(b"\xff\xfe\x00garbage")


DAMAGE = {
    "deleted": (_delete, "adapter folder '{folder}' does not exist"),
    "truncated": (_truncate, "'{folder}/adapter_model.safetensors' is not a readable safetensors file"),
    "garbage config": (_garbage_config, "'{folder}/adapter_config.json' is not valid JSON"),
}


@pytest.mark.parametrize(("damage", "culprit"), DAMAGE.values(), ids=DAMAGE.keys())
def test_an_adapter_damaged_on_disk_serves_from_host_memory_then_fails_alone(
    damage, culprit, tiny_model, adapters, alone, tmp_path
):
    folder = shutil.copytree(adapters["qv8"], tmp_path / "x")
    e = engine(tiny_model, enable_lora=True, max_loras=1, max_cpu_loras=1, max_lora_rank=16, **SMALL_POOL)
    e.load_adapter("x", folder)
    prompt, other = tokens(8, 600), tokens(7, 800)
    e.add_request("running", prompt, greedy(10), adapter="x")
    e.step()
    damage(folder)
    e.add_request("after-damage", other, greedy(10), adapter="x")  # still in host memory: served
    done = drain(e, 2 * 20)
    assert done["running"].outputs[0].token_ids == alone(prompt, 10, "qv8")
    assert done["after-damage"].outputs[0].token_ids == alone(other, 10, "qv8")

    e.load_adapter("rs16", adapters["rs16"])  # max_cpu_loras=1: x leaves host memory
    assert {i.name: i.in_host_memory for i in e.list_adapters()} == {"rs16": True, "x": False}
    e.add_request("base", prompt, greedy(10))
    e.add_request("rs16", other, greedy(10), adapter="rs16")
    e.step()
    expected = f"request 'refused': adapter 'x' had left host memory (max_cpu_loras=1) and cannot be read again from '{folder}': "
    with pytest.raises(InvalidRequestError, match=re.escape(expected) + ".*" + re.escape(culprit.format(folder=folder))):
        e.add_request("refused", prompt, greedy(10), adapter="x")
    done = drain(e, 2 * 20)
    assert done["base"].outputs[0].token_ids == alone(prompt, 10)
    assert done["rs16"].outputs[0].token_ids == alone(other, 10, "rs16")
    assert_whole(e)

    e.unload_adapter("x")  # nothing holds it: unloading works, and the name is free again
    assert [i.name for i in e.list_adapters()] == ["rs16"]
    e.load_adapter("x", adapters["qv8"])
    e.add_request("reloaded", prompt, greedy(10), adapter="x")
    assert drain(e, 20)["reloaded"].outputs[0].token_ids == alone(prompt, 10, "qv8")
    assert_whole(e)


# -- 4. timeouts of requests waiting for blocks -------------------------------------------------------


class Clock:
    """The engine's clock, moved by the test: deadlines pass at known steps."""

    perf_counter = staticmethod(time.perf_counter)

    def __init__(self) -> None:
        self.now = 1000.0

    def time(self) -> float:
        return self.now


def test_request_timeout_aborts_requests_waiting_on_a_full_pool(tiny_model, alone, monkeypatch):
    """Three requests that cannot get their prompts' blocks while "big" grows over the pool: they
    wait, or start a prefill in the blocks left over and are preempted again, and never make a
    token; at ``request_timeout`` they are aborted saying so, and their blocks are back."""
    clock = Clock()
    monkeypatch.setattr(llm_engine, "time", clock)
    e = engine(tiny_model, request_timeout=10, **SMALL_POOL)
    big = tokens(28, 50)
    e.add_request("big", big, greedy(CAPACITY - 28), timeout=1000)  # takes the whole pool
    e.step()
    for i in range(3):
        e.add_request(f"stuck{i}", tokens(24, 1000 * (i + 1)), greedy(8))  # 6 blocks each: never beside big
    stuck = [e._completions[f"stuck{i}"].request for i in range(3)]
    finished: dict[str, RequestOutput] = {}
    for _ in range(CAPACITY):
        if not e.has_unfinished_requests():
            break
        clock.now += 1
        finished |= {o.request_id: o for o in e.step() if o.finished}
    assert list(finished)[-1] == "big"  # the stuck ones ended while big still held the pool
    assert any(r.num_preemptions for r in stuck)  # bounced by big, not merely queued
    for i in range(3):
        output = finished[f"stuck{i}"].outputs[0]
        assert (output.finish_reason, output.error, output.token_ids) == ("abort", "timed out after 10 s", [])
    assert finished["big"].outputs[0].token_ids == alone(big, CAPACITY - 28)
    assert_whole(e)


def test_a_request_failing_while_it_is_built_leaves_its_adapter_unused(tiny_model, adapters, monkeypatch):
    """Counting a request as a user of its adapter comes before its completions are built; if
    building them fails, the count is undone, or the adapter could never be unloaded."""
    e = engine(tiny_model, enable_lora=True, max_lora_rank=16, **SMALL_POOL)
    e.load_adapter("qv8", adapters["qv8"])

    def broken(*args, **kwargs):
        raise RuntimeError("detokenizer could not be built")

    with monkeypatch.context() as patch:
        patch.setattr(llm_engine, "IncrementalDetokenizer", broken)
        with pytest.raises(RuntimeError, match="could not be built"):
            e.add_request("broken", tokens(6, 500), greedy(4, n=2), adapter="qv8")
    assert not e.has_unfinished_requests()
    e.unload_adapter("qv8")  # AdapterInUseError if the failed request still counted
    assert e.list_adapters() == []

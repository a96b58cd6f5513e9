"""Serving many adapters on one base model, checked against HF PEFT.

Eight adapters made by the real ``peft`` package (ranks 8-32, different target sets, rsLoRA,
rank and alpha patterns) run in one mixed batch with base-only rows: each request's greedy tokens
must equal ``generate`` of the HF model with that single adapter, in fp32, also with prefix hits,
chunked prefill, preemption, and fewer slots than adapters. Then the prefix cache's adapter keys
(vLLM#47724: a request must never run on another adapter's KV), bad input, and unloading."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kernel_core.config import EngineConfig
from kernel_core.engine.llm_engine import LLMEngine
from kernel_core.errors import AdapterInUseError, AdapterLoadError, InvalidRequestError, UnknownAdapterError
from kernel_core.llm import LLM
from kernel_core.sampling_params import SamplingParams

from ..lora.peft_adapters import ADAPTERS, adapters_for, make_adapter
from .adapter_serving import GREEDY, MAX_TOKENS, PROMPTS, Expected, make_llm, workload
from .adapter_serving import assert_each_changes_the_output, assert_equal_to_peft, assert_idle

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def adapters(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return adapters_for(tiny_model, tmp_path_factory.mktemp("peft-adapters"))


@pytest.fixture(scope="module")
def expected(tiny_model: Path, adapters: dict[str, Path]) -> Expected:
    return Expected(tiny_model, adapters)


def record_steps(engine: LLMEngine) -> list[set[int]]:
    """The adapter slots each step's forward used."""
    steps: list[set[int]] = []
    execute = engine.executor.worker.runner.execute

    def recording(inputs):
        steps.append(set(inputs.slots.slot_rows) if inputs.slots is not None else set())
        return execute(inputs)

    engine.executor.worker.runner.execute = recording
    return steps


def test_adapters_change_the_output(adapters, expected):
    """The oracle is not vacuous: each adapter moves its greedy tokens away from the base model's."""
    assert_each_changes_the_output(expected, ADAPTERS)


CONFIGS = {
    "mixed": dict(max_loras=8),
    "chunked": dict(max_loras=8, max_num_batched_tokens=16, block_size=16),
    "preempted": dict(max_loras=8, num_kv_blocks=6, block_size=16),
    "few-slots": dict(max_loras=2, max_cpu_loras=3),
    "everything": dict(max_loras=3, max_cpu_loras=4, max_num_batched_tokens=16, block_size=16, num_kv_blocks=8),
}


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_mixed_batch_equals_hf_peft_per_adapter(config, tiny_model, adapters, expected):
    llm = make_llm(tiny_model, adapters, **config)
    steps = record_steps(llm.engine)
    prompts, names = workload([None, *ADAPTERS])
    assert_equal_to_peft(llm.generate(prompts, GREEDY, adapter=names), prompts, names, expected)
    assert max(len(slots) for slots in steps) <= config["max_loras"]
    assert any(len(slots) > 1 for slots in steps)  # adapters really shared steps
    assert_idle(llm.engine)
    if config.get("num_kv_blocks", 256) < 10:
        assert llm.engine.scheduler.num_preemptions > 0
    if config.get("max_num_batched_tokens") == 16:
        assert all(len(slots) <= config["max_loras"] for slots in steps) and len(steps) > MAX_TOKENS + 4

    hits = llm.engine.components.cache.stats().prefix_hits
    again = llm.generate(prompts, GREEDY, adapter=names)  # warm: the prompts' blocks are cached
    assert_equal_to_peft(again, prompts, names, expected)
    assert llm.engine.components.cache.stats().prefix_hits > hits
    assert_idle(llm.engine)


def test_single_adapter_for_every_prompt(tiny_model, adapters, expected):
    llm = make_llm(tiny_model, {"rs16": adapters["rs16"]}, max_loras=1)
    outputs = llm.generate(PROMPTS, GREEDY, adapter="rs16")
    assert_equal_to_peft(outputs, PROMPTS, ["rs16"] * 3, expected)
    assert_idle(llm.engine)


# -- the prefix cache keys blocks by adapter load ------------------------------------------------


def _cached_tokens(engine: LLMEngine, prompt: str, adapter: str | None) -> int:
    """Tokens of ``prompt`` a new request for ``adapter`` would find cached."""
    cache = engine.components.cache
    key = engine.adapters.key_of(adapter) if adapter else None
    ids = engine.tokenizer(prompt)["input_ids"]
    hit = cache.match_prefix("probe", ids[:-1], key)
    cache.free("probe")
    return hit


def test_two_adapters_never_share_kv_blocks_and_one_adapter_does(tiny_model, adapters, expected):
    llm = make_llm(tiny_model, adapters)
    engine, long = llm.engine, PROMPTS[2]
    assert llm.generate([long], GREEDY, adapter="qv8")[0].outputs[0].token_ids == expected("qv8", long)
    assert _cached_tokens(engine, long, "qv8") >= 32
    assert _cached_tokens(engine, long, "all16") == 0
    assert _cached_tokens(engine, long, None) == 0
    stats = engine.components.cache.stats()
    outputs = llm.generate([long, long, long], GREEDY, adapter=["all16", None, "qv8"])
    assert [o.outputs[0].token_ids for o in outputs] == [expected(n, long) for n in ("all16", None, "qv8")]
    after = engine.components.cache.stats()
    assert after.prefix_hits - stats.prefix_hits == _cached_tokens(engine, long, "qv8")  # only qv8 hit
    assert_idle(engine)


def test_an_adapter_reloaded_under_its_name_never_reuses_the_old_loads_blocks(tiny_model, adapters, expected):
    """vLLM#47724's class of bug: same name, new weights, the old KV must not be served."""
    llm = LLM(str(tiny_model), enable_lora=True, max_lora_rank=32, num_kv_blocks=256, max_loras=2)
    long = PROMPTS[2]
    llm.load_adapter("x", adapters["qv8"])
    assert llm.generate([long], GREEDY, adapter="x")[0].outputs[0].token_ids == expected("qv8", long)
    llm.unload_adapter("x")
    llm.load_adapter("x", adapters["all16"])
    assert _cached_tokens(llm.engine, long, "x") == 0
    assert llm.generate([long], GREEDY, adapter="x")[0].outputs[0].token_ids == expected("all16", long)
    assert [(i.name, i.path) for i in llm.list_adapters()] == [("x", str(adapters["all16"]))]
    assert_idle(llm.engine)


def test_a_folder_rewritten_on_disk_is_not_served_under_the_old_load(tiny_model, adapters, expected, tmp_path):
    """Evicted from host memory, then its folder changed: the request is refused, not run with
    weights whose KV the cache may hold under the old key; a reload serves the new files."""
    llm = LLM(str(tiny_model), enable_lora=True, max_lora_rank=32, num_kv_blocks=256, max_loras=1, max_cpu_loras=1)
    folder = make_adapter(tiny_model, tmp_path / "x", 1, **ADAPTERS["qv8"])
    llm.load_adapter("x", folder)
    llm.load_adapter("other", adapters["rs16"])  # x leaves host memory
    make_adapter(tiny_model, folder, 2, **ADAPTERS["all16"])
    [refused] = llm.generate([PROMPTS[0]], GREEDY, adapter="x")
    assert refused.outputs[0].finish_reason == "error"
    assert "'x'" in refused.outputs[0].error and "changed on disk since it was loaded" in refused.outputs[0].error
    llm.unload_adapter("x")
    llm.load_adapter("x", folder)
    expect = expected(None, PROMPTS[0], folder)
    assert llm.generate([PROMPTS[0]], GREEDY, adapter="x")[0].outputs[0].token_ids == expect
    assert_idle(llm.engine)


# -- bad input and unloading ----------------------------------------------------------------------


def test_an_unknown_adapter_fails_its_request_only(tiny_model, adapters, expected):
    llm = make_llm(tiny_model, {"qv8": adapters["qv8"]})
    outputs = llm.generate(PROMPTS, GREEDY, adapter=["qv8", "nope", None])
    assert outputs[1].outputs[0].finish_reason == "error"
    assert "unknown adapter 'nope' (loaded: qv8)" in outputs[1].outputs[0].error
    assert outputs[0].outputs[0].token_ids == expected("qv8", PROMPTS[0])
    assert outputs[2].outputs[0].token_ids == expected(None, PROMPTS[2])
    with pytest.raises(UnknownAdapterError, match="request 'r': unknown adapter 'nope'") as refused:
        llm.engine.add_request("r", PROMPTS[0], GREEDY, adapter="nope")
    assert isinstance(refused.value, InvalidRequestError)
    with pytest.raises(ValueError, match="adapter: 2 values for 3 prompts"):
        llm.generate(PROMPTS, GREEDY, adapter=["qv8", None])
    assert_idle(llm.engine)


def test_adapters_need_enable_lora(tiny_model, adapters):
    engine = LLMEngine(EngineConfig(model=str(tiny_model), num_kv_blocks=16))
    with pytest.raises(InvalidRequestError, match="adapter 'qv8' given, but adapter serving is not enabled"):
        engine.add_request("r", PROMPTS[0], GREEDY, adapter="qv8")
    with pytest.raises(InvalidRequestError, match="enable_lora=True"):
        engine.load_adapter("qv8", adapters["qv8"])
    assert not engine.has_unfinished_requests()


def test_a_bad_folder_is_refused_while_the_engine_serves(tiny_model, adapters, expected, tmp_path):
    llm = make_llm(tiny_model, {"qv8": adapters["qv8"]})
    engine = llm.engine
    engine.add_request("a", PROMPTS[1], GREEDY, adapter="qv8")
    engine.add_request("b", PROMPTS[0], GREEDY)
    engine.step()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    (tmp_path / "bad" / "adapter_model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(AdapterLoadError, match="not a readable safetensors file"):
        engine.load_adapter("bad", tmp_path / "bad")
    with pytest.raises(AdapterLoadError, match="rank 32 of .* exceeds max_lora_rank 16"):
        LLM(str(tiny_model), enable_lora=True, max_lora_rank=16, num_kv_blocks=16).load_adapter("r", adapters["attn32"])
    done = _run(engine)
    assert done["a"].outputs[0].token_ids == expected("qv8", PROMPTS[1])
    assert done["b"].outputs[0].token_ids == expected(None, PROMPTS[0])
    assert [i.name for i in engine.list_adapters()] == ["qv8"]
    assert_idle(engine)


def test_unload_is_refused_while_queued_or_running_requests_use_it(tiny_model, adapters, expected):
    llm = make_llm(tiny_model, {"qv8": adapters["qv8"], "rs16": adapters["rs16"]}, max_num_seqs=1)
    engine = llm.engine
    engine.add_request("running", PROMPTS[0], GREEDY, adapter="qv8")
    engine.add_request("queued", PROMPTS[1], GREEDY, adapter="rs16")
    engine.step()
    assert [r.request_id for r in engine.scheduler.waiting] == ["queued"]
    for name, count in (("qv8", 1), ("rs16", 1)):
        with pytest.raises(AdapterInUseError, match=rf"adapter '{name}' is used by {count} queued or running"):
            engine.unload_adapter(name)
    done = _run(engine)
    assert done["running"].outputs[0].token_ids == expected("qv8", PROMPTS[0])
    assert done["queued"].outputs[0].token_ids == expected("rs16", PROMPTS[1])
    assert_idle(engine)
    engine.unload_adapter("qv8")
    engine.unload_adapter("rs16")
    assert engine.list_adapters() == []


def test_aborted_and_n_requests_return_their_slots_and_users(tiny_model, adapters):
    llm = make_llm(tiny_model, {"qv8": adapters["qv8"], "rs16": adapters["rs16"]}, max_loras=1)
    engine = llm.engine
    engine.add_request("run", PROMPTS[2], GREEDY, adapter="qv8")
    engine.add_request("wait", PROMPTS[0], GREEDY, adapter="rs16")  # no free slot: waits
    engine.add_request("n", PROMPTS[0], SamplingParams(temperature=0.8, seed=1, n=3, max_tokens=4), adapter="qv8")
    engine.step()
    # n's adapter already has the slot: n joins it, while "wait" waits for a free slot
    assert [r.request_id for r in engine.scheduler.waiting] == ["wait"]
    assert {i.name: i.num_requests for i in engine.list_adapters()} == {"qv8": 4, "rs16": 1}
    assert engine.adapters.slots.holders == [4]
    assert engine.abort_request("run") and engine.abort_request("wait")
    done = _run(engine)
    assert {c.finish_reason for c in done["n"].outputs} == {"length"}
    assert_idle(engine)


def test_freed_slots_go_in_arrival_order(tiny_model, adapters):
    """With every slot held, the first request needing a slot gets the next one freed, and a later
    one needing a slot does not overtake it."""
    llm = make_llm(tiny_model, {name: adapters[name] for name in ("qv8", "rs16", "pattern8")}, max_loras=1)
    engine = llm.engine
    engine.add_request("run", PROMPTS[2], SamplingParams(temperature=0, max_tokens=2, ignore_eos=True), adapter="qv8")
    engine.add_request("first", PROMPTS[0], GREEDY, adapter="rs16")
    engine.add_request("second", PROMPTS[1], GREEDY, adapter="pattern8")
    order = []
    while engine.has_unfinished_requests():
        engine.step()
        order += [r.adapter for r in engine.scheduler.running if r.adapter not in order]
    assert order == ["qv8", "rs16", "pattern8"]
    assert_idle(engine)


def _run(engine: LLMEngine) -> dict[str, RequestOutput]:
    finished: dict[str, RequestOutput] = {}
    while engine.has_unfinished_requests():
        for output in engine.step():
            if output.finished:
                finished[output.request_id] = output
    return finished


# -- the real model ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def embedded_adapters(embedded_model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, Path]]]:
    base = embedded_model_cache / "models" / "smollm2-135m-instruct"
    yield base, adapters_for(base, tmp_path_factory.mktemp("smollm2-adapters"))


@pytest.mark.slow
@pytest.mark.parametrize("config", [CONFIGS["mixed"], CONFIGS["everything"] | {"num_kv_blocks": 10}], ids=["mixed", "everything"])
def test_embedded_model_mixed_batch_equals_hf_peft(config, embedded_model, embedded_adapters):
    base, adapters = embedded_adapters
    expected = Expected(base, adapters)
    llm = make_llm(embedded_model, adapters, **config)
    prompts, names = workload([None, *ADAPTERS])
    assert_equal_to_peft(llm.generate(prompts, GREEDY, adapter=names), prompts, names, expected)
    assert_equal_to_peft(llm.generate(prompts, GREEDY, adapter=names), prompts, names, expected)  # warm
    assert_idle(llm.engine)

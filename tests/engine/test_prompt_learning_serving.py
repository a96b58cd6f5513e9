"""Serving prompt tuning, P-tuning and prefix tuning adapters, mixed in one batch with base, LoRA
and IA3 rows (every served kind), checked against HF PEFT.

Adapters made by the real ``peft`` (prompt tuning, P-tuning with its MLP and LSTM encoders,
prefix tuning with and without its projection) on a tiny random Llama with SmolLM2's tokenizer:
each request's greedy tokens must equal HF PEFT's with that adapter alone, also with chunked
prefill, prefix hits and preemption forced. PEFT's greedy tokens come from a loop of its
``PeftModelForCausalLM`` forwards on the whole sequence (``Oracle.greedy_by_forward``: peft
0.21.2's ``generate`` ignores a prefix and repeats virtual tokens on transformers 5.x).
Then what a request reports (no virtual tokens), pinned virtual-token blocks, bad input, and the
same oracle on the real embedded model (slow)."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import pytest
import torch

from kernel_core.errors import AdapterLoadError, ContextLengthError
from kernel_core.llm import LLM
from kernel_core.sampling_params import SamplingParams
from kernel_core.engine.llm_engine import _sample_request
from kernel_core.engine.request import VIRTUAL_TOKEN_ID
from kernel_core_sdk.hf_oracle import make_ia3_adapter, make_lora_adapter, save_servable_model

from ..conftest import TINY_LLAMA
from kernel_core_sdk.hf_oracle import make_prompt_adapter
from .adapter_serving import GREEDY, MAX_TOKENS, PROMPTS, Expected, make_llm, workload
from .adapter_serving import assert_each_changes_the_output, assert_equal_to_peft, assert_idle

#: peft config class name -> fields, per adapter; every kind served, two shapes of each encoder.
PROMPT_ADAPTERS: dict[str, tuple[str, dict[str, Any]]] = {
    "prompt5": ("PromptTuningConfig", dict(num_virtual_tokens=5)),
    "ptune-mlp4": ("PromptEncoderConfig", dict(num_virtual_tokens=4, encoder_hidden_size=32)),
    "ptune-lstm3": ("PromptEncoderConfig", dict(num_virtual_tokens=3, encoder_reparameterization_type="LSTM")),
    "prefix6": ("PrefixTuningConfig", dict(num_virtual_tokens=6)),
    "prefix-mlp20": ("PrefixTuningConfig", dict(num_virtual_tokens=20, prefix_projection=True, encoder_hidden_size=24)),
}
NAMES = [*PROMPT_ADAPTERS, "lora", "ia3"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def base(embedded_model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer random Llama (two key/value heads) whose weights are large enough that its
    greedy tokens depend on what it reads (at the default init it repeats one token)."""
    from transformers import LlamaConfig

    return save_servable_model(partial(LlamaConfig, **TINY_LLAMA, initializer_range=0.3),
                               embedded_model_cache / "models" / "smollm2-135m-instruct",
                               tmp_path_factory.mktemp("prompt-serving-llama"))


@pytest.fixture(scope="module")
def adapters(base: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("prompt-adapters")
    made = {
        name: make_prompt_adapter(base, root / name, seed, kind, **fields)
        for seed, (name, (kind, fields)) in enumerate(PROMPT_ADAPTERS.items(), 1)
    }
    made["lora"] = make_lora_adapter(base, root / "lora", 9, r=8, lora_alpha=16, target_modules="all-linear")
    made["ia3"] = make_ia3_adapter(base, root / "ia3", 10)
    return made


@pytest.fixture(scope="module")
def expected(base: Path, adapters: dict[str, Path]) -> Expected:
    return Expected(base, adapters, by_forward=True)


def test_each_adapter_changes_the_output(expected):
    """The oracle is not vacuous."""
    assert_each_changes_the_output(expected, NAMES)


CONFIGS = {
    "mixed": dict(max_loras=8),
    "chunked": dict(max_loras=8, max_num_batched_tokens=16, block_size=16),
    "preempted": dict(max_loras=8, num_kv_blocks=12, block_size=8),
    "few-slots": dict(max_loras=2, max_cpu_loras=3, max_num_batched_tokens=24, block_size=8),
    "no-prefix-caching": dict(max_loras=8, enable_prefix_caching=False, block_size=8),  # nothing pinned
}


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_mixed_batch_equals_hf_peft_per_adapter(config, base, adapters, expected):
    llm = make_llm(base, adapters, **config)
    prompts, names = workload([None, *NAMES])
    assert_equal_to_peft(llm.generate(prompts, GREEDY, adapter=names), prompts, names, expected)
    if config.get("num_kv_blocks", 256) < 16:
        assert llm.engine.scheduler.num_preemptions > 0
    assert_idle(llm.engine)
    hits = llm.engine.components.cache.stats().prefix_hits
    again = llm.generate(prompts, GREEDY, adapter=names)  # warm: virtual tokens and prompts cached
    assert_equal_to_peft(again, prompts, names, expected)
    assert llm.engine.components.cache.stats().prefix_hits > hits or not config.get("enable_prefix_caching", True)
    assert_idle(llm.engine)


def test_virtual_tokens_are_never_reported(base, adapters, expected):
    """prompt_token_ids, usage counts, prompt logprobs and penalties see the prompt alone."""
    llm = make_llm(base, {"prefix-mlp20": adapters["prefix-mlp20"]}, max_loras=1)
    prompt = PROMPTS[0]
    ids = expected.tokenizer(prompt)["input_ids"]
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, prompt_logprobs=0)
    served, plain = (llm.generate([prompt], params, adapter=a)[0] for a in ("prefix-mlp20", None))
    assert list(served.prompt_token_ids) == ids == list(plain.prompt_token_ids)
    assert len(served.prompt_logprobs) == len(ids) and served.prompt_logprobs[0] is None
    logits = expected.model("prefix-mlp20")(input_ids=torch.tensor([ids])).logits[0, :-1].log_softmax(-1)
    want = [float(logits[i, t]) for i, t in enumerate(ids[1:])]
    got = [served.prompt_logprobs[i + 1][t].logprob for i, t in enumerate(ids[1:])]
    assert got == pytest.approx(want, abs=1e-4)
    # penalties count the prompt's tokens only, not the placeholders at positions 0..V-1
    llm.engine.add_request("r", prompt, SamplingParams(temperature=0, max_tokens=2, repetition_penalty=1.5), adapter="prefix-mlp20")
    completion = llm.engine._completions["r"]
    assert completion.request.prompt_token_ids == [VIRTUAL_TOKEN_ID] * 20 + ids  # the scheduler's view
    assert _sample_request(completion).prompt_token_ids == ids
    while llm.engine.has_unfinished_requests():
        llm.engine.step()
    assert_idle(llm.engine)


def test_virtual_tokens_count_toward_max_model_len(base, adapters, expected):
    """A prompt that fits alone but not after its adapter's 20 virtual tokens fails alone, with
    both numbers; the same prompt on the base model and others in the batch run."""
    prompt = expected.tokenizer(PROMPTS[2])["input_ids"]  # 30-odd tokens
    llm = make_llm(base, {"prefix-mlp20": adapters["prefix-mlp20"]}, max_model_len=len(prompt) + 10)
    with pytest.raises(ContextLengthError, match=rf"the prompt has {len(prompt)} tokens after the adapter's 20 virtual tokens, but max_model_len is {len(prompt) + 10}"):
        llm.engine.add_request("too-long", prompt, GREEDY, adapter="prefix-mlp20")
    fits = llm.generate([PROMPTS[0], PROMPTS[2]], SamplingParams(temperature=0, max_tokens=4), adapter=["prefix-mlp20", None])
    assert [list(o.outputs[0].token_ids) for o in fits] == [expected("prefix-mlp20", PROMPTS[0])[:4], expected(None, PROMPTS[2])[:4]]
    # max_tokens is clipped to what the virtual tokens and the prompt leave
    short = llm.generate([PROMPTS[0]], SamplingParams(temperature=0, max_tokens=1000), adapter="prefix-mlp20")[0]
    assert len(short.outputs[0].token_ids) <= len(prompt) + 10 - 20 - len(short.prompt_token_ids)
    assert_idle(llm.engine)


def test_an_adapter_with_more_virtual_tokens_than_the_slots_hold_is_refused(base, adapters):
    llm = LLM(str(base), enable_lora=True, num_kv_blocks=64, max_virtual_tokens=16)
    with pytest.raises(AdapterLoadError, match="20 virtual tokens exceed max_virtual_tokens 16"):
        llm.load_adapter("p", adapters["prefix-mlp20"])
    llm.load_adapter("q", adapters["prompt5"])  # fits


@pytest.mark.parametrize("name", ["prompt5", "prefix6"])
def test_a_table_of_another_model_is_refused_naming_the_tensor(name, base, adapters, tmp_path):
    import shutil

    folder = tmp_path / name
    shutil.copytree(adapters[name], folder)
    from safetensors.torch import load_file, save_file

    table = load_file(folder / "adapter_model.safetensors")["prompt_embeddings"]
    save_file({"prompt_embeddings": table[:, :-4].contiguous()}, folder / "adapter_model.safetensors")
    llm = LLM(str(base), enable_lora=True, num_kv_blocks=64)
    with pytest.raises(AdapterLoadError, match=r"prompt_embeddings has shape \(\d+, \d+\), but num_virtual_tokens="):
        llm.load_adapter("x", folder)


# -- the virtual tokens' KV blocks are pinned while the adapter is loaded -------------------------


def test_virtual_token_blocks_stay_pinned_until_unload(base, adapters, expected):
    """prefix-mlp20's 20 virtual tokens fill two 8-token blocks: computed once at load, then
    held through a pool churned by base requests, found by every later request, never by
    another adapter's; unloading gives them back."""
    llm = make_llm(base, {"prefix-mlp20": adapters["prefix-mlp20"], "prefix6": adapters["prefix6"]},
                   num_kv_blocks=12, block_size=8)
    engine, cache = llm.engine, llm.engine.components.cache
    key = engine.adapters.key_of("prefix-mlp20")
    assert {i.name: (i.kind, i.num_virtual_tokens) for i in llm.list_adapters()} == {
        "prefix-mlp20": ("PREFIX_TUNING", 20), "prefix6": ("PREFIX_TUNING", 6)}
    assert engine.pinned_blocks == 2  # written at load (prefix6's 6 tokens fill no block)
    assert engine.scheduler.capacity_tokens == (12 - 2) * 8
    first = llm.generate([PROMPTS[0]], GREEDY, adapter="prefix-mlp20")[0]
    assert list(first.outputs[0].token_ids) == expected("prefix-mlp20", PROMPTS[0])
    assert engine.pinned_blocks == 2
    llm.generate(PROMPTS * 2, GREEDY)  # base requests that need every unpinned block
    assert cache.match_prefix("probe", [VIRTUAL_TOKEN_ID] * 16, key) == 16
    cache.free("probe")
    assert cache.match_prefix("probe", [VIRTUAL_TOKEN_ID] * 16, engine.adapters.key_of("prefix6")) == 0
    cache.free("probe")
    hits = cache.stats().prefix_hits
    again = llm.generate([PROMPTS[2]], GREEDY, adapter="prefix-mlp20")[0]
    assert list(again.outputs[0].token_ids) == expected("prefix-mlp20", PROMPTS[2])
    assert cache.stats().prefix_hits - hits >= 16
    assert_idle(llm.engine)
    llm.unload_adapter("prefix-mlp20")
    assert engine.pinned_blocks == 0 and engine.scheduler.capacity_tokens == 12 * 8
    assert cache.stats().num_free_blocks == cache.stats().num_blocks


def test_virtual_token_blocks_are_written_at_load(base, adapters, expected):
    """Right after load, before any request, each adapter's full virtual blocks (4-token
    blocks: prefix tuning 5, prompt tuning 1, P-tuning 1) are cached under its key and
    pinned; its first request finds them as a prefix hit and still equals HF PEFT."""
    full = {"prefix-mlp20": 20, "prompt5": 4, "ptune-mlp4": 4}
    llm = make_llm(base, {name: adapters[name] for name in full}, num_kv_blocks=24, block_size=4)
    engine, cache = llm.engine, llm.engine.components.cache
    assert engine.pinned_blocks == 7 and cache.stats().num_free_blocks == 24 - 7
    assert_idle(llm.engine)
    for name, tokens in full.items():
        assert cache.match_prefix("probe", [VIRTUAL_TOKEN_ID] * tokens, engine.adapters.key_of(name)) == tokens
        cache.free("probe")
        hits = cache.stats().prefix_hits
        first = llm.generate([PROMPTS[1]], GREEDY, adapter=name)[0]
        assert list(first.outputs[0].token_ids) == expected(name, PROMPTS[1])
        assert cache.stats().prefix_hits - hits >= tokens, name
    assert_idle(llm.engine)


def test_a_load_refused_for_capacity_leaves_nothing_behind(base, adapters):
    llm = make_llm(base, {"prefix-mlp20": adapters["prefix-mlp20"]}, num_kv_blocks=5, block_size=8)
    engine, cache = llm.engine, llm.engine.components.cache
    before = (engine.pinned_blocks, engine.scheduler.reserved_blocks, cache.stats().num_free_blocks)
    assert before == (2, 2, 3)
    with pytest.raises(AdapterLoadError, match="would pin 2 KV blocks"):
        llm.load_adapter("again", adapters["prefix-mlp20"])
    assert [i.name for i in llm.list_adapters()] == ["prefix-mlp20"]
    assert (engine.pinned_blocks, engine.scheduler.reserved_blocks, cache.stats().num_free_blocks) == before
    assert engine.adapters.slots.holders == [0] * len(engine.adapters.slots.holders)


def test_an_async_load_while_a_request_streams_writes_its_blocks_between_steps(base, adapters, expected):
    """The async engine's load runs the virtual-token prefill on its worker between two steps:
    the request streaming meanwhile finishes whole, and the adapter's first request finds the
    pinned blocks and equals HF PEFT."""
    import asyncio

    from kernel_core.config import EngineConfig
    from kernel_core.engine.async_engine import AsyncLLMEngine
    from kernel_core.engine.llm_engine import LLMEngine

    engine = AsyncLLMEngine(LLMEngine(EngineConfig(model=str(base), enable_lora=True, num_kv_blocks=64, block_size=8)))
    cache = engine.engine.components.cache
    long = SamplingParams(temperature=0, max_tokens=64, ignore_eos=True)

    async def last(stream) -> list[int]:
        output = None
        async for output in stream:
            pass
        return list(output.outputs[0].token_ids)

    async def main() -> tuple[list[int], list[int], int, int]:
        async with engine:
            stream = engine.generate(PROMPTS[2], long, request_id="streaming")
            await stream.__anext__()
            await engine.load_adapter("p", adapters["prefix-mlp20"])
            pinned, hits = engine.engine.pinned_blocks, cache.stats().prefix_hits
            first = await last(engine.generate(PROMPTS[0], GREEDY, adapter="p"))
            return await last(stream), first, pinned, cache.stats().prefix_hits - hits

    streamed, first, pinned, hits = asyncio.run(asyncio.wait_for(main(), 120))
    assert len(streamed) == 64 and pinned == 2 and hits >= 16
    want = expected(None, PROMPTS[2])
    assert streamed[: len(want)] == want
    assert first == expected("prefix-mlp20", PROMPTS[0])


def test_pins_that_do_not_fit_the_pool_are_refused_with_the_numbers(base, adapters):
    llm = LLM(str(base), enable_lora=True, num_kv_blocks=3, block_size=8)
    with pytest.raises(AdapterLoadError, match=(
        r"its 20 virtual tokens would pin 2 KV blocks of 8 tokens; with the 0 blocks other adapters pin, the pool "
        r"of 3 blocks would leave 8 tokens, fewer than the virtual tokens and one output token \(21\)")):
        llm.load_adapter("p", adapters["prefix-mlp20"])
    assert llm.list_adapters() == [] and llm.engine.scheduler.capacity_tokens == 24
    llm.load_adapter("q", adapters["prompt5"])  # fills no block: nothing to pin
    assert llm.engine.scheduler.capacity_tokens == 24


# -- the real model ---------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("config", [CONFIGS["mixed"], {"max_loras": 2, "max_num_batched_tokens": 16, "block_size": 8,
                                                       "num_kv_blocks": 12}], ids=["mixed", "everything"])
def test_embedded_model_mixed_batch_equals_hf_peft(config, embedded_model, embedded_model_cache, tmp_path_factory):
    """SmolLM2-135M: one adapter of each prompt-learning kind, a LoRA and an IA3, with base rows; then
    with few slots, chunked prefill, preemption and (the second run) prefix hits."""
    base = embedded_model_cache / "models" / "smollm2-135m-instruct"
    root = tmp_path_factory.mktemp("smollm2-prompt-adapters")
    kinds = {"prompt5": PROMPT_ADAPTERS["prompt5"], "ptune-mlp4": PROMPT_ADAPTERS["ptune-mlp4"],
             "prefix-mlp20": PROMPT_ADAPTERS["prefix-mlp20"]}
    adapters = {name: make_prompt_adapter(base, root / name, seed, kind, **fields)
                for seed, (name, (kind, fields)) in enumerate(kinds.items(), 1)}
    adapters["lora"] = make_lora_adapter(base, root / "lora", 9, r=8, lora_alpha=16, target_modules="all-linear")
    adapters["ia3"] = make_ia3_adapter(base, root / "ia3", 10)
    expected = Expected(base, adapters, by_forward=True)
    llm = make_llm(embedded_model, adapters, **config)
    prompts = [PROMPTS[i % 3] for i in range(2 * (len(adapters) + 1))]
    names = [name for name in (None, *adapters) for _ in range(2)]
    assert_equal_to_peft(llm.generate(prompts, GREEDY, adapter=names), prompts, names, expected)
    assert_equal_to_peft(llm.generate(prompts, GREEDY, adapter=names), prompts, names, expected)  # warm
    if "num_kv_blocks" in config:
        assert llm.engine.scheduler.num_preemptions > 0
    assert_idle(llm.engine)


def test_a_sliding_window_shorter_than_virtual_tokens_and_prompt(embedded_model_cache, tmp_path):
    """A Mistral attending within 8 tokens: the virtual tokens leave the window as peft's prefix
    does (the short prompt still reads them; the long ones no longer do)."""
    from transformers import MistralConfig

    base = save_servable_model(partial(MistralConfig, **TINY_LLAMA, sliding_window=8, initializer_range=0.3),
                               embedded_model_cache / "models" / "smollm2-135m-instruct", tmp_path / "mistral")
    adapters = {"prefix6": make_prompt_adapter(base, tmp_path / "prefix6", 1, "PrefixTuningConfig", num_virtual_tokens=6),
                "prompt6": make_prompt_adapter(base, tmp_path / "prompt6", 2, "PromptTuningConfig", num_virtual_tokens=6)}
    expected = Expected(base, adapters, by_forward=True)
    llm = make_llm(base, adapters)
    prompts, names = [p for p in PROMPTS for _ in range(3)], [None, *adapters] * len(PROMPTS)
    assert_equal_to_peft(llm.generate(prompts, GREEDY, adapter=names), prompts, names, expected)
    assert all(expected(name, PROMPTS[0]) != expected(None, PROMPTS[0]) for name in adapters)
    assert_idle(llm.engine)

"""The multiprocess executor: tensor-parallel engines on the CPU with gloo give the size-1 engine's
greedy tokens and logprobs (fp32 reduction-order noise) and Hugging Face's greedy tokens, on dense
and mixture-of-experts tiny models; bad sizes, ranks that fail to start, die or hang fail clearly
and leave no process or process group behind."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch.distributed as dist
from transformers import AutoModelForCausalLM, LlamaConfig, MixtralConfig, Qwen2Config, Qwen2MoeConfig

from kernel_core.config import EngineConfig
from kernel_core.engine.llm_engine import LLMEngine
from kernel_core.errors import AdapterLoadError, KernelCoreError, UnsupportedModelError
from kernel_core.plugins import PluginManager
from kernel_core.sampling_params import SamplingParams
from kernel_core_executor_mp import plugin
from kernel_core_executor_mp.executor import MultiprocExecutor
from kernel_core_sdk.conformance import ExecutorConformance
from kernel_core_sdk.conformance.executor import adapter_batch_outputs
from kernel_core_sdk.conformance.serving import PROMPTS, save_tiny_model
from kernel_core_sdk.hf_oracle import hf_greedy, save_servable_model

MAX_TOKENS = 6
TOP = 5
#: fp32 logprobs of the same model computed with partial sums in another order.
LOGPROB_TOLERANCE = 1e-4
SMALL = dict(num_kv_blocks=64, block_size=16, max_num_batched_tokens=16)

#: name -> (config of the tiny model, tensor_parallel_size): heads split and replicated, biases,
#: experts with and without a shared expert, both expert checkpoint layouts' loaders.
MODELS: dict[str, tuple[Callable[..., Any], int]] = {
    "llama-9-heads-3-kv-size-3": (lambda **kw: LlamaConfig(
        hidden_size=72, intermediate_size=96, num_hidden_layers=2, num_attention_heads=9, num_key_value_heads=3,
        max_position_embeddings=256, tie_word_embeddings=True, **kw), 3),
    "llama-3-heads-1-kv-replicated-size-3": (lambda **kw: LlamaConfig(
        hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=3, num_key_value_heads=1,
        max_position_embeddings=256, tie_word_embeddings=False, **kw), 3),
    "qwen2-biased-size-2": (lambda **kw: Qwen2Config(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=256, tie_word_embeddings=False, **kw), 2),
    "qwen2moe-shared-expert-size-2": (lambda **kw: Qwen2MoeConfig(
        hidden_size=64, intermediate_size=128, moe_intermediate_size=32, shared_expert_intermediate_size=64,
        num_experts=4, num_experts_per_tok=2, norm_topk_prob=True, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False, **kw), 2),
    "mixtral-size-2": (lambda **kw: MixtralConfig(
        hidden_size=64, intermediate_size=64, num_local_experts=4, num_experts_per_tok=2, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False,
        **kw), 2),
}


@pytest.fixture(scope="module")
def tokenizer_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tp") / "llama")


@pytest.fixture(autouse=True)
def nothing_left_running() -> Iterator[None]:
    """Every test ends with no worker process and no process group in this process."""
    yield
    assert multiprocessing.active_children() == []
    assert not dist.is_initialized()


def run(config: EngineConfig, manager: PluginManager | None = None) -> dict[str, Any]:
    """Greedy tokens and top logprobs of every prompt; the engine shut down after."""
    engine = LLMEngine(config, manager)
    try:
        for index, prompt in enumerate(PROMPTS):
            engine.add_request(str(index), list(prompt), SamplingParams(temperature=0, max_tokens=MAX_TOKENS, logprobs=TOP))
        done = {}
        while engine.has_unfinished_requests():
            done.update({o.request_id: o.outputs[0] for o in engine.step() if o.finished})
    finally:
        engine.shutdown()
    assert all(c.finish_reason == "length" for c in done.values()), [c.error for c in done.values()]
    return {key: (list(c.token_ids), c.logprobs) for key, c in sorted(done.items())}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_sharded_engine_equals_size_one_and_transformers(name: str, tokenizer_folder: Path, tmp_path: Path) -> None:
    config, size = MODELS[name]
    folder = save_servable_model(config, tokenizer_folder, tmp_path / name)
    single = run(EngineConfig(model=str(folder), **SMALL))
    sharded = run(EngineConfig(model=str(folder), tensor_parallel_size=size, **SMALL))
    hf = AutoModelForCausalLM.from_pretrained(folder).eval()
    for index, prompt in enumerate(PROMPTS):
        (tokens, logprobs), (tp_tokens, tp_logprobs) = single[str(index)], sharded[str(index)]
        assert tp_tokens == tokens == hf_greedy(hf, list(prompt), MAX_TOKENS), f"prompt {index}"
        assert_logprobs_close(logprobs, tp_logprobs, f"prompt {index}")


def assert_logprobs_close(expected: list[dict[int, Any]], found: list[dict[int, Any]], what: object) -> None:
    """The same top tokens at every step, their logprobs within fp32 reduction-order noise."""
    for step, (ours, theirs) in enumerate(zip(expected, found, strict=True)):
        assert ours.keys() == theirs.keys(), f"{what} step {step}: other top-{TOP} tokens"
        worst = max(abs(ours[t].logprob - theirs[t].logprob) for t in ours)
        assert worst < LOGPROB_TOLERANCE, f"{what} step {step}: logprobs differ by {worst}"


class TestMultiprocConformance(ExecutorConformance):
    @pytest.fixture
    def plugin_module(self) -> ModuleType:
        return plugin

    @pytest.fixture
    def tensor_parallel_size(self) -> int:
        return 2


def test_is_chosen_for_sizes_above_one(tokenizer_folder: Path) -> None:
    engine = LLMEngine(EngineConfig(model=str(tokenizer_folder), tensor_parallel_size=2, **SMALL))
    try:
        assert isinstance(engine.executor, MultiprocExecutor)
        assert [p.name for p in multiprocessing.active_children()] == ["kcore-tp-rank-1"]
    finally:
        engine.shutdown()


def test_a_size_that_does_not_divide_the_heads_is_refused_before_any_process_starts(
    tokenizer_folder: Path, tmp_path: Path
) -> None:
    config, _ = MODELS["llama-9-heads-3-kv-size-3"]
    folder = save_servable_model(config, tokenizer_folder, tmp_path / "nine-heads")
    with pytest.raises(UnsupportedModelError, match=r"tensor_parallel_size 2 does not divide num_attention_heads \(9\)"):
        LLMEngine(EngineConfig(model=str(folder), tensor_parallel_size=2, **SMALL))


ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _adapter_outputs(folder: Path, adapters: dict[str, Path], size: int) -> dict[tuple[str | None, int], Any]:
    """Greedy completions (with top logprobs) of every prompt on every adapter and on the base
    model, in one mixed batch."""
    return adapter_batch_outputs(LLMEngine(EngineConfig(
        model=str(folder), tensor_parallel_size=size, enable_lora=True, max_loras=len(adapters), max_lora_rank=8,
        max_virtual_tokens=8, **SMALL,
    )), adapters, SamplingParams(temperature=0, max_tokens=MAX_TOKENS, logprobs=TOP))


@pytest.mark.parametrize("name", ["llama-9-heads-3-kv-size-3", "qwen2-biased-size-2", "llama-3-heads-1-kv-replicated-size-3"])
def test_every_served_kind_made_by_peft_serves_sharded_in_a_mixed_batch(
    name: str, tokenizer_folder: Path, tmp_path: Path
) -> None:
    """Each rank holds its cut of every adapter (LoRA's A or B split as the base layer is, IA3's
    scales of the features it reads and computes, prefix tuning's keys and values of its KV heads,
    prompt tuning's embeddings whole): the sharded engine gives the size-1 engine's tokens for
    base rows and rows of every kind in one batch, and every adapter changes the output."""
    from kernel_core_sdk.hf_oracle import make_ia3_adapter, make_lora_adapter, make_prompt_adapter

    config, size = MODELS[name]
    folder = save_servable_model(config, tokenizer_folder, tmp_path / name)
    adapters = {
        "lora-attn": make_lora_adapter(folder, tmp_path / "attn", 1, r=4, target_modules=ALL_LINEAR[:4]),
        "lora-all": make_lora_adapter(folder, tmp_path / "all", 2, r=8, lora_alpha=32, target_modules=ALL_LINEAR),
        "ia3": make_ia3_adapter(folder, tmp_path / "ia3", 3, target_modules=["k_proj", "v_proj", "down_proj"],
                                feedforward_modules=["down_proj"]),
        "prompt": make_prompt_adapter(folder, tmp_path / "prompt", 4, "PromptTuningConfig", num_virtual_tokens=5),
        "prefix": make_prompt_adapter(folder, tmp_path / "prefix", 5, "PrefixTuningConfig", num_virtual_tokens=6),
    }
    single, sharded = _adapter_outputs(folder, adapters, 1), _adapter_outputs(folder, adapters, size)
    for row, completion in single.items():
        assert list(sharded[row].token_ids) == list(completion.token_ids), row
        assert_logprobs_close(completion.logprobs, sharded[row].logprobs, row)
    for adapter in adapters:  # not vacuous: each adapter moves the first step's logprobs (if not its tokens)
        moved = [_first_step_gap(single[(adapter, i)], single[(None, i)]) for i in range(len(PROMPTS))]
        assert max(moved) > 100 * LOGPROB_TOLERANCE, (adapter, moved)


def _first_step_gap(ours: Any, base: Any) -> float:
    """How far the adapter moved the base model's first-step top token's logprob (inf: not in its top)."""
    token, entry = max(base.logprobs[0].items(), key=lambda item: item[1].logprob)
    other = ours.logprobs[0].get(token)
    return float("inf") if other is None else abs(other.logprob - entry.logprob)


def test_an_ia3_output_scale_on_a_biased_row_parallel_projection_is_refused(
    tokenizer_folder: Path, tmp_path: Path
) -> None:
    """The bias of o_proj is added after the ranks' sum, so an output scale cannot cover it."""
    from kernel_core_sdk.hf_oracle import make_ia3_adapter

    folder = save_servable_model(lambda **kw: LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=256, attention_bias=True, **kw), tokenizer_folder, tmp_path / "biased")
    ia3 = make_ia3_adapter(folder, tmp_path / "ia3", 1, target_modules=["o_proj"], feedforward_modules=[])
    engine = LLMEngine(EngineConfig(model=str(folder), tensor_parallel_size=2, enable_lora=True, **SMALL))
    try:
        with pytest.raises(AdapterLoadError, match="o_proj scale.* biased projection whose input is split"):
            engine.load_adapter("ia3", ia3)
    finally:
        engine.shutdown()


def test_a_rank_that_fails_to_start_is_named_and_nothing_is_left(
    tokenizer_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rank 0 builds on the given plugins; the spawned rank 1 discovers them from the environment,
    which here leaves out the model plugin, so it cannot load its shard."""
    manager = PluginManager.from_environment()
    monkeypatch.setenv("KERNEL_CORE_DISABLE_PLUGINS", "kernel-core-llama")
    with pytest.raises(KernelCoreError, match=r"worker rank 1 failed to start: InvalidModelFolderError: no model-arch"):
        LLMEngine(EngineConfig(model=str(tokenizer_folder), tensor_parallel_size=2, **SMALL), manager)


def _engine_with_requests(folder: Path, **options: Any) -> LLMEngine:
    engine = LLMEngine(EngineConfig(model=str(folder), tensor_parallel_size=2, **SMALL, **options))
    for index, prompt in enumerate(PROMPTS):
        engine.add_request(str(index), list(prompt), SamplingParams(temperature=0, max_tokens=MAX_TOKENS))
    engine.step()
    return engine


def _finish(engine: LLMEngine, within_s: float) -> list[Any]:
    started, finished = time.monotonic(), []
    while engine.has_unfinished_requests():
        finished += [o.outputs[0] for o in engine.step() if o.finished]
        assert time.monotonic() - started < within_s, "the engine hung on a lost rank"
    return finished


def test_a_rank_that_dies_fails_the_requests_naming_it_and_every_later_step(tokenizer_folder: Path) -> None:
    engine = _engine_with_requests(tokenizer_folder)
    try:
        (rank,) = multiprocessing.active_children()
        os.kill(rank.pid, signal.SIGKILL)
        finished = _finish(engine, within_s=60)
        assert [c.finish_reason for c in finished] == ["error"] * len(PROMPTS)
        assert all("tensor-parallel worker rank 1 (process" in c.error and "is gone" in c.error for c in finished), finished
        with pytest.raises(KernelCoreError, match="rank 1 .* is gone"):
            engine.executor.check_health()
        engine.add_request("later", [1, 2, 3], SamplingParams(max_tokens=2))
        (later,) = _finish(engine, within_s=10)
        assert later.finish_reason == "error" and "is gone" in later.error
    finally:
        engine.shutdown()


def test_a_hung_rank_fails_the_step_within_the_collective_timeout(tokenizer_folder: Path) -> None:
    engine = _engine_with_requests(
        tokenizer_folder, plugin_options={"executor.mp": {"collective_timeout_s": 3}}
    )
    try:
        (rank,) = multiprocessing.active_children()
        os.kill(rank.pid, signal.SIGSTOP)
        finished = _finish(engine, within_s=60)
        assert [c.finish_reason for c in finished] == ["error"] * len(PROMPTS)
        assert all("the engine cannot run steps any more" in c.error for c in finished)
    finally:
        engine.shutdown()


#: Prompts of the embedded model's test (text; its tokenizer's ids differ by model).
TEXTS = (
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "List three primary colors:",
)


@pytest.mark.slow
def test_the_embedded_model_at_size_three_equals_size_one() -> None:
    """SmolLM2-135M (9 query heads, 3 KV heads) split three ways: the same greedy tokens, or a
    difference only where size 1's top two logprobs were within fp32 noise of a tie."""
    from kernel_core.models.embedded import embedded_model_path

    folder = str(embedded_model_path())
    params = SamplingParams(temperature=0, max_tokens=16, logprobs=2)
    results = {}
    for size in (1, 3):
        engine = LLMEngine(EngineConfig(model=folder, tensor_parallel_size=size, num_kv_blocks=64, block_size=16))
        try:
            for index, text in enumerate(TEXTS):
                engine.add_request(str(index), text, params)
            done = {}
            while engine.has_unfinished_requests():
                done.update({o.request_id: o.outputs[0] for o in engine.step() if o.finished})
        finally:
            engine.shutdown()
        results[size] = done
    for key, single in results[1].items():
        sharded = results[3][key]
        for step, (token, tp_token) in enumerate(zip(single.token_ids, sharded.token_ids, strict=True)):
            ours, theirs = single.logprobs[step], sharded.logprobs[step]
            if token != tp_token:
                top_two = sorted((entry.logprob for entry in ours.values()), reverse=True)[:2]
                assert top_two[0] - top_two[1] < LOGPROB_TOLERANCE, f"prompt {key} step {step}: not a near-tie"
                break
            assert abs(ours[token].logprob - theirs[token].logprob) < LOGPROB_TOLERANCE, f"prompt {key} step {step}"

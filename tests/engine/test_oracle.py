"""Correctness oracle: in float32 with greedy decoding, the engine's tokens equal Hugging Face
transformers' ``generate`` for the embedded SmolLM2, however the engine batches, chunks, caches
and preempts."""

from __future__ import annotations

from pathlib import Path

import pytest

from kernel_core import LLM, SamplingParams

NEW_TOKENS = 16
RAW = [
    "Hello, my name is",
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a land far away,",
    "1, 2, 3, 4,",
    "Translate to French: cheese ->",
    "The quick brown fox jumps over the lazy dog. " * 12,
    "Q: What is 2+2?\nA:",
]
QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three colors.",
    "Explain gravity in one sentence.",
    "What is 17 times 3?",
    "Say hello in Spanish.",
    "Name a planet.",
    "Why is the sky blue? Please answer in detail, with examples. " * 6,
]


@pytest.fixture(scope="module")
def prompts(embedded_model_cache: Path) -> list[list[int]]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(embedded_model_cache / "models" / "smollm2-135m-instruct")
    chats = [
        tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False)
        for q in QUESTIONS
    ]
    return [tokenizer.encode(p, add_special_tokens=False) for p in RAW + chats]


@pytest.fixture(scope="module")
def reference(embedded_model_cache: Path, prompts: list[list[int]]) -> list[list[int]]:
    """transformers' greedy tokens, one prompt at a time (no padding), EOS kept when it comes."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(embedded_model_cache / "models" / "smollm2-135m-instruct", dtype=torch.float32)
    out = []
    for ids in prompts:
        generated = model.generate(
            torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=NEW_TOKENS, do_sample=False,
        )
        out.append(generated[0, len(ids):].tolist())
    return out


CONFIGS = {
    "one-batch": {},
    "chunked-prefill-16": {"max_num_batched_tokens": 16},
    "preemption-tiny-kv": {"num_kv_blocks": 24, "max_num_batched_tokens": 64},
    "no-prefix-caching": {"enable_prefix_caching": False},
}


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_greedy_tokens_equal_transformers(embedded_model: Path, prompts, reference, config):
    llm = LLM("smollm2-135m-instruct", kv_cache_memory=0.25, **config)
    params = SamplingParams(temperature=0, max_tokens=NEW_TOKENS)  # stops at EOS, like generate
    for run in ("cold", "warm"):  # the warm run hits the prefix cache (when enabled)
        outputs = llm.generate(prompts, params)
        got = [o.outputs[0].token_ids for o in outputs]
        assert got == reference, f"{run} run differs"
    stats = llm.engine.components.cache.stats()
    assert stats.num_free_blocks == stats.num_blocks
    if llm.engine.config.enable_prefix_caching:
        assert stats.prefix_hits > 0
    if "num_kv_blocks" in config:
        assert llm.engine.scheduler.num_preemptions > 0


def test_logprobs_match_transformers(embedded_model: Path, prompts):
    import torch
    from transformers import AutoModelForCausalLM

    ids = prompts[8]  # a chat-templated question
    llm = LLM("smollm2-135m-instruct", kv_cache_memory=0.25)
    params = SamplingParams(temperature=0, max_tokens=6, logprobs=3, prompt_logprobs=2)
    output = llm.generate([ids], params)[0]
    completion = output.outputs[0]
    model = AutoModelForCausalLM.from_pretrained(embedded_model, dtype=torch.float32)
    full = ids + completion.token_ids
    with torch.no_grad():
        expected = model(torch.tensor([full])).logits[0].log_softmax(-1)  # row i predicts token i + 1

    assert output.prompt_logprobs[0] is None and len(output.prompt_logprobs) == len(ids)
    for i in range(1, len(ids)):
        entry = output.prompt_logprobs[i]
        assert entry[ids[i]].logprob == pytest.approx(expected[i - 1, ids[i]].item(), abs=1e-4)
        top = expected[i - 1].topk(2)
        ranked = sorted((lp.rank, t) for t, lp in entry.items() if lp.rank <= 2)
        assert [t for _, t in ranked] == top.indices.tolist()
    assert len(completion.logprobs) == len(completion.token_ids)
    for step, (token, entry) in enumerate(zip(completion.token_ids, completion.logprobs)):
        row = expected[len(ids) + step - 1]
        assert entry[token].rank == 1  # greedy
        assert entry[token].logprob == pytest.approx(row[token].item(), abs=1e-4)
        assert list(entry)[:1] == [token] and len(entry) == 3  # the chosen token is also the best
        top = row.topk(3)
        assert list(entry) == top.indices.tolist()
        assert [entry[t].logprob for t in entry] == pytest.approx(top.values.tolist(), abs=1e-4)

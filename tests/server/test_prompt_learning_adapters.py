"""``kcore serve --adapter`` with prompt-learning adapters: each is an OpenAI model whose greedy
completion is the in-process engine's, usage counts the prompt without its virtual tokens, and an
adapter with more virtual tokens than the default slots hold still loads (the slots are sized
for the ``--adapter`` ones)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kernel_core.sampling_params import SamplingParams

from ..engine.adapter_serving import make_llm
from kernel_core_sdk.hf_oracle import make_prompt_adapter
from .conftest import serving_adapters

PROMPT = "The capital of France is"
ADAPTERS = {
    "prompt8": ("PromptTuningConfig", dict(num_virtual_tokens=8)),
    "prefix80": ("PrefixTuningConfig", dict(num_virtual_tokens=80)),  # beyond the default 64
}


@pytest.fixture(scope="module")
def folders(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("prompt-adapters")
    return {
        name: make_prompt_adapter(tiny_model, root / name, seed, kind, **fields)
        for seed, (name, (kind, fields)) in enumerate(ADAPTERS.items(), 1)
    }


def test_prompt_learning_adapters_are_openai_models(tiny_model, folders, embedded_model_cache, tmp_path):
    llm = make_llm(tiny_model, folders, num_kv_blocks=64, max_virtual_tokens=80)
    params = SamplingParams(temperature=0, max_tokens=6)
    want = {name: llm.generate([PROMPT], params, adapter=name)[0] for name in folders}
    with serving_adapters(tiny_model, folders, tmp_path / "server.log", embedded_model_cache) as server:
        client = server.client()
        for name in folders:
            out = client.completions.create(model=name, prompt=PROMPT, temperature=0, max_tokens=6)
            assert out.choices[0].text == want[name].outputs[0].text, name
            assert out.usage.prompt_tokens == len(want[name].prompt_token_ids)  # no virtual tokens

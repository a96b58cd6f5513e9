"""``kcore serve --adapter`` with prompt-learning adapters: each is an OpenAI model whose greedy
completion is the in-process engine's, usage counts the prompt without its virtual tokens, and an
adapter with more virtual tokens than the default slots hold still loads (the slots are sized
for the ``--adapter`` ones)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kernel_core.llm import LLM
from kernel_core.sampling_params import SamplingParams

from ..lora.peft_adapters import make_prompt_adapter
from .conftest import API_KEY, start_server

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
    llm = LLM(str(tiny_model), enable_lora=True, num_kv_blocks=64, max_virtual_tokens=80)
    for name, folder in folders.items():
        llm.load_adapter(name, folder)
    params = SamplingParams(temperature=0, max_tokens=6)
    want = {name: llm.generate([PROMPT], params, adapter=name)[0] for name in folders}
    args = [arg for name, folder in folders.items() for arg in ("--adapter", f"{name}={folder}")]
    server = start_server(tiny_model, tmp_path / "server.log", "--api-key", API_KEY, *args, "--num-kv-blocks", "64",
                          env={"KERNEL_CORE_CACHE": str(embedded_model_cache)})
    try:
        client = server.client()
        models = {m.id: m for m in client.models.list().data}
        assert {name: models[name].model_extra["parent"] for name in folders} == dict.fromkeys(folders, server.model)
        for name in folders:
            out = client.completions.create(model=name, prompt=PROMPT, temperature=0, max_tokens=6)
            assert out.choices[0].text == want[name].outputs[0].text, name
            assert out.usage.prompt_tokens == len(want[name].prompt_token_ids)  # no virtual tokens
    finally:
        assert server.stop() == 0, server.log.read_text()

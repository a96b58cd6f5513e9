"""``kcore serve --adapter`` with IA3 folders beside a LoRA one: each is an OpenAI model whose
greedy completion is the in-process engine's with that adapter (no rank in an IA3 config: the
default ``max_lora_rank`` sizes only the LoRA slots)."""

from __future__ import annotations

from pathlib import Path

from kernel_core.llm import LLM
from kernel_core.sampling_params import SamplingParams
from kernel_core_sdk.hf_oracle import make_ia3_adapter

from ..lora.peft_adapters import ADAPTERS, make_adapter
from .conftest import API_KEY, start_server

PROMPT = "The capital of France is"


def test_ia3_adapters_are_openai_models(tiny_model: Path, embedded_model_cache: Path, tmp_path: Path) -> None:
    folders = {
        "ia3": make_ia3_adapter(tiny_model, tmp_path / "ia3", 7),
        "ia3-o": make_ia3_adapter(tiny_model, tmp_path / "ia3-o", 8, target_modules=["q_proj", "o_proj", "up_proj"],
                                  feedforward_modules=["o_proj"]),
        "qv8": make_adapter(tiny_model, tmp_path / "qv8", 1, **ADAPTERS["qv8"]),
    }
    llm = LLM(str(tiny_model), enable_lora=True, num_kv_blocks=64)
    for name, folder in folders.items():
        llm.load_adapter(name, folder)
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    want = {name: llm.generate([PROMPT], params, adapter=name)[0].outputs[0].text for name in [*folders, None]}
    assert len(set(want.values())) == len(want)  # every adapter moves the text
    args = [arg for name, folder in folders.items() for arg in ("--adapter", f"{name}={folder}")]
    server = start_server(tiny_model, tmp_path / "server.log", "--api-key", API_KEY, *args, "--num-kv-blocks", "64",
                          env={"KERNEL_CORE_CACHE": str(embedded_model_cache)})
    try:
        client = server.client()
        models = {m.id: m for m in client.models.list().data}
        assert {name: models[name].model_extra["parent"] for name in folders} == dict.fromkeys(folders, server.model)
        for name in [*folders, None]:
            out = client.completions.create(model=name or server.model, prompt=PROMPT, temperature=0, max_tokens=8,
                                            extra_body={"ignore_eos": True})
            assert out.choices[0].text == want[name], name
    finally:
        assert server.stop() == 0, server.log.read_text()

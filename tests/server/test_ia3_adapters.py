"""``kcore serve --adapter`` with IA3 folders beside a LoRA one: each is an OpenAI model whose
greedy completion is the in-process engine's with that adapter (no rank in an IA3 config: the
default ``max_lora_rank`` sizes only the LoRA slots)."""

from __future__ import annotations

from pathlib import Path

from kernel_core.sampling_params import SamplingParams
from kernel_core_sdk.hf_oracle import make_ia3_adapter

from ..engine.adapter_serving import make_llm
from ..lora.peft_adapters import ADAPTERS, make_adapter
from .conftest import serving_adapters

PROMPT = "The capital of France is"


def test_ia3_adapters_are_openai_models(tiny_model: Path, embedded_model_cache: Path, tmp_path: Path) -> None:
    folders = {
        "ia3": make_ia3_adapter(tiny_model, tmp_path / "ia3", 7),
        "ia3-o": make_ia3_adapter(tiny_model, tmp_path / "ia3-o", 8, target_modules=["q_proj", "o_proj", "up_proj"],
                                  feedforward_modules=["o_proj"]),
        "qv8": make_adapter(tiny_model, tmp_path / "qv8", 1, **ADAPTERS["qv8"]),
    }
    llm = make_llm(tiny_model, folders, num_kv_blocks=64)
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    want = {name: llm.generate([PROMPT], params, adapter=name)[0].outputs[0].text for name in [*folders, None]}
    assert len(set(want.values())) == len(want)  # every adapter moves the text
    with serving_adapters(tiny_model, folders, tmp_path / "server.log", embedded_model_cache) as server:
        client = server.client()
        for name in [*folders, None]:
            out = client.completions.create(model=name or server.model, prompt=PROMPT, temperature=0, max_tokens=8,
                                            extra_body={"ignore_eos": True})
            assert out.choices[0].text == want[name], name

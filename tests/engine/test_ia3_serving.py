"""IA3 adapters served beside LoRA adapters and base rows, checked against HF PEFT.

Two IA3 adapters made by the real ``peft`` (its default config for a Llama: ``k_proj``/``v_proj``
outputs and ``down_proj``'s input; and ``q_proj``/``gate_proj``/``up_proj`` outputs with ``o_proj``'s
input) share each step with two LoRA adapters and base-only rows: each request's greedy tokens must
equal ``generate`` of the HF model with that single adapter, in fp32, also with prefix hits, chunked
prefill, preemption and fewer slots than adapters, and (slow) on the real embedded model. Then what
the IA3 serving refuses at load."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from kernel_core.errors import AdapterLoadError
from kernel_core.llm import LLM
from kernel_core_sdk.hf_oracle import make_ia3_adapter

from ..lora.peft_adapters import adapters_for
from .adapter_serving import GREEDY, PROMPTS, Expected, make_llm, workload
from .adapter_serving import assert_each_changes_the_output, assert_equal_to_peft, assert_idle
from .test_lora_serving import CONFIGS

#: IA3 configs: peft's default for the model type, and one with other targets and input scales.
IA3_ADAPTERS: dict[str, dict[str, Any]] = {
    "ia3-default": {},
    "ia3-qogu": dict(target_modules=["q_proj", "o_proj", "gate_proj", "up_proj"], feedforward_modules=["o_proj"]),
}
LORA = ("qv8", "all16")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def adapters(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    lora = adapters_for(tiny_model, tmp_path_factory.mktemp("peft-adapters"))
    root = tmp_path_factory.mktemp("ia3-adapters")
    ia3 = {name: make_ia3_adapter(tiny_model, root / name, seed, **spec) for seed, (name, spec) in enumerate(IA3_ADAPTERS.items(), 11)}
    return {**{name: lora[name] for name in LORA}, **ia3}


@pytest.fixture(scope="module")
def expected(tiny_model: Path, adapters: dict[str, Path]) -> Expected:
    return Expected(tiny_model, adapters)


def test_peft_saved_what_the_served_layout_assumes(adapters):
    """The oracle is not vacuous and the files are what the serving reads: peft's default targets
    k/v outputs and down_proj's input; every adapter moves the greedy tokens."""
    config = json.loads((adapters["ia3-default"] / "adapter_config.json").read_text())
    assert sorted(config["target_modules"]) == ["down_proj", "k_proj", "v_proj"] and config["feedforward_modules"] == ["down_proj"]
    shapes = {k: tuple(v.shape) for k, v in load_file(adapters["ia3-default"] / "adapter_model.safetensors").items()}
    assert shapes["base_model.model.model.layers.0.mlp.down_proj.ia3_l"] == (1, 128)
    assert shapes["base_model.model.model.layers.0.self_attn.k_proj.ia3_l"] == (32, 1)


def test_adapters_change_the_output(expected):
    assert_each_changes_the_output(expected, IA3_ADAPTERS)


def record_kinds(llm: LLM) -> list[set[str]]:
    """The adapter kinds each step's forward ran."""
    engine, steps = llm.engine, []
    execute = engine.executor.worker.runner.execute

    def recording(inputs):
        slots = engine.adapters.slots
        steps.append({slots.kind_in[s] for s in inputs.slots.slot_rows} if inputs.slots is not None else set())
        return execute(inputs)

    engine.executor.worker.runner.execute = recording
    return steps


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_ia3_lora_and_base_rows_in_one_batch_equal_hf_peft(config, tiny_model, adapters, expected):
    llm = make_llm(tiny_model, adapters, **config)
    steps = record_kinds(llm)
    prompts, names = workload([None, *IA3_ADAPTERS, *LORA])
    assert_equal_to_peft(llm.generate(prompts, GREEDY, adapter=names), prompts, names, expected)
    if config["max_loras"] >= 3:
        assert any(kinds == {"IA3", "LORA"} for kinds in steps)  # both kinds really shared steps
    assert_idle(llm.engine)
    if config.get("num_kv_blocks", 256) < 10:
        assert llm.engine.scheduler.num_preemptions > 0
    if config.get("max_num_batched_tokens") == 16:
        assert len(steps) > GREEDY.max_tokens + 4  # prompts were prefilled in chunks
    hits = llm.engine.components.cache.stats().prefix_hits
    assert_equal_to_peft(llm.generate(prompts, GREEDY, adapter=names), prompts, names, expected)  # warm
    assert llm.engine.components.cache.stats().prefix_hits > hits
    assert_idle(llm.engine)


def test_slot_bytes_are_what_the_serving_allocates(tiny_model, adapters):
    llm = make_llm(tiny_model, {"ia3-default": adapters["ia3-default"]}, max_loras=3)
    serving = llm.engine.adapters.kinds.servings["IA3"]
    allocated = sum(p.inputs.nbytes + p.outputs.nbytes for p in serving.projections.values())
    model = llm.engine.components.model
    assert type(serving).slot_nbytes(model, SimpleNamespace(max_slots=3, dtype=torch.float32)) == allocated
    assert [(i.name, i.kind, i.rank) for i in llm.list_adapters()] == [("ia3-default", "IA3", 0)]


# -- refused at load, by name --------------------------------------------------------------------


def _edit(folder: Path, edit_config: dict[str, Any] | None = None, edit_tensors=None) -> Path:
    if edit_config is not None:
        path = folder / "adapter_config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **edit_config}))
    if edit_tensors is not None:
        path = folder / "adapter_model.safetensors"
        tensors = load_file(path)
        edit_tensors(tensors)
        save_file(tensors, path, metadata={"format": "pt"})
    return folder


def _refusal(tiny_model: Path, folder: Path) -> str:
    llm = LLM(str(tiny_model), enable_lora=True, max_lora_rank=8, num_kv_blocks=16, max_loras=1)
    with pytest.raises(AdapterLoadError) as refused:
        llm.load_adapter("bad", folder)
    assert llm.list_adapters() == []
    return str(refused.value)


def test_an_input_scale_inside_a_fused_gemm_is_refused(tiny_model, tmp_path):
    folder = make_ia3_adapter(
        tiny_model, tmp_path / "a", 1, target_modules=["gate_proj", "up_proj"], feedforward_modules=["up_proj"]
    )
    message = _refusal(tiny_model, folder)
    assert "model.layers.0.mlp.up_proj scale(s) the input (feedforward_modules)" in message
    assert "one GEMM (model.layers.0.gate_up_proj)" in message


def test_modules_outside_the_adapter_targets_are_refused(tiny_model, tmp_path):
    folder = make_ia3_adapter(tiny_model, tmp_path / "a", 1, target_modules=["v_proj", "lm_head"], feedforward_modules=[])
    message = _refusal(tiny_model, folder)
    assert "targets module(s) 'lm_head', which the served model does not adapt" in message


def test_a_vector_of_the_wrong_shape_is_refused_naming_it(tiny_model, tmp_path):
    folder = make_ia3_adapter(tiny_model, tmp_path / "a", 1)
    key = "base_model.model.model.layers.1.self_attn.v_proj.ia3_l"
    _edit(folder, edit_tensors=lambda t: t.__setitem__(key, torch.ones(16, 1)))
    assert "model.layers.1.self_attn.v_proj.ia3_l: file (16, 1) vs model (32, 1), scaling its output" in _refusal(tiny_model, folder)
    # a config that makes k_proj a feed-forward module disagrees with the [out, 1] vector saved for it
    folder = _edit(make_ia3_adapter(tiny_model, tmp_path / "b", 1), {"feedforward_modules": ["down_proj", "k_proj"]})
    assert "k_proj.ia3_l: file (32, 1) vs model (1, 64), scaling its input (feed-forward module)" in _refusal(tiny_model, folder)


def test_saved_modules_and_foreign_tensors_are_refused(tiny_model, tmp_path):
    folder = _edit(make_ia3_adapter(tiny_model, tmp_path / "a", 1), {"modules_to_save": ["lm_head"]})
    assert "cannot run modules_to_save (lm_head)" in _refusal(tiny_model, folder)
    folder = _edit(
        make_ia3_adapter(tiny_model, tmp_path / "b", 1),
        edit_tensors=lambda t: t.__setitem__("base_model.model.lm_head.weight", torch.zeros(2, 2)),
    )
    assert "'base_model.model.lm_head.weight' are not IA3 vectors" in _refusal(tiny_model, folder)


def test_kcore_generate_with_an_ia3_folder(tiny_model, adapters, expected, capsys):
    """``kcore generate --adapter`` takes an IA3 folder as it takes a LoRA one (no rank: the
    default ``max_lora_rank`` sizes only the LoRA slots)."""
    from kernel_core.cli import main

    prompt, args = PROMPTS[0], ("--kv-cache-memory", "0.01", "--no-chat", "--max-tokens", str(GREEDY.max_tokens))
    assert main(["generate", "--model", str(tiny_model), *args, "--adapter", str(adapters["ia3-qogu"]), prompt]) == 0
    text = capsys.readouterr().out
    tokenizer = expected.tokenizer
    assert text == tokenizer.decode(expected("ia3-qogu", prompt), skip_special_tokens=True) + "\n"


# -- the real model ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_embedded_model_ia3_lora_and_base_rows_equal_hf_peft(embedded_model, embedded_model_cache, tmp_path_factory):
    base = embedded_model_cache / "models" / "smollm2-135m-instruct"
    root = tmp_path_factory.mktemp("smollm2-ia3")
    made = {name: make_ia3_adapter(base, root / name, seed, **spec) for seed, (name, spec) in enumerate(IA3_ADAPTERS.items(), 11)}
    lora = adapters_for(base, tmp_path_factory.mktemp("smollm2-adapters"))
    adapters = {**{name: lora[name] for name in LORA}, **made}
    expected = Expected(base, adapters)
    llm = make_llm(embedded_model, adapters, **CONFIGS["everything"] | {"num_kv_blocks": 10})
    prompts, names = workload([None, *IA3_ADAPTERS, *LORA])
    assert_equal_to_peft(llm.generate(prompts, GREEDY, adapter=names), prompts, names, expected)
    assert_equal_to_peft(llm.generate(prompts, GREEDY, adapter=names), prompts, names, expected)  # warm
    assert_idle(llm.engine)
    for name in IA3_ADAPTERS:  # not vacuous on the real model either
        assert any(expected(name, p) != expected(None, p) for p, n in zip(prompts, names) if n == name), name

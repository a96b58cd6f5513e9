"""PEFT LoRA folders converted for serving by the LoRA plugin's serving: the fused layout and
scaling checked against the real ``peft`` layers (rank and alpha patterns, rsLoRA), and every
refusal at load, by name."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from kernel_core.config import EngineConfig
from kernel_core.engine.llm_engine import LLMEngine
from kernel_core.errors import AdapterLoadError
from kernel_core.adapters.loading import load_host_adapter
from kernel_core.peft.state_dict import CONFIG_NAME, WEIGHTS_NAME
from kernel_core.sampling_params import SamplingParams

from .peft_adapters import ADAPTERS, make_adapter

MAX_RANK = 32


@pytest.fixture(scope="module")
def engine(tiny_model: Path) -> LLMEngine:
    return LLMEngine(
        EngineConfig(model=str(tiny_model), num_kv_blocks=32, enable_lora=True, max_loras=2, max_lora_rank=MAX_RANK)
    )


@pytest.fixture(scope="module")
def made(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {name: make_adapter(tiny_model, root / name, seed, **ADAPTERS[name])
            for seed, name in enumerate(("pattern8", "rs16", "qv8"), 1)}


def _peft_layers(base: Path, folder: Path) -> dict[str, tuple[int, float, torch.Tensor, torch.Tensor]]:
    """HF module name -> (r, scaling, A, B) as the real peft model holds them."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), folder)
    layers = {}
    for name, module in model.named_modules():
        if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {}):
            layers[name.removeprefix("base_model.model.")] = (
                module.r["default"], module.scaling["default"],
                module.lora_A["default"].weight.detach(), module.lora_B["default"].weight.detach(),
            )
    return layers


@pytest.mark.parametrize("name", ["pattern8", "rs16", "qv8"])
def test_fused_layout_and_scaling_match_peft_layers(name, made, engine, tiny_model):
    targets = engine.adapters.kinds.servings["LORA"].targets
    host = load_host_adapter(name, made[name], 7, engine.adapters.kinds)
    adapter = host.served
    layers = _peft_layers(tiny_model, made[name])
    expected: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for key, target in targets.items():
        for index, (module, rows) in enumerate(target.parts.items()):
            if module not in layers:
                continue
            r, scaling, lora_a, lora_b = layers[module]
            a, b = expected.setdefault(key, (
                torch.zeros(len(target.parts) * MAX_RANK, target.weight.shape[1]),
                torch.zeros(target.weight.shape[0], len(target.parts) * MAX_RANK),
            ))
            a[index * MAX_RANK : index * MAX_RANK + r] = lora_a
            b[rows, index * MAX_RANK : index * MAX_RANK + r] = lora_b * scaling
    assert set(adapter.factors) == set(expected)
    for key, (a, b) in expected.items():
        torch.testing.assert_close(adapter.factors[key][0], a, rtol=0, atol=0)
        torch.testing.assert_close(adapter.factors[key][1], b, rtol=1e-6, atol=1e-7)
    assert (host.key, host.kind, host.rank) == (7, "LORA", max(r for r, *_ in layers.values()))


def test_patterns_and_rslora_reach_the_scalings(made, tiny_model):
    pattern = _peft_layers(tiny_model, made["pattern8"])
    assert pattern["model.layers.0.self_attn.q_proj"][:2] == (32, 16 / 32)  # rank_pattern, alpha 16
    assert pattern["model.layers.1.self_attn.q_proj"][:2] == (8, 16 / 8)
    assert pattern["model.layers.0.self_attn.v_proj"][:2] == (8, 64 / 8)  # alpha_pattern
    assert pattern["model.layers.1.mlp.gate_proj"][:2] == (8, 4 / 8)
    assert pattern["model.layers.0.mlp.down_proj"][:2] == (20, 16 / 20)
    rs = _peft_layers(tiny_model, made["rs16"])
    assert rs["model.layers.0.self_attn.k_proj"][:2] == (16, 8 / math.sqrt(16))


# -- refusals -----------------------------------------------------------------------------------


def _refused(engine: LLMEngine, folder: Path, *messages: str) -> str:
    """Loading ``folder`` fails naming each message; the engine keeps serving without it."""
    before = engine.list_adapters()
    with pytest.raises(AdapterLoadError) as refused:
        engine.load_adapter("bad", folder)
    for message in messages:
        assert message in str(refused.value)
    assert "'bad'" in str(refused.value) or str(folder) in str(refused.value)
    assert engine.list_adapters() == before
    engine.add_request("still-serving", "Hello", SamplingParams(temperature=0, max_tokens=2))
    while engine.has_unfinished_requests():
        engine.step()
    return str(refused.value)


@pytest.mark.parametrize(
    ("lora", "messages"),
    [
        (dict(target_modules=["q_proj"], use_dora=True), ["use_dora (DoRA)", "merge it into a model"]),
        (dict(target_modules=["q_proj"], bias="lora_only"), ["bias='lora_only'"]),
        (dict(target_modules=["q_proj"], modules_to_save=["lm_head"]), ["modules_to_save"]),
        (dict(target_modules=["embed_tokens"]), ["embed_tokens.lora_embedding_A'", "embedding LoRA"]),
        (dict(target_modules=["q_proj", "lm_head"]), ["lm_head.base_layer.weight'", "saved modules are not served"]),
        (dict(target_modules=["q_proj", "v_proj"], r=8, rank_pattern={"v_proj": 64}),
         ["rank 64 of model.layers.0.self_attn.v_proj exceeds max_lora_rank 32"]),
    ],
    ids=["dora", "bias", "modules_to_save", "embedding", "lm_head", "rank"],
)
def test_what_the_serving_path_cannot_run_is_refused_by_name(lora, messages, engine, tiny_model, tmp_path):
    folder = make_adapter(tiny_model, tmp_path / "a", 0, init_lora_weights=True, **{"r": 4, **lora})
    _refused(engine, folder, *messages)


def test_a_module_the_served_model_does_not_adapt_is_named(engine, tiny_model, tmp_path):
    folder = make_adapter(tiny_model, tmp_path / "a", 0, r=4, target_modules=["q_proj", "lm_head"])
    tensors = load_file(folder / WEIGHTS_NAME)
    del tensors["base_model.model.lm_head.base_layer.weight"]  # peft saves the tied embedding too
    save_file(tensors, folder / WEIGHTS_NAME)
    _refused(engine, folder, "targets module(s) 'lm_head', which the served model does not adapt")


def test_an_adapter_for_another_base_names_each_mismatched_tensor(engine, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    other = tmp_path / "other-base"
    config = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    LlamaForCausalLM(config).save_pretrained(other)
    folder = make_adapter(other, tmp_path / "a", 0, r=4, target_modules=["q_proj", "down_proj"])
    message = _refused(engine, folder, "shape mismatch (saved for another base model?)")
    assert "model.layers.0.self_attn.q_proj.lora_A.weight: file (4, 32) vs model (4, 64)" in message
    assert "model.layers.0.self_attn.q_proj.lora_B.weight: file (32, 4) vs model (64, 4)" in message
    assert "model.layers.1.mlp.down_proj.lora_B.weight: file (32, 4) vs model (64, 4)" in message


@pytest.mark.parametrize("dropped", ["lora_A", "lora_B"])
def test_a_missing_factor_is_named(dropped, made, engine, tmp_path):
    folder = _copy(made["qv8"], tmp_path / "a")
    tensors = load_file(folder / WEIGHTS_NAME)
    victim = f"base_model.model.model.layers.1.self_attn.v_proj.{dropped}.weight"
    del tensors[victim]
    save_file(tensors, folder / WEIGHTS_NAME)
    _refused(engine, folder, "lora_A or lora_B missing for model.layers.1.self_attn.v_proj")


def test_a_tensor_that_is_not_a_lora_factor_is_refused(made, engine, tmp_path):
    folder = _copy(made["qv8"], tmp_path / "a")
    tensors = load_file(folder / WEIGHTS_NAME)
    tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector"] = torch.ones(64)
    save_file(tensors, folder / WEIGHTS_NAME)
    _refused(engine, folder, "'base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector'")


def test_kinds_nothing_serves_are_refused_naming_the_kind_and_what_would_serve_it(made, engine, tmp_path):
    served = ", ".join(sorted(engine.adapters.kinds.servings))
    assert {"IA3", "LORA"} <= set(engine.adapters.kinds.servings)
    for peft_type, tuner in (("VERA", "tuner 'vera' from kernel-core-vera"), ("LOHA", "tuner 'loha' from kernel-core-loha")):
        _refused(engine, _with_peft_type(made["qv8"], tmp_path / peft_type, peft_type),
                 f"adapters of kind {peft_type!r} cannot be served: {tuner} provides no serving (TunerSpec.serving)",
                 f"a tuner plugin for {peft_type!r} that names an AdapterServing would serve it (kinds served here: {served})")
    for peft_type in ("NO_SUCH_METHOD", None):
        _refused(engine, _with_peft_type(made["qv8"], tmp_path / str(peft_type), peft_type),
                 f"adapters of kind {peft_type!r} cannot be served: no installed tuner plugin has that peft_type")


def _with_peft_type(source: Path, target: Path, peft_type: str | None) -> Path:
    folder = _copy(source, target)
    config = json.loads((folder / CONFIG_NAME).read_text())
    config["peft_type"] = peft_type
    (folder / CONFIG_NAME).write_text(json.dumps(config))
    return folder


def test_pickled_and_corrupt_files_are_refused(made, engine, tmp_path):
    pickled = _copy(made["qv8"], tmp_path / "pickled")
    torch.save(load_file(pickled / WEIGHTS_NAME), pickled / "adapter_model.bin")
    (pickled / WEIGHTS_NAME).unlink()
    _refused(engine, pickled, "is a pickle file", "refused")
    corrupt = _copy(made["qv8"], tmp_path / "corrupt")
    (corrupt / WEIGHTS_NAME).write_bytes(b"\x00garbage" * 10)
    _refused(engine, corrupt, "is not a readable safetensors file")
    truncated = _copy(made["qv8"], tmp_path / "truncated")
    data = (truncated / WEIGHTS_NAME).read_bytes()
    (truncated / WEIGHTS_NAME).write_bytes(data[: len(data) // 2])
    _refused(engine, truncated, "is not a readable safetensors file")
    no_config = _copy(made["qv8"], tmp_path / "no-config")
    (no_config / CONFIG_NAME).unlink()
    _refused(engine, no_config, "has no adapter_config.json")
    bad_json = _copy(made["qv8"], tmp_path / "bad-json")
    (bad_json / CONFIG_NAME).write_text("{not json")
    _refused(engine, bad_json, "is not valid JSON")
    _refused(engine, tmp_path / "missing", "does not exist")


def test_names_are_checked_and_not_loaded_twice(made, engine):
    with pytest.raises(ValueError, match="must be letters, digits"):
        engine.load_adapter("../escape", made["qv8"])
    engine.load_adapter("once", made["qv8"])
    try:
        with pytest.raises(ValueError, match="'once' is already loaded; unload it first"):
            engine.load_adapter("once", made["rs16"])
    finally:
        engine.unload_adapter("once")


def _copy(source: Path, target: Path) -> Path:
    target.mkdir(parents=True)
    for file in source.iterdir():
        (target / file.name).write_bytes(file.read_bytes())
    return target

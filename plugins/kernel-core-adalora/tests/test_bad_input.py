"""Bad AdaLoRA input is refused naming the culprit: an invalid schedule or knob, a field AdaLoRA
does not have, a rank pattern of the wrong length, and a file whose tensors do not fit the
config's rank pattern or the model (refused before anything is half-loaded, naming the tensor)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from kernel_core.errors import AdapterLoadError, InvalidAdapterConfigError
from kernel_core.peft import PeftModel, get_config, get_peft_model
from kernel_core_sdk.tiny_models import tiny_llama

FIELDS = {"target_modules": ["q_proj", "v_proj"], "init_r": 4, "target_r": 2, "total_step": 10}
Q_KEY = "base_model.model.model.layers.0.self_attn.q_proj"


@pytest.mark.parametrize(
    ("fields", "culprit"),
    [({"total_step": None}, "total_step must be given"), ({"total_step": 0}, "total_step must be given"),
     ({"tinit": 6, "tfinal": 4}, "tinit=6 and tfinal=4 leave no pruning phase"), ({"orth_reg_weight": -1.0}, "orth_reg_weight"),
     ({"beta1": 1.0}, "beta1"), ({"beta2": 0.0}, "beta2"), ({"deltaT": 0}, "deltaT"), ({"init_r": 0}, "init_r"),
     ({"bias": "all"}, "bias"), ({"use_dora": True}, "use_dora"), ({"lora_dropout": 1.0}, "lora_dropout"),
     ({"rank_pattern": {"model.layers.0.self_attn.q_proj.lora_E": [True, False]}}, r"rank_pattern\[.*q_proj.lora_E'\] has 2 entries, init_r is 4")],
)
def test_invalid_fields_are_named(fields: dict[str, object], culprit: str) -> None:
    with pytest.raises(InvalidAdapterConfigError, match=rf"invalid AdaLoraConfig: .*{culprit}"):
        get_config("adalora", **(FIELDS | fields))


def _saved(folder: Path, **fields: object) -> Path:
    get_peft_model(tiny_llama(), get_config("adalora", **(FIELDS | fields))).save_pretrained(folder)
    return folder


def test_a_tensor_of_the_wrong_shape_is_named(tmp_path: Path) -> None:
    folder = _saved(tmp_path)
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    tensors[f"{Q_KEY}.lora_A"] = torch.ones(3, 16)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    with pytest.raises(AdapterLoadError, match=rf"{Q_KEY}.lora_A: file \(3, 16\) vs model \(4, 16\)"):
        PeftModel.from_pretrained(tiny_llama(), folder)


def test_a_rank_pattern_that_does_not_fit_the_tensors_is_refused(tmp_path: Path) -> None:
    """The file holds all four triplets of q_proj, but the config says two were pruned."""
    folder = _saved(tmp_path)
    config = json.loads((folder / "adapter_config.json").read_text())
    pattern = {"model.layers.0.self_attn.q_proj.lora_E": [True, False, True, False]}
    (folder / "adapter_config.json").write_text(json.dumps(config | {"rank_pattern": pattern}))
    with pytest.raises(AdapterLoadError, match=rf"{Q_KEY}.lora_E: file \(4, 1\) vs model \(2, 1\)"):
        PeftModel.from_pretrained(tiny_llama(), folder)


def test_a_file_for_another_model_is_refused(tmp_path: Path) -> None:
    folder = _saved(tmp_path)
    model = tiny_llama(hidden_size=32)
    with pytest.raises(AdapterLoadError, match=r"lora_A: file \(4, 16\) vs model \(4, 32\)"):
        PeftModel.from_pretrained(model, folder)
    assert not any("lora_" in name for name, _ in model.named_parameters()), "the model is handed back as it was"


def test_allocation_needs_the_gradients() -> None:
    """Called after zero_grad (set_to_none), the hook says what it lacks instead of using stale data."""
    model = get_peft_model(tiny_llama(), get_config("adalora", **FIELDS))
    with pytest.raises(RuntimeError, match=r"needs the gradient of model.layers.0.self_attn.q_proj.lora_A"):
        model.on_optimizer_step(1)

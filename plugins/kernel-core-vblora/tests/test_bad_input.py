"""Bad VB-LoRA input is refused naming the culprit: a field VB-LoRA does not have, an invalid
value, a module the bank's vector length does not divide, and a file whose tensors do not fit
the config or the model (refused before anything is half-loaded, naming the tensor)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kernel_core.errors import AdapterLoadError, InvalidAdapterConfigError
from kernel_core.peft import PeftModel, get_config, get_peft_model
from kernel_core_sdk.peft_oracle import edit_adapter_config, rewrite_adapter_tensors
from kernel_core_sdk.tiny_models import tiny_llama

FIELDS = {"r": 4, "num_vectors": 10, "vector_length": 8, "target_modules": ["q_proj", "down_proj"]}
LOGITS_A = "base_model.model.model.layers.0.mlp.down_proj.vblora_logits_A"


@pytest.mark.parametrize(
    ("fields", "culprit"),
    [({"rank_pattern": {"q_proj": 2}}, "rank_pattern"), ({"r": 0}, "r"), ({"topk": 0}, "topk"), ({"topk": 11}, "topk"),
     ({"num_vectors": -1}, "num_vectors"), ({"vector_length": "long"}, "vector_length"), ({"vblora_dropout": 1.0}, "vblora_dropout"),
     ({"bias": "lora_only"}, "bias"), ({"save_only_topk_weights": "maybe"}, "save_only_topk_weights"),
     ({"target_modules": "q_proj", "layers_to_transform": [0]}, "layers_to_transform")],
)
def test_fields_vblora_does_not_have_or_bad_values_are_named(fields: dict[str, object], culprit: str) -> None:
    with pytest.raises(InvalidAdapterConfigError, match=rf"invalid VBLoRAConfig:.*{culprit}"):
        get_config("vblora", **(FIELDS | fields))


def test_a_module_the_vector_length_does_not_divide_is_named() -> None:
    with pytest.raises(ValueError, match=r"'model\.layers\.0\.self_attn\.k_proj': its out_features 8 is not a multiple of vector_length 16"):
        get_peft_model(tiny_llama(), get_config("vblora", **(FIELDS | {"vector_length": 16, "target_modules": ["k_proj"]})))


def _saved(folder: Path, **fields: object) -> Path:
    get_peft_model(tiny_llama(), get_config("vblora", **(FIELDS | fields))).save_pretrained(folder)
    return folder


def test_a_tensor_of_the_wrong_shape_is_named(tmp_path: Path) -> None:
    folder = _saved(tmp_path)
    rewrite_adapter_tensors(folder, lambda tensors: tensors.update({LOGITS_A: torch.zeros(4, 2, 10)}))
    with pytest.raises(AdapterLoadError, match=rf"{LOGITS_A}: file \(4, 2, 10\) vs model \(4, 4, 10\)"):
        PeftModel.from_pretrained(tiny_llama(), folder)


def test_a_config_whose_bank_does_not_fit_the_file_is_refused(tmp_path: Path) -> None:
    folder = _saved(tmp_path)
    edit_adapter_config(folder, vector_length=4)
    with pytest.raises(AdapterLoadError, match=r"base_model\.vblora_vector_bank: file \(10, 8\) vs model \(10, 4\)"):
        PeftModel.from_pretrained(tiny_llama(), folder)


def test_a_file_without_its_bank_is_refused(tmp_path: Path) -> None:
    folder = _saved(tmp_path)
    rewrite_adapter_tensors(folder, lambda tensors: tensors.pop("base_model.vblora_vector_bank"))
    model = tiny_llama()
    with pytest.raises(AdapterLoadError, match=r"missing from the file: base_model\.vblora_vector_bank"):
        PeftModel.from_pretrained(model, folder)
    assert not any("vblora" in name for name, _ in model.named_parameters()), "the model is handed back as it was"


def test_a_topk_index_outside_the_bank_is_named(tmp_path: Path) -> None:
    folder = _saved(tmp_path, save_only_topk_weights=True)
    key = LOGITS_A + "_topk_indices"
    rewrite_adapter_tensors(folder, lambda tensors: tensors[key].view(-1).__setitem__(0, 10))
    with pytest.raises(AdapterLoadError, match=rf"{key}: index 10 outside the bank of num_vectors=10"):
        PeftModel.from_pretrained(tiny_llama(), folder)


def test_topk_tensors_that_do_not_fit_the_config_are_named(tmp_path: Path) -> None:
    folder = _saved(tmp_path, save_only_topk_weights=True)
    edit_adapter_config(folder, topk=3)
    with pytest.raises(AdapterLoadError, match=r"vblora_logits_A_topk_indices \(4, 4, 2\) and .* do not hold topk=3"):
        PeftModel.from_pretrained(tiny_llama(), folder)

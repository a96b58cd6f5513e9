"""Bad VeRA input is refused naming the culprit: a field VeRA does not have, an invalid value, a
second adapter drawing from another projection key, and a file whose tensors do not fit the
config or the model (refused before anything is half-loaded, naming the tensor)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kernel_core.errors import AdapterLoadError, InvalidAdapterConfigError
from kernel_core.peft import PeftModel, get_config, get_peft_model
from kernel_core_sdk.peft_oracle import edit_adapter_config, rewrite_adapter_tensors
from kernel_core_sdk.tiny_models import tiny_llama

FIELDS = {"r": 4, "target_modules": ["q_proj", "down_proj"]}
LAMBDA_B = "base_model.model.model.layers.0.mlp.down_proj.vera_lambda_b"


@pytest.mark.parametrize(
    ("fields", "culprit"),
    [({"exclude_modules": ["k_proj"]}, "exclude_modules"), ({"r": 0}, "r"), ({"vera_dropout": 1.0}, "vera_dropout"),
     ({"bias": "lora_only"}, "bias"), ({"save_projection": "maybe"}, "save_projection"),
     ({"projection_prng_key": 1.5}, "projection_prng_key"), ({"d_initial": "small"}, "d_initial"),
     ({"target_modules": "q_proj", "layers_to_transform": [0]}, "layers_to_transform")],
)
def test_fields_vera_does_not_have_or_bad_values_are_named(fields: dict[str, object], culprit: str) -> None:
    with pytest.raises(InvalidAdapterConfigError, match=rf"invalid VeraConfig:.*{culprit}"):
        get_config("vera", **(FIELDS | fields))


def test_a_second_adapter_with_another_projection_key_is_refused() -> None:
    model = get_peft_model(tiny_llama(), get_config("vera", **FIELDS))
    with pytest.raises(ValueError, match="projection_prng_key 1 differs from adapter 'default'"):
        model.add_adapter("other", get_config("vera", **FIELDS, projection_prng_key=1))


def _saved(folder: Path) -> Path:
    get_peft_model(tiny_llama(), get_config("vera", **FIELDS)).save_pretrained(folder)
    return folder


def test_a_tensor_of_the_wrong_shape_is_named(tmp_path: Path) -> None:
    folder = _saved(tmp_path)
    rewrite_adapter_tensors(folder, lambda tensors: tensors.update({LAMBDA_B: torch.ones(32)}))
    with pytest.raises(AdapterLoadError, match=rf"{LAMBDA_B}: file \(32,\) vs model \(16,\)"):
        PeftModel.from_pretrained(tiny_llama(), folder)


def test_a_config_whose_rank_does_not_fit_its_projections_is_refused(tmp_path: Path) -> None:
    folder = _saved(tmp_path)
    edit_adapter_config(folder, r=8)
    with pytest.raises(AdapterLoadError, match=r"base_model\.vera_A: file \(4, 32\) vs model \(8, 32\)"):
        PeftModel.from_pretrained(tiny_llama(), folder)


def test_a_file_without_the_projections_it_says_it_has_is_refused(tmp_path: Path) -> None:
    folder = _saved(tmp_path)
    rewrite_adapter_tensors(folder, lambda tensors: tensors.pop("base_model.vera_B"))
    with pytest.raises(AdapterLoadError, match=r"missing from the file: base_model\.vera_B"):
        PeftModel.from_pretrained(tiny_llama(), folder)


def test_a_file_for_another_model_is_refused(tmp_path: Path) -> None:
    folder = _saved(tmp_path)
    model = tiny_llama(intermediate_size=48)
    with pytest.raises(AdapterLoadError, match=r"base_model\.vera_A: file \(4, 32\) vs model \(4, 48\)"):
        PeftModel.from_pretrained(model, folder)
    assert not any("vera" in name for name, _ in model.named_parameters()), "the model is handed back as it was"

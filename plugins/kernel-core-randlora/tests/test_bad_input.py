"""Bad RandLoRA input is refused naming the culprit: a field RandLoRA does not have, an invalid
value, a second adapter drawing from another key or saving its bases where the first does not,
and a file whose tensors do not fit the config or the model (refused before anything is
half-loaded, naming the tensor)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kernel_core.errors import AdapterLoadError, InvalidAdapterConfigError
from kernel_core.peft import PeftModel, get_config, get_peft_model
from kernel_core_sdk.peft_oracle import edit_adapter_config, rewrite_adapter_tensors
from kernel_core_sdk.tiny_models import tiny_llama

FIELDS = {"r": 4, "target_modules": ["q_proj", "down_proj"]}
LAMBDA = "base_model.model.model.layers.0.mlp.down_proj.randlora_lambda"


@pytest.mark.parametrize(
    ("fields", "culprit"),
    [({"exclude_modules": ["k_proj"]}, "exclude_modules"), ({"r": 0}, "r"), ({"randlora_dropout": 1.0}, "randlora_dropout"),
     ({"bias": "lora_only"}, "bias"), ({"save_projection": "maybe"}, "save_projection"), ({"sparse": "maybe"}, "sparse"),
     ({"projection_prng_key": 1.5}, "projection_prng_key"), ({"randlora_alpha": "big"}, "randlora_alpha"),
     ({"target_modules": "q_proj", "layers_to_transform": [0]}, "layers_to_transform")],
)
def test_fields_randlora_does_not_have_or_bad_values_are_named(fields: dict[str, object], culprit: str) -> None:
    with pytest.raises(InvalidAdapterConfigError, match=rf"invalid RandLoraConfig:.*{culprit}"):
        get_config("randlora", **(FIELDS | fields))


@pytest.mark.parametrize(
    ("fields", "message"),
    [({"projection_prng_key": 1}, "projection_prng_key 1 differs from adapter 'default'"),
     ({"save_projection": False}, "save_projection False differs from adapter 'default'"),
     ({"bias": "all"}, "bias='all' with another adapter")],
)
def test_a_second_adapter_that_cannot_share_the_bases_is_refused(fields: dict[str, object], message: str) -> None:
    model = get_peft_model(tiny_llama(), get_config("randlora", **FIELDS))
    with pytest.raises(ValueError, match=message):
        model.add_adapter("other", get_config("randlora", **(FIELDS | fields)))


def _saved(folder: Path) -> Path:
    get_peft_model(tiny_llama(), get_config("randlora", **FIELDS)).save_pretrained(folder)
    return folder


def test_a_tensor_of_the_wrong_shape_is_named(tmp_path: Path) -> None:
    folder = _saved(tmp_path)
    rewrite_adapter_tensors(folder, lambda tensors: tensors.update({LAMBDA: torch.ones(4, 5)}))
    with pytest.raises(AdapterLoadError, match=rf"{LAMBDA}: file \(4, 5\) vs model \(4, 4\)"):
        PeftModel.from_pretrained(tiny_llama(), folder)


def test_a_config_whose_rank_does_not_fit_its_bases_is_refused(tmp_path: Path) -> None:
    folder = _saved(tmp_path)
    edit_adapter_config(folder, r=8)
    with pytest.raises(AdapterLoadError, match=r"base_model\.randlora_A: file \(4, 1, 16\) vs model \(8, 1, 16\)"):
        PeftModel.from_pretrained(tiny_llama(), folder)


def test_a_file_without_the_bases_it_says_it_has_is_refused(tmp_path: Path) -> None:
    folder = _saved(tmp_path)
    rewrite_adapter_tensors(folder, lambda tensors: tensors.pop("base_model.randlora_B"))
    with pytest.raises(AdapterLoadError, match=r"missing from the file: base_model\.randlora_B"):
        PeftModel.from_pretrained(tiny_llama(), folder)


def test_a_file_for_another_model_is_refused(tmp_path: Path) -> None:
    folder = _saved(tmp_path)
    model = tiny_llama(intermediate_size=48)
    with pytest.raises(AdapterLoadError, match=r"base_model\.randlora_B: file \(32, 4, 4\) vs model \(48, 4, 4\)"):
        PeftModel.from_pretrained(model, folder)
    assert not any("randlora" in name for name, _ in model.named_parameters()), "the model is handed back as it was"

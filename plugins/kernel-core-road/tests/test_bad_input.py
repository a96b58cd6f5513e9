"""Bad RoAd input is refused naming the culprit: a field RoAd does not have (PEFT's RoAd has no
layer filters and no exclude_modules), a value out of range or of the wrong type, a group size a
layer cannot take, and a file whose tensors do not fit the config or the model (refused before
anything is half-loaded, naming the tensor)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kernel_core.errors import AdapterLoadError, InvalidAdapterConfigError
from kernel_core.peft import PeftModel, config_from_dict, get_config, get_peft_model
from kernel_core_sdk.peft_oracle import edit_adapter_config, rewrite_adapter_tensors
from kernel_core_sdk.tiny_models import tiny_llama

FIELDS = {"target_modules": ["k_proj", "up_proj"], "group_size": 4}
KEY = "base_model.model.model.layers.0.mlp.up_proj.road_theta"


@pytest.mark.parametrize(
    ("fields", "culprit"),
    [({"variant": "road_3"}, "variant"), ({"group_size": 3}, "group_size: Value error, must be even"),
     ({"group_size": 0}, "group_size"), ({"init_weights": "gaussian"}, "init_weights"),
     ({"exclude_modules": ["k_proj"]}, "exclude_modules"), ({"layers_to_transform": [0]}, "layers_to_transform"),
     ({"r": 8}, "r")],
)
def test_bad_fields_are_named(fields: dict[str, object], culprit: str) -> None:
    with pytest.raises(InvalidAdapterConfigError, match=rf"invalid RoadConfig: {culprit}"):
        get_config("road", **(FIELDS | fields))


def test_a_file_with_a_setting_road_does_not_know_warns_naming_it() -> None:
    with pytest.warns(UserWarning, match=r"ignoring .*layers_to_transform=\[0\]"):
        config_from_dict({"peft_type": "ROAD", **FIELDS, "layers_to_transform": [0]})


def test_a_group_size_a_layer_cannot_take_is_named() -> None:
    with pytest.raises(ValueError, match=r"RoAd on model\.layers\.0\.self_attn\.k_proj \(out_features=8\): group_size=16 does not divide"):
        get_peft_model(tiny_llama(), get_config("road", target_modules=["k_proj"], group_size=16))


def test_a_model_type_without_defaults_is_named() -> None:
    model = tiny_llama()
    model.config.model_type = "my_llama"
    with pytest.raises(InvalidAdapterConfigError, match=r"road has no default target_modules for model type 'my_llama'"):
        get_peft_model(model, get_config("road"))


def _saved(folder: Path) -> Path:
    get_peft_model(tiny_llama(), get_config("road", **FIELDS)).save_pretrained(folder)
    return folder


def test_a_tensor_of_the_wrong_shape_is_named(tmp_path: Path) -> None:
    folder = _saved(tmp_path)
    rewrite_adapter_tensors(folder, lambda tensors: tensors.update({KEY: torch.ones(17)}))
    with pytest.raises(AdapterLoadError, match=rf"{KEY}: file \(17,\) vs model \(16,\)"):
        PeftModel.from_pretrained(tiny_llama(), folder)


def test_a_config_that_does_not_fit_its_tensors_is_refused(tmp_path: Path) -> None:
    """The tensors were saved for road_1 (one angle per pair), but the config now says road_2."""
    folder = _saved(tmp_path)
    edit_adapter_config(folder, variant="road_2")
    with pytest.raises(AdapterLoadError, match=r"layers\.0\.mlp\.up_proj\.road_theta: file \(16,\) vs model \(32,\)"):
        PeftModel.from_pretrained(tiny_llama(), folder)


def test_a_file_for_another_model_is_refused(tmp_path: Path) -> None:
    folder = _saved(tmp_path)
    model = tiny_llama(intermediate_size=48)
    with pytest.raises(AdapterLoadError, match=rf"{KEY}: file \(16,\) vs model \(24,\)"):
        PeftModel.from_pretrained(model, folder)
    assert not any("road_" in name for name, _ in model.named_parameters()), "the model is handed back as it was"

"""Bad IA3 input is refused naming the culprit: a field IA3 does not have (LoRA's layer filters),
a value of the wrong type, feed-forward modules outside the targets, a model type without
defaults, and a file whose tensors do not fit the config or the model (refused before anything
is half-loaded, naming the tensor)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kernel_core.errors import AdapterLoadError, InvalidAdapterConfigError
from kernel_core.peft import PeftModel, config_from_dict, get_config, get_peft_model
from kernel_core_sdk.peft_oracle import edit_adapter_config, rewrite_adapter_tensors
from kernel_core_sdk.tiny_models import tiny_llama

FIELDS = {"target_modules": ["k_proj", "down_proj"], "feedforward_modules": ["down_proj"]}
FEEDFORWARD_KEY = "base_model.model.model.layers.0.mlp.down_proj.ia3_l"


@pytest.mark.parametrize(
    ("fields", "culprit"),
    [({"layers_to_transform": [0]}, "layers_to_transform"), ({"layers_pattern": "layers"}, "layers_pattern"),
     ({"r": 8}, "r"), ({"init_ia3_weights": "sometimes"}, "init_ia3_weights"), ({"feedforward_modules": 3}, "feedforward_modules")],
)
def test_fields_ia3_does_not_have_or_bad_values_are_named(fields: dict[str, object], culprit: str) -> None:
    with pytest.raises(InvalidAdapterConfigError, match=rf"invalid IA3Config: {culprit}"):
        get_config("ia3", **(FIELDS | fields))


def test_feedforward_modules_must_be_targets() -> None:
    with pytest.raises(InvalidAdapterConfigError, match=r"feedforward_modules \['up_proj'\] are not in target_modules"):
        get_config("ia3", target_modules=["k_proj"], feedforward_modules=["up_proj"])


def test_a_file_with_a_setting_ia3_does_not_know_warns_naming_it() -> None:
    data = {"peft_type": "IA3", **FIELDS, "layers_to_transform": [1]}
    with pytest.warns(UserWarning, match=r"ignoring .*layers_to_transform=\[1\]"):
        config_from_dict(data)


def test_a_model_type_without_defaults_is_named() -> None:
    model = tiny_llama()
    model.config.model_type = "my_llama"
    with pytest.raises(InvalidAdapterConfigError, match=r"ia3 has no default target_modules for model type 'my_llama'"):
        get_peft_model(model, get_config("ia3"))
    with pytest.raises(InvalidAdapterConfigError, match=r"ia3 has no default feedforward_modules for model type 'my_llama'"):
        get_peft_model(model, get_config("ia3", target_modules=["k_proj"]))
    assert get_peft_model(model, get_config("ia3", target_modules=["k_proj"], feedforward_modules=[]))


def _saved(folder: Path) -> Path:
    get_peft_model(tiny_llama(), get_config("ia3", **FIELDS)).save_pretrained(folder)
    return folder


def test_a_tensor_of_the_wrong_shape_is_named(tmp_path: Path) -> None:
    folder = _saved(tmp_path)
    rewrite_adapter_tensors(folder, lambda tensors: tensors.update({FEEDFORWARD_KEY: torch.ones(32, 1)}))
    with pytest.raises(AdapterLoadError, match=rf"{FEEDFORWARD_KEY}: file \(32, 1\) vs model \(1, 32\)"):
        PeftModel.from_pretrained(tiny_llama(), folder)


def test_a_config_that_does_not_fit_its_tensors_is_refused(tmp_path: Path) -> None:
    """down_proj saved as a feed-forward (input) scale, but the config now says output."""
    folder = _saved(tmp_path)
    edit_adapter_config(folder, feedforward_modules=[])
    with pytest.raises(AdapterLoadError, match=rf"{FEEDFORWARD_KEY}: file \(1, 32\) vs model \(16, 1\)"):
        PeftModel.from_pretrained(tiny_llama(), folder)


def test_a_file_for_another_model_is_refused(tmp_path: Path) -> None:
    folder = _saved(tmp_path)
    model = tiny_llama(intermediate_size=48)
    with pytest.raises(AdapterLoadError, match=rf"{FEEDFORWARD_KEY}: file \(1, 32\) vs model \(1, 48\)"):
        PeftModel.from_pretrained(model, folder)
    assert not any("ia3" in name for name, _ in model.named_parameters()), "the model is handed back as it was"

"""Bad HRA input is refused naming the culprit: a field HRA does not have, a value out of range
or of the wrong type, and a file whose tensors do not fit the config or the model (refused
before anything is half-loaded, naming the tensor)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kernel_core.errors import AdapterLoadError, InvalidAdapterConfigError
from kernel_core.peft import PeftModel, config_from_dict, get_config, get_peft_model
from kernel_core_sdk.peft_oracle import edit_adapter_config, rewrite_adapter_tensors
from kernel_core_sdk.tiny_models import tiny_llama

FIELDS = {"target_modules": ["k_proj", "down_proj"], "r": 4}
KEY = "base_model.model.model.layers.0.mlp.down_proj.hra_u"


@pytest.mark.parametrize(
    ("fields", "culprit"),
    [({"r": 0}, "r"), ({"r": "four"}, "r"), ({"apply_GS": "sometimes"}, "apply_GS"), ({"bias": "lora_only"}, "bias"),
     ({"init_weights": "gaussian"}, "init_weights"), ({"lora_alpha": 16}, "lora_alpha"),
     ({"layers_pattern": "layers"}, "<config>: .*layers_pattern needs layers_to_transform")],
)
def test_bad_fields_are_named(fields: dict[str, object], culprit: str) -> None:
    with pytest.raises(InvalidAdapterConfigError, match=rf"invalid HRAConfig: {culprit}"):
        get_config("hra", **(FIELDS | fields))


def test_a_file_with_a_setting_hra_does_not_know_warns_naming_it() -> None:
    with pytest.warns(UserWarning, match=r"ignoring .*coft=True"):
        config_from_dict({"peft_type": "HRA", **FIELDS, "coft": True})


def test_a_model_type_without_defaults_is_named() -> None:
    model = tiny_llama()
    model.config.model_type = "my_llama"
    with pytest.raises(InvalidAdapterConfigError, match=r"hra has no default target_modules for model type 'my_llama'"):
        get_peft_model(model, get_config("hra"))


def _saved(folder: Path) -> Path:
    get_peft_model(tiny_llama(), get_config("hra", **FIELDS)).save_pretrained(folder)
    return folder


def test_a_tensor_of_the_wrong_shape_is_named(tmp_path: Path) -> None:
    folder = _saved(tmp_path)
    rewrite_adapter_tensors(folder, lambda tensors: tensors.update({KEY: torch.ones(33, 4)}))
    with pytest.raises(AdapterLoadError, match=rf"{KEY}: file \(33, 4\) vs model \(32, 4\)"):
        PeftModel.from_pretrained(tiny_llama(), folder)


def test_a_config_that_does_not_fit_its_tensors_is_refused(tmp_path: Path) -> None:
    """The tensors were saved with 4 reflections, but the config now says 2."""
    folder = _saved(tmp_path)
    edit_adapter_config(folder, r=2)
    with pytest.raises(AdapterLoadError, match=r"layers\.0\.mlp\.down_proj\.hra_u: file \(32, 4\) vs model \(32, 2\)"):
        PeftModel.from_pretrained(tiny_llama(), folder)


def test_a_file_for_another_model_is_refused(tmp_path: Path) -> None:
    folder = _saved(tmp_path)
    model = tiny_llama(intermediate_size=48)
    with pytest.raises(AdapterLoadError, match=rf"{KEY}: file \(32, 4\) vs model \(48, 4\)"):
        PeftModel.from_pretrained(model, folder)
    assert not any("hra_" in name for name, _ in model.named_parameters()), "the model is handed back as it was"

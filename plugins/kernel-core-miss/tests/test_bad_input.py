"""Bad MiSS input is refused naming the culprit: a field MiSS does not have, a value out of range
or of the wrong type, a layout a layer cannot take, and a file whose tensors do not fit the
config or the model (refused before anything is half-loaded, naming the tensor)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kernel_core.errors import AdapterLoadError, InvalidAdapterConfigError
from kernel_core.peft import PeftModel, config_from_dict, get_config, get_peft_model
from kernel_core_sdk.peft_oracle import edit_adapter_config, rewrite_adapter_tensors
from kernel_core_sdk.tiny_models import tiny_llama

FIELDS = {"target_modules": ["k_proj", "up_proj"], "r": 4}
KEY = "base_model.model.model.layers.0.mlp.up_proj.miss_block"


@pytest.mark.parametrize(
    ("fields", "culprit"),
    [({"r": 0}, "r"), ({"miss_dropout": 1.0}, "miss_dropout"), ({"mini_r": 0}, "mini_r"),
     ({"init_weights": "lycoris"}, "init_weights"), ({"bias": "miss_only"}, "bias"), ({"lora_alpha": 16}, "lora_alpha"),
     ({"layers_pattern": "layers"}, "<config>: .*layers_pattern needs layers_to_transform")],
)
def test_bad_fields_are_named(fields: dict[str, object], culprit: str) -> None:
    with pytest.raises(InvalidAdapterConfigError, match=rf"invalid MissConfig: {culprit}"):
        get_config("miss", **(FIELDS | fields))


def test_a_file_with_a_setting_miss_does_not_know_warns_naming_it() -> None:
    with pytest.warns(UserWarning, match=r"ignoring .*apply_GS=True"):
        config_from_dict({"peft_type": "MISS", **FIELDS, "apply_GS": True})


def test_a_layout_a_layer_cannot_take_is_named() -> None:
    with pytest.raises(ValueError, match=r"MiSS on model\.layers\.0\.self_attn\.k_proj \(in_features=16, out_features=8\): "
                                         r"init_weights='bat' needs r=16 to divide both"):
        get_peft_model(tiny_llama(), get_config("miss", target_modules=["k_proj"], r=16, init_weights="bat"))


def test_a_model_type_without_defaults_is_named() -> None:
    model = tiny_llama()
    model.config.model_type = "my_llama"
    with pytest.raises(InvalidAdapterConfigError, match=r"miss has no default target_modules for model type 'my_llama'"):
        get_peft_model(model, get_config("miss"))


def _saved(folder: Path) -> Path:
    get_peft_model(tiny_llama(), get_config("miss", **FIELDS)).save_pretrained(folder)
    return folder


def test_a_tensor_of_the_wrong_shape_is_named(tmp_path: Path) -> None:
    folder = _saved(tmp_path)
    rewrite_adapter_tensors(folder, lambda tensors: tensors.update({KEY: torch.ones(4, 33)}))
    with pytest.raises(AdapterLoadError, match=rf"{KEY}: file \(4, 33\) vs model \(4, 32\)"):
        PeftModel.from_pretrained(tiny_llama(), folder)


def test_a_config_that_does_not_fit_its_tensors_is_refused(tmp_path: Path) -> None:
    """The tensors were saved for the balance variant, but the config now says mini."""
    folder = _saved(tmp_path)
    edit_adapter_config(folder, init_weights="mini", mini_r=2)
    with pytest.raises(AdapterLoadError, match=r"layers\.0\.mlp\.up_proj\.miss_block: file \(4, 32\) vs model \(4, 2\)"):
        PeftModel.from_pretrained(tiny_llama(), folder)


def test_a_file_for_another_model_is_refused(tmp_path: Path) -> None:
    folder = _saved(tmp_path)
    model = tiny_llama(intermediate_size=48)
    with pytest.raises(AdapterLoadError, match=rf"{KEY}: file \(4, 32\) vs model \(4, 48\)"):
        PeftModel.from_pretrained(model, folder)
    assert not any("miss_" in name for name, _ in model.named_parameters()), "the model is handed back as it was"

"""Bad SHiRA input is refused naming the culprit: a field SHiRA does not have, an invalid value,
more trained entries than a module's weight has (naming the module), and a file whose tensors do
not fit the config or the model (refused before anything is half-loaded, naming the tensor)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kernel_core.errors import AdapterLoadError, InvalidAdapterConfigError
from kernel_core.peft import PeftModel, get_config, get_peft_model
from kernel_core_sdk.peft_oracle import edit_adapter_config, rewrite_adapter_tensors
from kernel_core_sdk.tiny_models import tiny_llama

FIELDS = {"r": 2, "target_modules": ["q_proj", "down_proj"]}
LAYER = "base_model.model.model.layers.0.mlp.down_proj"


@pytest.mark.parametrize(
    ("fields", "culprit"),
    [({"layers_to_transform": [0]}, "layers_to_transform"), ({"exclude_modules": ["k_proj"]}, "exclude_modules"),
     ({"r": 0}, "r"), ({"mask_type": "magnitude"}, "mask_type"), ({"random_seed": 1.5}, "random_seed"),
     ({"init_weights": "maybe"}, "init_weights")],
)
def test_fields_shira_does_not_have_or_bad_values_are_named(fields: dict[str, object], culprit: str) -> None:
    with pytest.raises(InvalidAdapterConfigError, match=rf"invalid ShiraConfig:.*{culprit}"):
        get_config("shira", **(FIELDS | fields))


def test_more_entries_than_a_module_s_weight_has_are_named() -> None:
    with pytest.raises(ValueError, match=r"r 6 for model\.layers\.0\.self_attn\.k_proj: r \* \(in \+ out\) = 144 trained entries exceed the weight's out \* in = 8 \* 16 = 128"):
        get_peft_model(tiny_llama(), get_config("shira", r=6, target_modules=["q_proj", "k_proj"]))


def _saved(folder: Path) -> Path:
    get_peft_model(tiny_llama(), get_config("shira", **FIELDS)).save_pretrained(folder)
    return folder


@pytest.mark.parametrize(("container", "wrong", "expected"), [("shira_weight", (95,), (96,)), ("shira_indices", (2, 95), (2, 96))])
def test_a_tensor_of_the_wrong_shape_is_named(container: str, wrong: tuple[int, ...], expected: tuple[int, ...], tmp_path: Path) -> None:
    folder = _saved(tmp_path)
    key = f"{LAYER}.{container}"
    rewrite_adapter_tensors(folder, lambda tensors: tensors.update({key: torch.zeros(wrong, dtype=tensors[key].dtype)}))
    with pytest.raises(AdapterLoadError, match=rf"{key}: file \({', '.join(map(str, wrong))},?\) vs model \({', '.join(map(str, expected))},?\)"):
        PeftModel.from_pretrained(tiny_llama(), folder)


def test_a_config_that_does_not_fit_its_tensors_is_refused(tmp_path: Path) -> None:
    folder = _saved(tmp_path)
    edit_adapter_config(folder, r=3)
    with pytest.raises(AdapterLoadError, match=rf"{LAYER}\.shira_weight: file \(96,\) vs model \(144,\)"):
        PeftModel.from_pretrained(tiny_llama(), folder)


def test_a_file_for_another_model_is_refused(tmp_path: Path) -> None:
    folder = _saved(tmp_path)
    model = tiny_llama(intermediate_size=48)
    with pytest.raises(AdapterLoadError, match=rf"{LAYER}\.shira_indices: file \(2, 96\) vs model \(2, 128\)"):
        PeftModel.from_pretrained(model, folder)
    assert not any("shira" in name for name, _ in model.named_parameters()), "the model is handed back as it was"

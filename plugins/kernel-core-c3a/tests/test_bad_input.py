"""Bad C3A input is refused naming the culprit: a field C3A does not have, an invalid value, a
block size that does not divide a module's features (naming the module), and a file whose
tensors do not fit the config or the model (refused before anything is half-loaded, naming the
tensor)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kernel_core.errors import AdapterLoadError, InvalidAdapterConfigError
from kernel_core.peft import PeftModel, get_config, get_peft_model
from kernel_core_sdk.peft_oracle import edit_adapter_config, rewrite_adapter_tensors
from kernel_core_sdk.tiny_models import tiny_llama

FIELDS = {"block_size": 8, "target_modules": ["q_proj", "down_proj"]}
KERNEL = "base_model.model.model.layers.0.mlp.down_proj.c3a_kernel"


@pytest.mark.parametrize(
    ("fields", "culprit"),
    [({"exclude_modules": ["k_proj"]}, "exclude_modules"), ({"r": 8}, "r"), ({"block_size": 0}, "block_size"),
     ({"block_size_pattern": {"down_proj": "big"}}, "block_size_pattern"), ({"bias": "lora_only"}, "bias"),
     ({"init_weights": "orthogonal"}, "init_weights"), ({"target_modules": "q_proj", "layers_to_transform": [0]}, "layers_to_transform")],
)
def test_fields_c3a_does_not_have_or_bad_values_are_named(fields: dict[str, object], culprit: str) -> None:
    with pytest.raises(InvalidAdapterConfigError, match=rf"invalid C3AConfig:.*{culprit}"):
        get_config("c3a", **(FIELDS | fields))


@pytest.mark.parametrize("fields", [{"block_size": 3}, {"block_size_pattern": {"q_proj": 32}}])
def test_a_block_size_that_does_not_divide_a_module_is_named(fields: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=r"block_size \d+ for model\.layers\.0\.self_attn\.q_proj must divide its in_features 16 and out_features 16"):
        get_peft_model(tiny_llama(), get_config("c3a", **(FIELDS | fields)))


def _saved(folder: Path) -> Path:
    get_peft_model(tiny_llama(), get_config("c3a", **FIELDS)).save_pretrained(folder)
    return folder


def test_a_tensor_of_the_wrong_shape_is_named(tmp_path: Path) -> None:
    folder = _saved(tmp_path)
    rewrite_adapter_tensors(folder, lambda tensors: tensors.update({KERNEL: torch.ones(2, 4, 7)}))
    with pytest.raises(AdapterLoadError, match=rf"{KERNEL}: file \(2, 4, 7\) vs model \(2, 4, 8\)"):
        PeftModel.from_pretrained(tiny_llama(), folder)


def test_a_config_that_does_not_fit_its_tensors_is_refused(tmp_path: Path) -> None:
    folder = _saved(tmp_path)
    edit_adapter_config(folder, block_size_pattern={"down_proj": 4})
    with pytest.raises(AdapterLoadError, match=rf"{KERNEL}: file \(2, 4, 8\) vs model \(4, 8, 4\)"):
        PeftModel.from_pretrained(tiny_llama(), folder)


def test_a_file_for_another_model_is_refused(tmp_path: Path) -> None:
    folder = _saved(tmp_path)
    model = tiny_llama(intermediate_size=48)
    with pytest.raises(AdapterLoadError, match=rf"{KERNEL}: file \(2, 4, 8\) vs model \(2, 6, 8\)"):
        PeftModel.from_pretrained(model, folder)
    assert not any("c3a" in name for name, _ in model.named_parameters()), "the model is handed back as it was"

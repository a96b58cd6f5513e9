"""Bad BOFT input is refused naming the culprit: a field BOFT does not have, a value out of range
or of the wrong type, both or neither of the block size and count, a layout a layer cannot take
(naming the module), and a file whose tensors do not fit the config or the model (refused before
anything is half-loaded, naming the tensor)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kernel_core.errors import AdapterLoadError, InvalidAdapterConfigError
from kernel_core.peft import PeftModel, get_config, get_peft_model
from kernel_core_sdk.peft_oracle import edit_adapter_config, rewrite_adapter_tensors
from kernel_core_sdk.tiny_models import tiny_llama

FIELDS = {"target_modules": ["q_proj", "down_proj"], "boft_block_size": 4}
DOWN = "base_model.model.model.layers.0.mlp.down_proj"


@pytest.mark.parametrize(
    ("fields", "culprit"),
    [({"r": 8}, "r"), ({"boft_block_size": -4}, "boft_block_size"), ({"boft_n_butterfly_factor": 0}, "boft_n_butterfly_factor"),
     ({"boft_dropout": 1.0}, "boft_dropout"), ({"bias": "oft_only"}, "bias"), ({"init_weights": "sometimes"}, "init_weights")],
)
def test_fields_boft_does_not_have_or_bad_values_are_named(fields: dict[str, object], culprit: str) -> None:
    with pytest.raises(InvalidAdapterConfigError, match=rf"invalid BOFTConfig: {culprit}"):
        get_config("boft", **(FIELDS | fields))


@pytest.mark.parametrize(("block_size", "block_num"), [(0, 0), (4, 4)])
def test_exactly_one_of_block_size_and_num(block_size: int, block_num: int) -> None:
    with pytest.raises(InvalidAdapterConfigError, match=r"boft_block_size and boft_block_num: exactly one must be non-zero"):
        get_config("boft", target_modules=["q_proj"], boft_block_size=block_size, boft_block_num=block_num)


def test_a_layout_a_layer_cannot_take_names_the_layer() -> None:
    with pytest.raises(ValueError, match=r"BOFT on model\.layers\.0\.self_attn\.q_proj \(in_features=16\): boft_block_size=5"):
        get_peft_model(tiny_llama(), get_config("boft", target_modules=["q_proj"], boft_block_size=5))


def _saved(folder: Path, **fields: object) -> Path:
    get_peft_model(tiny_llama(), get_config("boft", **(FIELDS | fields))).save_pretrained(folder)
    return folder


def test_a_tensor_of_the_wrong_shape_is_named(tmp_path: Path) -> None:
    folder = _saved(tmp_path)
    rewrite_adapter_tensors(folder, lambda tensors: tensors.update({f"{DOWN}.boft_s": torch.ones(32, 1)}))
    with pytest.raises(AdapterLoadError, match=rf"{DOWN}.boft_s: file \(32, 1\) vs model \(16, 1\)"):
        PeftModel.from_pretrained(tiny_llama(), folder)


def test_a_config_that_does_not_fit_its_tensors_is_refused(tmp_path: Path) -> None:
    """One butterfly factor saved, two in the config now."""
    folder = _saved(tmp_path)
    edit_adapter_config(folder, boft_n_butterfly_factor=2)
    with pytest.raises(AdapterLoadError, match=rf"{DOWN}.boft_R: file \(1, 8, 4, 4\) vs model \(2, 8, 4, 4\)"):
        PeftModel.from_pretrained(tiny_llama(), folder)


def test_a_file_for_another_model_is_refused(tmp_path: Path) -> None:
    folder = _saved(tmp_path)
    model = tiny_llama(intermediate_size=48)
    with pytest.raises(AdapterLoadError, match=rf"{DOWN}.boft_R: file \(1, 8, 4, 4\) vs model \(1, 12, 4, 4\)"):
        PeftModel.from_pretrained(model, folder)
    assert not any("boft_" in name for name, _ in model.named_parameters()), "the model is handed back as it was"

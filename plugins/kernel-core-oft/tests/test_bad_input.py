"""Bad OFT input is refused naming the culprit: a field OFT does not have, a value out of range
or of the wrong type, both or neither of r and oft_block_size, and a file whose tensors do not fit
the config or the model (refused before anything is half-loaded, naming the tensor)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from kernel_core.errors import AdapterLoadError, InvalidAdapterConfigError
from kernel_core.peft import PeftModel, config_from_dict, get_config, get_peft_model
from kernel_core_sdk.peft_oracle import edit_adapter_config, rewrite_adapter_tensors
from kernel_core_sdk.tiny_models import tiny_llama

FIELDS = {"target_modules": ["q_proj", "down_proj"], "oft_block_size": 4}
DOWN_KEY = "base_model.model.model.layers.0.mlp.down_proj.oft_R.weight"


@pytest.mark.parametrize(
    ("fields", "culprit"),
    [({"lora_alpha": 8}, "lora_alpha"), ({"r": -1, "oft_block_size": 0}, "r"), ({"oft_block_size": -4}, "oft_block_size"),
     ({"module_dropout": 1.0}, "module_dropout"), ({"bias": "lora_only"}, "bias"), ({"eps": -1.0}, "eps"),
     ({"coft": "sometimes"}, "coft"), ({"num_cayley_neumann_terms": -1}, "num_cayley_neumann_terms"),
     ({"block_share": "yes please"}, "block_share")],
)
def test_fields_oft_does_not_have_or_bad_values_are_named(fields: dict[str, object], culprit: str) -> None:
    with pytest.raises(InvalidAdapterConfigError, match=rf"invalid OFTConfig: {culprit}"):
        get_config("oft", **(FIELDS | fields))


@pytest.mark.parametrize(("r", "block_size"), [(0, 0), (4, 8)])
def test_exactly_one_of_r_and_block_size(r: int, block_size: int) -> None:
    with pytest.raises(InvalidAdapterConfigError, match=r"r and oft_block_size: exactly one must be non-zero"):
        get_config("oft", target_modules=["q_proj"], r=r, oft_block_size=block_size)


def _saved(folder: Path, **fields: object) -> Path:
    get_peft_model(tiny_llama(), get_config("oft", **(FIELDS | fields))).save_pretrained(folder)
    return folder


def test_a_tensor_of_the_wrong_shape_is_named(tmp_path: Path) -> None:
    folder = _saved(tmp_path)
    rewrite_adapter_tensors(folder, lambda tensors: tensors.update({DOWN_KEY: torch.zeros(8, 3)}))
    with pytest.raises(AdapterLoadError, match=rf"{DOWN_KEY}: file \(8, 3\) vs model \(8, 6\)"):
        PeftModel.from_pretrained(tiny_llama(), folder)


def test_a_config_that_does_not_fit_its_tensors_is_refused(tmp_path: Path) -> None:
    """Blocks of 4 saved (down_proj: 8 blocks of 6 entries), but the config now says blocks of 8."""
    folder = _saved(tmp_path)
    edit_adapter_config(folder, oft_block_size=8)
    with pytest.raises(AdapterLoadError, match=rf"{DOWN_KEY}: file \(8, 6\) vs model \(4, 28\)"):
        PeftModel.from_pretrained(tiny_llama(), folder)


def test_a_shared_block_file_read_as_per_block_is_refused(tmp_path: Path) -> None:
    folder = _saved(tmp_path, block_share=True)
    edit_adapter_config(folder, block_share=False)
    with pytest.raises(AdapterLoadError, match=rf"{DOWN_KEY}: file \(1, 6\) vs model \(8, 6\)"):
        PeftModel.from_pretrained(tiny_llama(), folder)


def test_a_file_for_another_model_is_refused(tmp_path: Path) -> None:
    folder = _saved(tmp_path)
    model = tiny_llama(intermediate_size=48)
    with pytest.raises(AdapterLoadError, match=rf"{DOWN_KEY}: file \(8, 6\) vs model \(12, 6\)"):
        PeftModel.from_pretrained(model, folder)
    assert not any("oft_" in name for name, _ in model.named_parameters()), "the model is handed back as it was"


def test_a_block_size_that_does_not_divide_a_layer_warns_naming_it() -> None:
    with pytest.warns(UserWarning, match=r"oft_block_size=5 does not divide in_features=16; using 4"):
        get_peft_model(tiny_llama(), get_config("oft", target_modules=["q_proj"], oft_block_size=5))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        get_peft_model(tiny_llama(), get_config("oft", target_modules=["q_proj"], oft_block_size=8))


@pytest.mark.parametrize(("version", "warns"), [(None, True), ("0.17.1", True), ("0.18.0", False), ("0.21.2@abc", False)])
def test_a_neumann_file_from_peft_before_0_18_warns(version: str | None, warns: bool) -> None:
    data = {"peft_type": "OFT", **FIELDS, "use_cayley_neumann": True} | ({"peft_version": version} if version else {})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config_from_dict(data)
        config_from_dict(data | {"use_cayley_neumann": False})  # the exact transform did not change
    assert [str(w.message) for w in caught if "Neumann series changed" in str(w.message)] == (
        [f"OFT file with use_cayley_neumann from PEFT {version or 'before 0.18'}: the Neumann series changed in "
         "PEFT 0.18, so its rotations load as today's series computes them"] if warns else []
    )

"""Bad FourierFT input is refused naming the culprit: a field FourierFT does not have, an invalid
value, more coefficients than a module's weight has entries (naming the module), and a file whose
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

FIELDS = {"n_frequency": 30, "target_modules": ["q_proj", "down_proj"]}
SPECTRUM = "base_model.model.model.layers.0.mlp.down_proj.fourierft_spectrum"


@pytest.mark.parametrize(
    ("fields", "culprit"),
    [({"r": 8}, "r"), ({"n_frequency": 0}, "n_frequency"), ({"scaling": "high"}, "scaling"),
     ({"random_loc_seed": None}, "random_loc_seed"), ({"bias": "lora_only"}, "bias"),
     ({"n_frequency_pattern": {"down_proj": "many"}}, "n_frequency_pattern"),
     ({"target_modules": "q_proj", "layers_to_transform": [0]}, "layers_to_transform")],
)
def test_fields_fourierft_does_not_have_or_bad_values_are_named(fields: dict[str, object], culprit: str) -> None:
    with pytest.raises(InvalidAdapterConfigError, match=rf"invalid FourierFTConfig:.*{culprit}"):
        get_config("fourierft", **(FIELDS | fields))


@pytest.mark.parametrize("fields", [{"n_frequency": 257}, {"n_frequency_pattern": {"q_proj": 0}}])
def test_n_frequency_outside_a_module_s_weight_is_named(fields: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=r"n_frequency -?\d+ for model\.layers\.0\.self_attn\.q_proj must be between 1 and out \* in = 16 \* 16 = 256"):
        get_peft_model(tiny_llama(), get_config("fourierft", **(FIELDS | {"n_frequency": 30} | fields)))


def _saved(folder: Path) -> Path:
    get_peft_model(tiny_llama(), get_config("fourierft", **FIELDS)).save_pretrained(folder)
    return folder


def test_a_tensor_of_the_wrong_shape_is_named(tmp_path: Path) -> None:
    folder = _saved(tmp_path)
    rewrite_adapter_tensors(folder, lambda tensors: tensors.update({SPECTRUM: torch.ones(31)}))
    with pytest.raises(AdapterLoadError, match=rf"{SPECTRUM}: file \(31,\) vs model \(30,\)"):
        PeftModel.from_pretrained(tiny_llama(), folder)


def test_a_config_that_does_not_fit_its_tensors_is_refused(tmp_path: Path) -> None:
    folder = _saved(tmp_path)
    edit_adapter_config(folder, n_frequency_pattern={"down_proj": 12})
    with pytest.raises(AdapterLoadError, match=rf"{SPECTRUM}: file \(30,\) vs model \(12,\)"):
        PeftModel.from_pretrained(tiny_llama(), folder)


def test_a_file_for_another_model_is_refused(tmp_path: Path) -> None:
    """A coefficient count that fits the saved model but not this one's smaller weight."""
    folder = _saved(tmp_path)
    edit_adapter_config(folder, n_frequency=300, target_modules=["down_proj"])
    model = tiny_llama(intermediate_size=8)
    with pytest.raises(ValueError, match=r"n_frequency 300 for model\.layers\.0\.mlp\.down_proj must be between 1 and out \* in = 16 \* 8 = 128"):
        PeftModel.from_pretrained(model, folder)
    assert not any("fourierft" in name for name, _ in model.named_parameters()), "the model is handed back as it was"

"""Bad LoKr input is refused naming the culprit: a field LoKr does not have, a value out of
range or of the wrong type, and a file whose tensors do not fit the config or the model
(refused before anything is half-loaded, naming the tensor)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kernel_core.errors import AdapterLoadError, InvalidAdapterConfigError
from kernel_core.peft import PeftModel, config_from_dict, get_config, get_peft_model
from kernel_core_sdk.peft_oracle import edit_adapter_config, rewrite_adapter_tensors
from kernel_core_sdk.tiny_models import tiny_llama

# down_proj (16 x 32) splits as (4, 4) x (4, 8): W1 (4, 4) whole, W2 (4, 8) as a rank-1 product
FIELDS = {"target_modules": ["k_proj", "down_proj"], "r": 1}
DOWN = "base_model.model.model.layers.0.mlp.down_proj"


@pytest.mark.parametrize(
    ("fields", "culprit"),
    [({"r": 0}, "r"), ({"alpha": "big"}, "alpha"), ({"rank_dropout": 1.0}, "rank_dropout"),
     ({"module_dropout": -0.1}, "module_dropout"), ({"init_weights": "lora"}, "init_weights"),
     ({"decompose_factor": 0}, "decompose_factor"), ({"rank_dropout_scale": "sometimes"}, "rank_dropout_scale"),
     ({"rank_pattern": {"down_proj": 0}}, r"rank_pattern\.down_proj"), ({"use_tucker": True}, "use_tucker"),
     ({"lora_alpha": 16}, "lora_alpha"),
     ({"layers_pattern": "layers"}, "<config>: .*layers_pattern needs layers_to_transform")],
)
def test_bad_fields_are_named(fields: dict[str, object], culprit: str) -> None:
    with pytest.raises(InvalidAdapterConfigError, match=rf"invalid LoKrConfig: {culprit}"):
        get_config("lokr", **(FIELDS | fields))


def test_a_file_with_a_setting_lokr_does_not_know_warns_naming_it() -> None:
    with pytest.warns(UserWarning, match=r"ignoring .*use_tucker=True"):
        config_from_dict({"peft_type": "LOKR", **FIELDS, "use_tucker": True})


def test_a_model_type_without_defaults_is_named() -> None:
    model = tiny_llama()
    model.config.model_type = "my_llama"
    with pytest.raises(InvalidAdapterConfigError, match=r"lokr has no default target_modules for model type 'my_llama'"):
        get_peft_model(model, get_config("lokr"))


def _saved(folder: Path) -> Path:
    get_peft_model(tiny_llama(), get_config("lokr", **FIELDS)).save_pretrained(folder)
    return folder


def test_a_tensor_of_the_wrong_shape_is_named(tmp_path: Path) -> None:
    folder = _saved(tmp_path)
    rewrite_adapter_tensors(folder, lambda tensors: tensors.update({f"{DOWN}.lokr_w2_b": torch.ones(1, 9)}))
    with pytest.raises(AdapterLoadError, match=rf"{DOWN}.lokr_w2_b: file \(1, 9\) vs model \(1, 8\)"):
        PeftModel.from_pretrained(tiny_llama(), folder)


def test_a_config_that_does_not_fit_its_tensors_is_refused(tmp_path: Path) -> None:
    """The tensors were saved at rank 1, but the config now gives down_proj rank 2."""
    folder = _saved(tmp_path)
    edit_adapter_config(folder, rank_pattern={"down_proj": 2})
    with pytest.raises(AdapterLoadError, match=rf"{DOWN}.lokr_w2_a: file \(4, 1\) vs model \(4, 2\)"):
        PeftModel.from_pretrained(tiny_llama(), folder)


def test_a_file_for_another_model_is_refused(tmp_path: Path) -> None:
    folder = _saved(tmp_path)
    model = tiny_llama(intermediate_size=48)
    # 48 splits as (6, 8): W1 is (4, 6)
    with pytest.raises(AdapterLoadError, match=rf"{DOWN}.lokr_w1: file \(4, 4\) vs model \(4, 6\)"):
        PeftModel.from_pretrained(model, folder)
    assert not any("lokr_" in name for name, _ in model.named_parameters()), "the model is handed back as it was"

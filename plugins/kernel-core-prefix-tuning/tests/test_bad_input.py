"""Bad prefix-tuning input is refused naming the culprit: a field prefix tuning does not have, a
value of the wrong kind, target modules, gradient checkpointing, and a file whose table does not
fit the config or the model, or that holds other tensors."""

from __future__ import annotations

from pathlib import Path

import peft
import pytest
import torch

from kernel_core.errors import AdapterLoadError, InvalidAdapterConfigError
from kernel_core.peft import PeftModel, get_config, get_peft_model
from kernel_core_sdk.peft_oracle import edit_adapter_config, peft_made, rewrite_adapter_tensors
from kernel_core_sdk.tiny_models import tiny_llama


@pytest.mark.parametrize(
    ("fields", "culprit"),
    [({"r": 8}, "r"), ({"num_virtual_tokens": -1}, "num_virtual_tokens"), ({"init_weights": "gaussian"}, "init_weights"),
     ({"encoder_hidden_size": 0}, "encoder_hidden_size"), ({"prefix_projection": "maybe"}, "prefix_projection"),
     ({"target_modules": ["k_proj"]}, "target_modules"), ({"num_transformer_submodules": 2}, "num_transformer_submodules")],
)
def test_bad_fields_are_named(fields: dict[str, object], culprit: str) -> None:
    with pytest.raises(InvalidAdapterConfigError, match=culprit):
        get_config("prefix-tuning", **({"num_virtual_tokens": 4} | fields))


def test_gradient_checkpointing_is_refused() -> None:
    model = tiny_llama()
    model.activation_checkpointing_enable()
    with pytest.raises(Exception, match="gradient checkpointing"):
        get_peft_model(model, get_config("prefix-tuning", num_virtual_tokens=4))


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    peft_made(tiny_llama, peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4), folder=tmp_path)
    return tmp_path


def test_a_table_of_the_wrong_shape_is_named(saved: Path) -> None:
    rewrite_adapter_tensors(saved, lambda tensors: tensors.update(prompt_embeddings=torch.zeros(4, 64)))
    with pytest.raises(AdapterLoadError, match=r"prompt_embeddings has shape \(4, 64\).*num_layers=2.*\(4, 32\)"):
        PeftModel.from_pretrained(tiny_llama(), saved)


def test_a_config_saved_for_another_model_is_named(saved: Path) -> None:
    edit_adapter_config(saved, num_layers=3)
    with pytest.raises(AdapterLoadError, match="prompt_embeddings has shape"):
        PeftModel.from_pretrained(tiny_llama(), saved)


def test_other_tensors_in_the_file_are_named(saved: Path) -> None:
    rewrite_adapter_tensors(saved, lambda tensors: tensors.update(past=tensors.pop("prompt_embeddings")))
    with pytest.raises(AdapterLoadError, match="past"):
        PeftModel.from_pretrained(tiny_llama(), saved)

"""Bad P-tuning input is refused naming the culprit: a field P-tuning does not have, a value of the
wrong kind, target modules, and a file whose table does not fit the config or the model."""

from __future__ import annotations

from pathlib import Path

import peft
import pytest
import torch

from kernel_core.errors import AdapterLoadError, InvalidAdapterConfigError
from kernel_core.peft import PeftModel, get_config
from kernel_core_sdk.peft_oracle import edit_adapter_config, peft_made, rewrite_adapter_tensors
from kernel_core_sdk.tiny_models import tiny_llama


@pytest.mark.parametrize(
    ("fields", "culprit"),
    [({"prefix_projection": True}, "prefix_projection"), ({"encoder_reparameterization_type": "GRU"}, "encoder_reparameterization_type"),
     ({"encoder_hidden_size": 0}, "encoder_hidden_size"), ({"encoder_num_layers": 0}, "encoder_num_layers"),
     ({"encoder_dropout": 1.5}, "encoder_dropout"), ({"target_modules": "all-linear"}, "target_modules")],
)
def test_bad_fields_are_named(fields: dict[str, object], culprit: str) -> None:
    with pytest.raises(InvalidAdapterConfigError, match=culprit):
        get_config("p-tuning", **({"num_virtual_tokens": 4} | fields))


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    peft_made(tiny_llama, peft.PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=4), folder=tmp_path)
    return tmp_path


def test_a_table_of_the_wrong_shape_is_named(saved: Path) -> None:
    rewrite_adapter_tensors(saved, lambda tensors: tensors.update(prompt_embeddings=torch.zeros(4, 12)))
    with pytest.raises(AdapterLoadError, match=r"prompt_embeddings has shape \(4, 12\).*token_dim=16.*\(4, 16\)"):
        PeftModel.from_pretrained(tiny_llama(), saved)


def test_a_config_that_does_not_fit_the_file_is_named(saved: Path) -> None:
    edit_adapter_config(saved, num_virtual_tokens=6)
    with pytest.raises(AdapterLoadError, match=r"prompt_embeddings has shape \(4, 16\)"):
        PeftModel.from_pretrained(tiny_llama(), saved)

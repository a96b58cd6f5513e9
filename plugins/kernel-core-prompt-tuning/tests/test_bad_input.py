"""Bad prompt-tuning input is refused naming the culprit: a field prompt tuning does not have, a
value of the wrong kind, TEXT init without its text or tokenizer, target modules, and a file whose
table does not fit the config or the model, or that holds other tensors."""

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
    [({"r": 8}, "r"), ({"num_virtual_tokens": 0}, "num_virtual_tokens"), ({"prompt_tuning_init": "ZEROS"}, "prompt_tuning_init"),
     ({"target_modules": ["q_proj"]}, "target_modules"), ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
     ({"prompt_tuning_init": "TEXT", "prompt_tuning_init_text": "w1"}, "tokenizer_name_or_path"),
     ({"prompt_tuning_init": "TEXT", "tokenizer_name_or_path": "x"}, "prompt_tuning_init_text"),
     ({"tokenizer_kwargs": {"use_fast": True}}, "tokenizer_kwargs"), ({"task_type": "SEQ_CLS"}, "task_type")],
)
def test_bad_fields_are_named(fields: dict[str, object], culprit: str) -> None:
    with pytest.raises(InvalidAdapterConfigError, match=culprit):
        get_config("prompt-tuning", **({"num_virtual_tokens": 4} | fields))


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    peft_made(tiny_llama, peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4), folder=tmp_path)
    return tmp_path


def test_a_table_of_the_wrong_shape_is_named(saved: Path) -> None:
    rewrite_adapter_tensors(saved, lambda tensors: tensors.update(prompt_embeddings=torch.zeros(5, 16)))
    with pytest.raises(AdapterLoadError, match=r"prompt_embeddings has shape \(5, 16\).*num_virtual_tokens=4.*\(4, 16\)"):
        PeftModel.from_pretrained(tiny_llama(), saved)


def test_a_config_that_does_not_fit_the_file_is_named(saved: Path) -> None:
    edit_adapter_config(saved, token_dim=32)
    with pytest.raises(AdapterLoadError, match="prompt_embeddings has shape"):
        PeftModel.from_pretrained(tiny_llama(), saved)


def test_other_tensors_in_the_file_are_named(saved: Path) -> None:
    rewrite_adapter_tensors(saved, lambda tensors: tensors.update(stray=torch.zeros(2)))
    with pytest.raises(AdapterLoadError, match="stray"):
        PeftModel.from_pretrained(tiny_llama(), saved)


def test_a_refused_file_leaves_the_model_as_it_was(saved: Path) -> None:
    rewrite_adapter_tensors(saved, lambda tensors: tensors.update(prompt_embeddings=torch.zeros(3, 16)))
    model = tiny_llama()
    with pytest.raises(AdapterLoadError):
        PeftModel.from_pretrained(model, saved)
    assert not any(name.startswith("prompt_encoder") for name, _ in model.named_modules())

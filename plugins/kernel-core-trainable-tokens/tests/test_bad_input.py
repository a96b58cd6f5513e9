"""Bad trainable-tokens input is refused naming the culprit: a field the method does not have, an
invalid value, a token index outside the vocabulary, adapters acting at once on one row, and a
file whose tensors do not fit the config or the model (refused before anything is half-loaded,
naming the tensor)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kernel_core.errors import AdapterLoadError, InvalidAdapterConfigError
from kernel_core.peft import PeftModel, get_config, get_peft_model
from kernel_core_sdk.peft_oracle import edit_adapter_config, rewrite_adapter_tensors
from kernel_core_sdk.tiny_models import tiny_llama

FIELDS = {"token_indices": [3, 7, 60]}
DELTA = "base_model.model.model.embed_tokens.trainable_tokens_delta"


@pytest.mark.parametrize(
    ("fields", "culprit"),
    [({"r": 4}, "r"), ({"modules_to_save": ["lm_head"]}, "modules_to_save"), ({"layers_to_transform": [0]}, "layers_to_transform"),
     ({"token_indices": [3, -1]}, "token_indices"), ({"token_indices": "3"}, "token_indices"),
     ({"token_indices": [3, 7, 3]}, r"token_indices: Value error, token indices \[3\] are listed more than once"),
     ({"init_weights": "maybe"}, "init_weights")],
)
def test_fields_the_method_does_not_have_or_bad_values_are_named(fields: dict[str, object], culprit: str) -> None:
    with pytest.raises(InvalidAdapterConfigError, match=rf"invalid TrainableTokensConfig:.*{culprit}"):
        get_config("trainable_tokens", **(FIELDS | fields))


def test_a_token_outside_the_vocabulary_is_named() -> None:
    model = tiny_llama()
    with pytest.raises(ValueError, match=r"token indices \[64, 99\] are outside the vocabulary of 'model\.embed_tokens' \(64 tokens\)"):
        get_peft_model(model, get_config("trainable_tokens", token_indices=[3, 64, 99]))


def test_adapters_merged_together_must_not_share_a_row() -> None:
    model = get_peft_model(tiny_llama(), get_config("trainable_tokens", **FIELDS))
    model.add_adapter("other", get_config("trainable_tokens", token_indices=[5, 60]))
    with pytest.raises(ValueError, match=r"adapter 'other' trains token indices \[60\] that another active or merged adapter"):
        model.merge_adapter(["default", "other"])


def _saved(folder: Path) -> Path:
    get_peft_model(tiny_llama(), get_config("trainable_tokens", **FIELDS)).save_pretrained(folder)
    return folder


def test_a_tensor_of_the_wrong_shape_is_named(tmp_path: Path) -> None:
    folder = _saved(tmp_path)
    rewrite_adapter_tensors(folder, lambda tensors: tensors.update({DELTA: torch.zeros(2, 16)}))
    with pytest.raises(AdapterLoadError, match=rf"{DELTA}: file \(2, 16\) vs model \(3, 16\)"):
        PeftModel.from_pretrained(tiny_llama(), folder)


def test_a_file_for_another_model_is_refused(tmp_path: Path) -> None:
    folder = _saved(tmp_path)
    model = tiny_llama(hidden_size=32, intermediate_size=48)
    with pytest.raises(AdapterLoadError, match=rf"{DELTA}: file \(3, 16\) vs model \(3, 32\)"):
        PeftModel.from_pretrained(model, folder)
    assert not any("trainable_tokens" in name for name, _ in model.named_parameters()), "the model is handed back as it was"


def test_a_config_naming_a_token_the_model_lacks_is_refused(tmp_path: Path) -> None:
    folder = _saved(tmp_path)
    edit_adapter_config(folder, token_indices=[3, 7, 64])
    with pytest.raises(ValueError, match=r"token indices \[64\] are outside the vocabulary"):
        PeftModel.from_pretrained(tiny_llama(), folder)


def test_a_head_tensor_for_an_untied_model_is_refused(tmp_path: Path) -> None:
    get_peft_model(tiny_llama(tie_word_embeddings=True), get_config("trainable_tokens", **FIELDS)).save_pretrained(tmp_path)
    with pytest.raises(AdapterLoadError, match=r"the model has no place for: base_model\.model\.lm_head\.trainable_tokens_delta"):
        PeftModel.from_pretrained(tiny_llama(), tmp_path)

"""Bad LayerNorm-tuning input is refused naming the culprit: a field, or a tensor whose shape
does not fit the model."""

from __future__ import annotations

from pathlib import Path

import pytest

from kernel_core.errors import AdapterLoadError, InvalidAdapterConfigError
from kernel_core.peft import PeftModel, get_config, get_peft_model
from kernel_core_sdk.peft_oracle import rewrite_adapter_tensors
from kernel_core_sdk.tiny_models import tiny_llama


def test_unknown_and_invalid_fields_name_the_field() -> None:
    with pytest.raises(InvalidAdapterConfigError, match="rank"):
        get_config("ln_tuning", rank=4)
    with pytest.raises(InvalidAdapterConfigError, match="exclude_modules"):
        get_config("ln_tuning", target_modules=["norm"], exclude_modules=5)


def test_a_tensor_of_the_wrong_shape_is_refused_by_name(tmp_path: Path) -> None:
    get_peft_model(tiny_llama(), get_config("ln_tuning")).save_pretrained(tmp_path)
    key = "base_model.model.model.norm.ln_tuning_layers.weight"
    rewrite_adapter_tensors(tmp_path, lambda tensors: tensors.update({key: tensors[key][:-1].clone()}))
    with pytest.raises(AdapterLoadError, match=key.replace(".", r"\.")):
        PeftModel.from_pretrained(tiny_llama(), tmp_path)

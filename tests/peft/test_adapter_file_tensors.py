"""``Tuner.adapter_file_tensors`` (plugin API 1.4, additive): what ``save_pretrained`` writes is
what the method's hook returns, given the adapter's tensors by file key; the default writes them
as they are (AdaLoRA uses it to save only the ranks its rank pattern kept). Its inverse,
``Tuner.adapter_tensors_from_file``, turns a file's tensors into those loaded (VB-LoRA's top-k
form back to logits); a ``ValueError`` there refuses the file, naming the folder."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from kernel_core.errors import AdapterLoadError
from kernel_core.peft import PeftModel, get_config, get_peft_model
from kernel_core_sdk.tiny_models import tiny_llama

A_KEY = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"


def _model() -> Any:
    return get_peft_model(tiny_llama(), get_config("lora", r=4, target_modules=["q_proj"]))


def test_the_default_writes_the_adapter_s_tensors(tmp_path: Path) -> None:
    model = _model()
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "adapter_model.safetensors")
    assert torch.equal(saved[A_KEY], model.get_base_model().model.layers[0].self_attn.q_proj.lora_A["default"].weight)


def test_the_hook_decides_what_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model()
    seen: dict[str, Any] = {}

    def first_rank_only(self: Any, peft_model: Any, adapter_name: str, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        seen.update(model=peft_model, adapter=adapter_name, keys=sorted(tensors))
        return {key: value[:1] if key.endswith("lora_A.weight") else value for key, value in tensors.items()}

    monkeypatch.setattr(type(model._methods["default"].tuner), "adapter_file_tensors", first_rank_only)
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "adapter_model.safetensors")
    assert seen["model"] is model and seen["adapter"] == "default" and A_KEY in seen["keys"]
    assert saved[A_KEY].shape == (1, 16) and sorted(saved) == seen["keys"]


def test_the_load_hook_decides_what_is_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model()
    model.save_pretrained(tmp_path)
    tuner_class = type(model._methods["default"].tuner)
    seen: dict[str, Any] = {}

    def doubled(self: Any, peft_model: Any, adapter_name: str, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        seen.update(config=peft_model.peft_config[adapter_name], adapter=adapter_name, keys=sorted(tensors))
        return {key: 2 * value if key == A_KEY else value for key, value in tensors.items()}

    monkeypatch.setattr(tuner_class, "adapter_tensors_from_file", doubled)
    loaded = PeftModel.from_pretrained(tiny_llama(), tmp_path, adapter_name="mine")
    assert seen["adapter"] == "mine" and seen["config"].r == 4 and A_KEY in seen["keys"]
    layer = loaded.get_base_model().model.layers[0].self_attn.q_proj
    assert torch.equal(layer.lora_A["mine"].weight, 2 * model.get_base_model().model.layers[0].self_attn.q_proj.lora_A["default"].weight)


def test_a_value_error_of_the_load_hook_refuses_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _model().save_pretrained(tmp_path)

    def refuse(self: Any, peft_model: Any, adapter_name: str, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise ValueError(f"{A_KEY} is not what this method writes")

    monkeypatch.setattr(type(_model()._methods["default"].tuner), "adapter_tensors_from_file", refuse)
    base = tiny_llama()
    with pytest.raises(AdapterLoadError, match=rf"cannot load adapter 'default' from {tmp_path}: {A_KEY} is not what"):
        PeftModel.from_pretrained(base, tmp_path)
    assert not any("lora" in name for name, _ in base.named_parameters()), "the model is handed back as it was"

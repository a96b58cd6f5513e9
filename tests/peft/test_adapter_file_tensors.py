"""``Tuner.adapter_file_tensors`` (plugin API 1.4, additive): what ``save_pretrained`` writes is
what the method's hook returns, given the adapter's tensors by file key; the default writes them
as they are (AdaLoRA uses it to save only the ranks its rank pattern kept)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from kernel_core.peft import get_config, get_peft_model
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

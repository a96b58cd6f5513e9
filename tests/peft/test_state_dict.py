"""PEFT's file format: key names, and every way a folder can be wrong, refused by name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from kernel_core.contracts.tuner import TunerLayer
from kernel_core.errors import AdapterLoadError
from kernel_core.peft import PeftModel, get_config, get_peft_model
from kernel_core.peft.state_dict import file_key, write_adapter
from kernel_core_sdk.tiny_models import tiny_llama


@pytest.mark.parametrize(
    ("key", "saved"),
    [("base_model.model.layers.0.q_proj.lora_A.default.weight", "base_model.model.layers.0.q_proj.lora_A.weight"),
     ("m.embed.lora_embedding_B.default", "m.embed.lora_embedding_B"),
     ("m.q_proj.lora_magnitude_vector.default", "m.q_proj.lora_magnitude_vector"),
     ("m.lm_head.modules_to_save.default.weight", "m.lm_head.weight"),
     ("m.q_proj.lora_A.other.weight", None), ("m.q_proj.base_layer.weight", None),
     ("m.lm_head.modules_to_save.other.weight", None)],
)
def test_file_keys_drop_the_adapter_name(key: str, saved: str | None) -> None:
    assert file_key(key, "default", "lora_") == saved


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    model = get_peft_model(tiny_llama(), get_config("lora", r=4, target_modules=["q_proj", "v_proj"]))
    model.save_pretrained(tmp_path)
    return tmp_path


def test_one_tensor_under_two_keys_is_written_twice(tmp_path: Path) -> None:
    """safetensors refuses tensors sharing memory; a file may hold one under two keys (trainable
    tokens on an embedding and the head tied to it, as PEFT writes them), so each is copied out."""
    rows = torch.arange(6.0).reshape(2, 3)
    write_adapter(tmp_path, {"peft_type": "X"}, {"m.embed.delta": rows, "m.head.delta": rows, "m.other": rows[1]})
    written = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert all(torch.equal(written[key], value) for key, value in (("m.embed.delta", rows), ("m.head.delta", rows), ("m.other", rows[1])))


def test_saved_folder_has_peft_names(saved: Path) -> None:
    assert sorted(p.name for p in saved.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    keys = load_file(saved / "adapter_model.safetensors")
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in keys and len(keys) == 8
    config = json.loads((saved / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["inference_mode"] is True


def test_several_adapters_save_in_subfolders(tmp_path: Path) -> None:
    model = get_peft_model(tiny_llama(), get_config("lora", target_modules=["q_proj"]))
    model.add_adapter("other", get_config("lora", r=2, target_modules=["v_proj"]))
    model.save_pretrained(tmp_path)
    assert (tmp_path / "adapter_model.safetensors").is_file() and (tmp_path / "other" / "adapter_config.json").is_file()
    model.load_adapter(tmp_path / "other", "again")
    assert model.peft_config["again"].r == 2 and model.active_adapter == "default"


def _unwrapped(model: torch.nn.Module) -> bool:
    return not any(isinstance(module, TunerLayer) for module in model.modules())


def test_adapter_for_another_base_model_names_each_tensor(saved: Path) -> None:
    other = tiny_llama(hidden_size=32, intermediate_size=64)
    with pytest.raises(AdapterLoadError, match=r"shape mismatch .*q_proj\.lora_A\.weight: file \(4, 16\) vs model \(4, 32\)"):
        PeftModel.from_pretrained(other, saved)
    assert _unwrapped(other), "a failed load must hand the base model back untouched"


def test_missing_and_stray_tensors_are_refused(saved: Path) -> None:
    weights = saved / "adapter_model.safetensors"
    tensors = load_file(weights)
    key = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"
    tensors["base_model.model.model.layers.9.self_attn.q_proj.lora_A.weight"] = tensors.pop(key)
    save_file(tensors, weights)
    with pytest.raises(AdapterLoadError, match=r"1 tensor\(s\) the model has no place for: .*layers\.9.*\| 1 adapter tensor\(s\) missing .*layers\.1\.self_attn\.v_proj\.lora_B"):
        PeftModel.from_pretrained(tiny_llama(), saved)


def test_failed_load_adapter_leaves_the_model_as_it_was(saved: Path) -> None:
    model = get_peft_model(tiny_llama(), get_config("lora", target_modules=["k_proj"]))
    (saved / "adapter_model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(AdapterLoadError, match="not a readable safetensors file"):
        model.load_adapter(saved, "broken")
    assert list(model.peft_config) == ["default"]
    assert not any(".broken." in name for name, _ in model.named_parameters())


@pytest.mark.parametrize(
    ("damage", "message"),
    [(lambda f: (f / "adapter_model.safetensors").unlink(), "has no adapter_model.safetensors"),
     (lambda f: (f / "adapter_config.json").unlink(), "has no adapter_config.json"),
     (lambda f: (f / "adapter_config.json").write_text("{oops"), "is not valid JSON"),
     (lambda f: (f / "adapter_config.json").write_bytes(b"\xff\xfe\x00garbage"), "is not valid JSON"),
     (lambda f: (f / "adapter_config.json").write_text("[1]"), "must hold a JSON object")],
)
def test_broken_folders(saved: Path, damage: object, message: str) -> None:
    damage(saved)  # type: ignore[operator]
    with pytest.raises(AdapterLoadError, match=message):
        PeftModel.from_pretrained(tiny_llama(), saved)


def test_a_config_that_cannot_be_read_is_named(saved: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Removed or made unreadable between the checks and the read (a folder deleted under a
    running server): an AdapterLoadError naming the file, not a bare OSError."""
    def unreadable(self: Path, *args: object, **kwargs: object) -> str:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_text", unreadable)
    with pytest.raises(AdapterLoadError, match=r"adapter_config\.json' cannot be read: .*Permission denied"):
        PeftModel.from_pretrained(tiny_llama(), saved)


def test_pickle_is_refused(saved: Path) -> None:
    (saved / "adapter_model.safetensors").rename(saved / "adapter_model.bin")
    with pytest.raises(AdapterLoadError, match=r"adapter_model\.bin' is a pickle file, .* is refused"):
        PeftModel.from_pretrained(tiny_llama(), saved)


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(AdapterLoadError, match="does not exist"):
        PeftModel.from_pretrained(tiny_llama(), tmp_path / "nowhere")

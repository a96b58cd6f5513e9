"""resolve_model: known ids, HF folders, and errors that name what was wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from kernel_core.errors import InvalidModelFolderError, KernelCoreError, ModelNotFoundError
from kernel_core.models import EMBEDDED_MODEL_ID, resolve_model


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Relative names resolve inside an empty folder; nothing touches the user's cache."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KERNEL_CORE_CACHE", str(tmp_path / "cache"))


def _folder(tmp_path: Path, *files: str) -> Path:
    folder = tmp_path / "my-model"
    folder.mkdir()
    for name in files:
        (folder / name).write_bytes(b"{}")
    return folder


def test_hf_folder_resolves_to_its_absolute_path(tmp_path: Path) -> None:
    folder = _folder(tmp_path, "config.json", "model-00001-of-00002.safetensors")
    assert resolve_model(folder) == folder.resolve()
    assert resolve_model("my-model") == folder.resolve()


def test_unknown_id_names_it_and_lists_known_ids() -> None:
    with pytest.raises(ModelNotFoundError) as error:
        resolve_model("llama-9000")
    message = str(error.value)
    assert "'llama-9000'" in message
    assert "neither a known model id nor an existing folder" in message
    assert EMBEDDED_MODEL_ID in message
    assert isinstance(error.value, KernelCoreError) and isinstance(error.value, ValueError)


def test_a_path_object_is_never_taken_as_an_id() -> None:
    with pytest.raises(ModelNotFoundError, match=EMBEDDED_MODEL_ID):
        resolve_model(Path(EMBEDDED_MODEL_ID))


def test_folder_without_config_json_is_named(tmp_path: Path) -> None:
    folder = _folder(tmp_path, "model.safetensors")
    with pytest.raises(InvalidModelFolderError) as error:
        resolve_model(folder)
    assert str(folder) in str(error.value) and "no config.json" in str(error.value)
    assert isinstance(error.value, KernelCoreError) and isinstance(error.value, ValueError)


def test_pickled_weights_are_refused(tmp_path: Path) -> None:
    folder = _folder(tmp_path, "config.json", "pytorch_model.bin")
    with pytest.raises(InvalidModelFolderError) as error:
        resolve_model(folder)
    message = str(error.value)
    assert str(folder) in message
    assert "pytorch_model.bin" in message and "only safetensors" in message


def test_a_file_is_not_a_model_folder(tmp_path: Path) -> None:
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"")
    with pytest.raises(InvalidModelFolderError, match="not a folder"):
        resolve_model(weights)


def test_embedded_id_is_case_insensitive(embedded_model: Path) -> None:
    assert resolve_model("SmolLM2-135M-Instruct") == embedded_model
    assert resolve_model(EMBEDDED_MODEL_ID) == embedded_model


def test_converted_embedded_folder_passes_folder_checks(embedded_model: Path) -> None:
    assert resolve_model(embedded_model) == embedded_model.resolve()

"""PEFT's on-disk format: ``adapter_config.json`` + ``adapter_model.safetensors``.

In the model an adapter's tensors sit in containers keyed by adapter name
(``...q_proj.lora_A.default.weight``, ``...lm_head.modules_to_save.default.weight``); the file
drops the adapter-name segment (``...q_proj.lora_A.weight``, ``...lm_head.weight``). Base
parameters a method trains (biases) are stored under their own names. Only safetensors are read:
pickled weights are refused. Writes are crash-safe (:func:`write_adapter`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from kernel_core.atomic import atomic_files
from kernel_core.errors import AdapterLoadError

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PICKLE_NAMES = ("adapter_model.bin", "adapter_model.pt", "adapter_model.pth")
MODULES_TO_SAVE = "modules_to_save"


def file_key(model_key: str, adapter_name: str, prefix: str) -> str | None:
    """The PEFT file key of a model state-dict key, or None when the key is not one of
    ``adapter_name``'s tensors (another adapter's, or a base weight). The adapter name, unique in
    a model, decides whose tensor it is; ``prefix`` only finds the container segment, so methods
    sharing a prefix in a mixed model (AdaLoRA and LoRA: ``lora_``) keep to their own tensors."""
    parts = model_key.split(".")
    for index in range(len(parts) - 1):
        container, name = parts[index], parts[index + 1]
        if container == MODULES_TO_SAVE:
            return ".".join(parts[:index] + parts[index + 2 :]) if name == adapter_name else None
        if container.startswith(prefix):
            return ".".join(_module_path(parts[:index]) + parts[index : index + 1] + parts[index + 2 :]) if name == adapter_name else None
    return None


def _module_path(parts: list[str]) -> list[str]:
    """The module's path without the ``base_layer`` segments a mixed model's stacked layers add
    (``q_proj.base_layer.hada_w1_a``: the inner method's container), so that each adapter's file
    keys are what that method alone writes."""
    while parts and parts[-1] == "base_layer":
        parts = parts[:-1]
    return parts


def adapter_tensors(model: nn.Module, adapter_name: str, prefix: str, base_keys: Iterable[str] = ()) -> dict[str, torch.Tensor]:
    """File key -> tensor for one adapter of ``model``, plus the named trained base parameters."""
    state = model.state_dict()
    tensors = {}
    for key, value in state.items():
        saved = file_key(key, adapter_name, prefix)
        if saved is not None:
            tensors[saved] = value
    for key in base_keys:
        tensors[key] = state[key]
    return {key: value.detach().contiguous() for key, value in tensors.items()}


def load_adapter_tensors(model: nn.Module, adapter_name: str, prefix: str, tensors: Mapping[str, torch.Tensor], source: str) -> None:
    """Copy a file's tensors into ``model``'s adapter ``adapter_name``.

    Every tensor must land somewhere with the same shape, and every adapter tensor the model
    expects must be present; otherwise nothing is half-loaded and the error names each culprit.
    """
    state = model.state_dict()
    expected = {}
    for key in state:
        saved = file_key(key, adapter_name, prefix)
        if saved is not None:
            expected[saved] = key
    targets = {key: expected.get(key, key if key in state and file_key(key, adapter_name, prefix) is None else None) for key in tensors}
    unexpected = sorted(key for key, target in targets.items() if target is None)
    missing = sorted(set(expected) - set(tensors))
    mismatched = [
        f"{key}: file {tuple(tensors[key].shape)} vs model {tuple(state[target].shape)}"
        for key, target in targets.items()
        if target is not None and tensors[key].shape != state[target].shape
    ]
    problems = []
    if mismatched:
        problems.append("shape mismatch (was it saved for another base model?): " + "; ".join(mismatched))
    if unexpected:
        problems.append(f"{len(unexpected)} tensor(s) the model has no place for: {_some(unexpected)}")
    if missing:
        problems.append(f"{len(missing)} adapter tensor(s) missing from the file: {_some(missing)}")
    if problems:
        raise AdapterLoadError(f"cannot load adapter {adapter_name!r} from {source}: " + " | ".join(problems))
    with torch.no_grad():
        for key, target in targets.items():
            assert target is not None
            state[target].copy_(tensors[key])


def _some(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def write_adapter(folder: Path, config: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> None:
    """Write one adapter folder in PEFT's format, crash-safe: the config is the commit record, so a
    folder holding ``adapter_config.json`` always holds the weights saved with it (other files of
    the folder are left alone)."""
    with atomic_files(folder, commit=CONFIG_NAME) as staging:
        save_file(_unshared(tensors), str(staging / WEIGHTS_NAME), metadata={"format": "pt"})
        (staging / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _unshared(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``tensors`` with each one whose memory an earlier one uses copied: safetensors refuses
    tensors sharing memory, and a file may hold one tensor under two keys (trainable tokens on an
    embedding and the head tied to it, as PEFT writes them)."""
    seen: set[int] = set()
    unshared = {}
    for key, tensor in tensors.items():
        storage = tensor.untyped_storage().data_ptr()
        unshared[key] = tensor.clone() if storage in seen and tensor.numel() else tensor
        seen.add(storage)
    return unshared


def read_adapter(folder: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read one PEFT-format adapter folder: its config dict and its tensors (on CPU)."""
    path = Path(folder)
    if not path.is_dir():
        raise AdapterLoadError(f"adapter folder {str(path)!r} does not exist")
    config_path = path / CONFIG_NAME
    if not config_path.is_file():
        raise AdapterLoadError(f"{str(path)!r} has no {CONFIG_NAME}; is it a PEFT adapter folder?")
    weights = path / WEIGHTS_NAME
    if not weights.is_file():
        pickled = [name for name in PICKLE_NAMES if (path / name).exists()]
        if pickled:
            raise AdapterLoadError(
                f"{str(path / pickled[0])!r} is a pickle file, which can run code when loaded and is refused; "
                f"convert it to {WEIGHTS_NAME} with a tool you trust"
            )
        raise AdapterLoadError(f"{str(path)!r} has no {WEIGHTS_NAME}")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:  # garbage bytes are not even UTF-8
        raise AdapterLoadError(f"{str(config_path)!r} is not valid JSON: {exc}") from None
    except OSError as exc:  # removed or made unreadable since the checks above
        raise AdapterLoadError(f"{str(config_path)!r} cannot be read: {exc}") from None
    if not isinstance(config, dict):
        raise AdapterLoadError(f"{str(config_path)!r} must hold a JSON object")
    try:
        tensors = load_file(str(weights))
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types for a corrupt file
        raise AdapterLoadError(f"{str(weights)!r} is not a readable safetensors file: {exc}") from None
    return config, tensors

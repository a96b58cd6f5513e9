"""Training checkpoints, written without pickle so that loading one can never run code.

``DIR/checkpoint-<step>/`` holds:

- the adapter in PEFT format (``model.save_pretrained``: ``adapter_config.json`` +
  ``adapter_model.safetensors``), which the resumed run loads back as its trainable weights;
- ``training_state.safetensors``: every tensor of the optimizer state and the RNG states;
- ``training_state.json``: everything else: the step, the optimizer's param groups, the
  scheduler's and loss scaler's state, the run settings the trajectory depends on, the log so far,
  and where each tensor of the state sits in the nested structure.

Nested state (``optimizer.state_dict()`` and friends) is flattened by :func:`flatten`: tensors go to
the safetensors file under generated names, tuples and non-string-keyed dicts are tagged, so
:func:`unflatten` gives back an equal structure. A checkpoint is written into hidden staging and
renamed into place (:func:`kernel_core.atomic.atomic_folder`), so a run killed while saving never
leaves a half-written ``checkpoint-<step>``, and a full disk leaves the earlier checkpoints as they were.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from kernel_core.atomic import atomic_folder
from kernel_core.errors import CheckpointError

CHECKPOINT_PREFIX = "checkpoint-"
STATE_JSON = "training_state.json"
STATE_TENSORS = "training_state.safetensors"
FORMAT_VERSION = 1

_TENSOR, _TUPLE, _ITEMS = "__tensor__", "__tuple__", "__items__"
_CHECKPOINT_NAME = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")


# -- flattening nested state into JSON + named tensors -------------------------------------------


def flatten(value: Any, tensors: dict[str, torch.Tensor], prefix: str) -> Any:
    """A JSON-serialisable copy of ``value`` in which every tensor is replaced by a reference to
    its entry in ``tensors`` (added under a name starting with ``prefix``)."""
    if isinstance(value, torch.Tensor):
        name = f"{prefix}{len(tensors)}"
        tensors[name] = value.detach().to("cpu").contiguous().clone()
        return {_TENSOR: name}
    if isinstance(value, tuple):
        return {_TUPLE: [flatten(item, tensors, prefix) for item in value]}
    if isinstance(value, list):
        return [flatten(item, tensors, prefix) for item in value]
    if isinstance(value, Mapping):
        if all(isinstance(key, str) and key not in (_TENSOR, _TUPLE, _ITEMS) for key in value):
            return {key: flatten(item, tensors, prefix) for key, item in value.items()}
        return {_ITEMS: [[flatten(key, tensors, prefix), flatten(item, tensors, prefix)] for key, item in value.items()]}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise CheckpointError(f"cannot store a {type(value).__name__} in a checkpoint without pickle: {value!r}")


def _hashable(value: Any) -> Any:
    return tuple(_hashable(item) for item in value) if isinstance(value, list) else value


def unflatten(value: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """The structure :func:`flatten` was given, with tensors taken from ``tensors``."""
    if isinstance(value, list):
        return [unflatten(item, tensors) for item in value]
    if isinstance(value, dict):
        if _TENSOR in value:
            try:
                return tensors[value[_TENSOR]]
            except KeyError:
                raise CheckpointError(f"checkpoint tensor {value[_TENSOR]!r} is missing") from None
        if _TUPLE in value:
            return tuple(unflatten(item, tensors) for item in value[_TUPLE])
        if _ITEMS in value:
            return {_hashable(unflatten(k, tensors)): unflatten(v, tensors) for k, v in value[_ITEMS]}
        return {key: unflatten(item, tensors) for key, item in value.items()}
    return value


# -- RNG ------------------------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """Every random generator training draws from (dropout uses torch's), to restore on resume."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Put back what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- saving and loading ---------------------------------------------------------------------------


@dataclass
class TrainingState:
    """What a resumed run needs besides the adapter weights; see the module docstring."""

    step: int
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    scaler: dict[str, Any] | None
    rng: dict[str, Any]
    trainable_parameters: list[str]
    run: dict[str, Any] = field(default_factory=dict)
    log: list[dict[str, Any]] = field(default_factory=list)


def checkpoint_dir(output_dir: str | os.PathLike[str], step: int) -> Path:
    """Where the checkpoint of ``step`` lives."""
    return Path(output_dir) / f"{CHECKPOINT_PREFIX}{step}"


def save_checkpoint(
    output_dir: str | os.PathLike[str],
    state: TrainingState,
    save_adapter: Callable[[Path], None],
) -> Path:
    """Write ``checkpoint-<step>`` atomically: ``save_adapter(folder)`` writes the weights (for a
    PEFT model, ``model.save_pretrained``), then the training state is added beside them."""
    final = checkpoint_dir(output_dir, state.step)
    tensors: dict[str, torch.Tensor] = {}
    document = {
        "format": FORMAT_VERSION,
        "step": state.step,
        "optimizer": flatten(state.optimizer, tensors, "optimizer."),
        "scheduler": flatten(state.scheduler, tensors, "scheduler."),
        "scaler": flatten(state.scaler, tensors, "scaler."),
        "rng": flatten(state.rng, tensors, "rng."),
        "trainable_parameters": state.trainable_parameters,
        "run": state.run,
        "log": state.log,
    }
    with atomic_folder(final) as staging:
        save_adapter(staging)
        save_file(tensors, str(staging / STATE_TENSORS))
        (staging / STATE_JSON).write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    return final


def load_training_state(folder: str | os.PathLike[str]) -> TrainingState:
    """Read the training state of a checkpoint folder written by :func:`save_checkpoint`."""
    folder = Path(folder)
    json_path, tensor_path = folder / STATE_JSON, folder / STATE_TENSORS
    if not json_path.is_file() or not tensor_path.is_file():
        raise CheckpointError(f"{folder} is not a training checkpoint (no {STATE_JSON} and {STATE_TENSORS})")
    try:
        document = json.loads(json_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{json_path} is corrupt: {exc}") from None
    if document.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{json_path} has format {document.get('format')!r}; this kernel-core reads {FORMAT_VERSION}")
    tensors = load_file(str(tensor_path))
    return TrainingState(
        step=document["step"],
        optimizer=unflatten(document["optimizer"], tensors),
        scheduler=unflatten(document["scheduler"], tensors),
        scaler=unflatten(document["scaler"], tensors),
        rng=unflatten(document["rng"], tensors),
        trainable_parameters=document["trainable_parameters"],
        run=document.get("run", {}),
        log=document.get("log", []),
    )


def latest_checkpoint(output_dir: str | os.PathLike[str]) -> Path | None:
    """The complete checkpoint with the highest step under ``output_dir``, or ``None``."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    found = [
        (int(match.group(1)), path)
        for path in output_dir.iterdir()
        if (match := _CHECKPOINT_NAME.match(path.name)) and (path / STATE_JSON).is_file()
    ]
    return max(found)[1] if found else None

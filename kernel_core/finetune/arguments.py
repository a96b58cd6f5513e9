"""``TrainingArguments`` for ``kcore finetune``: kernel-core's defaults, then a JSON file, then the
dedicated flags, then ``--set key=value``, each layer over the one before, every key checked.

Every field of transformers' ``TrainingArguments`` is reachable, so nothing a user knows from their
own ``Trainer`` scripts is lost; a key that is not a field, or a value of the wrong type, fails
before the model loads with the key named (and the nearest field suggested), rather than deep
inside ``Trainer``.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import types
import typing
from collections.abc import Iterable, Mapping
from enum import Enum
from functools import cache
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from kernel_core.errors import KernelCoreError
from kernel_core.finetune.json_object import read_json_object

#: Keys kernel-core sets from its own options; a file or ``--set`` naming them is refused.
OWNED = {"output_dir": "--output"}


class TrainingArgumentsError(KernelCoreError):
    """A training argument that is unknown, mistyped or inconsistent; the message names it."""


def kcore_defaults() -> dict[str, Any]:
    """What ``kcore finetune`` changes from ``TrainingArguments``' own defaults, and why:
    a LoRA-sized learning rate and cosine decay, a loss logged every step (the curve ``loss.png``
    draws), no checkpoint unless asked, reports off unless asked, and the collator's columns kept."""
    return {
        "learning_rate": 2e-4,
        "per_device_train_batch_size": 4,
        "per_device_eval_batch_size": 4,
        "num_train_epochs": 1,
        "lr_scheduler_type": "cosine",
        "max_grad_norm": 1.0,
        "logging_steps": 1,
        "save_strategy": "no",
        "eval_strategy": "no",
        "report_to": "none",
        "include_num_input_tokens_seen": "non_padding",
        "remove_unused_columns": False,
        "dataloader_num_workers": 0,
        "ddp_find_unused_parameters": False,
        "seed": 0,
    }


@cache
def fields() -> dict[str, dataclasses.Field[Any]]:
    """Every settable ``TrainingArguments`` field by name (imports transformers: call lazily)."""
    from transformers import TrainingArguments

    return {field.name: field for field in dataclasses.fields(TrainingArguments) if field.init}


@cache
def _hints() -> dict[str, Any]:
    from transformers import TrainingArguments

    return typing.get_type_hints(TrainingArguments)


#: Fields whose annotation is narrower than what ``TrainingArguments`` takes: ``fsdp`` is typed
#: ``str | None`` for its command-line parser but means ``True`` or a legacy option string.
_ACCEPTS = {"fsdp": bool | str | list[str] | None}


@cache
def _adapter(name: str) -> TypeAdapter[Any]:
    return TypeAdapter(_ACCEPTS.get(name) or _enum_not_any_string(_hints()[name]))


def _enum_not_any_string(hint: Any) -> Any:
    """``SaveStrategy | str`` → ``SaveStrategy``: the field takes the enum's values as strings, and
    a string outside them is refused here, with the field named, rather than later without it."""
    if typing.get_origin(hint) not in (typing.Union, types.UnionType):
        return hint
    members = typing.get_args(hint)
    if any(isinstance(member, type) and issubclass(member, Enum) for member in members):
        members = tuple(member for member in members if member is not str)
    return typing.Union[members] if len(members) > 1 else members[0]  # noqa: UP007


def parse_set(items: Iterable[str]) -> dict[str, Any]:
    """``["key=value", ...]`` → ``{key: value}``; a value that reads as JSON (a number, true,
    a list, an object) is taken as such, anything else as a string."""
    result: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise TrainingArgumentsError(f"--set {item!r}: expected key=value, e.g. --set lr_scheduler_type=linear")
        try:
            result[key] = json.loads(text)
        except json.JSONDecodeError:
            result[key] = text
    return result


def read_file(path: Path) -> dict[str, Any]:
    """The object in a ``--training-args`` JSON file."""
    return read_json_object(path, "--training-args", "TrainingArguments fields", TrainingArgumentsError)


def check(values: Mapping[str, Any], source: str) -> dict[str, Any]:
    """``values`` with each value validated against its field's type (strings like ``"1e-4"``
    coerced); an unknown key or a wrong type raises, naming the key and ``source``."""
    known = fields()
    checked: dict[str, Any] = {}
    for key, value in values.items():
        if key in OWNED:
            raise TrainingArgumentsError(f"{source}: {key} is set by {OWNED[key]}, not here")
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise TrainingArgumentsError(
                f"{source}: {key!r} is not a TrainingArguments field{hint}; kcore finetune --list-training-args lists them"
            )
        try:
            checked[key] = _adapter(key).validate_python(value)
        except ValidationError as exc:
            problem = exc.errors()[0]["msg"] if exc.errors() else str(exc)
            raise TrainingArgumentsError(f"{source}: {key}={value!r} is invalid: {problem}") from None
    return checked


def build(output_dir: Path, layers: Iterable[tuple[str, Mapping[str, Any]]]) -> Any:
    """``TrainingArguments`` writing to ``output_dir``, from ``(source, values)`` layers, later ones
    winning; the combination is checked by ``TrainingArguments`` itself, its complaint reported
    with the layers' sources."""
    from transformers import TrainingArguments

    merged: dict[str, Any] = {"output_dir": str(output_dir)}
    sources: list[str] = []
    for source, values in layers:
        merged.update(check(values, source))
        if values:
            sources.append(source)
    try:
        return TrainingArguments(**merged)
    except (ValueError, TypeError, ImportError) as exc:
        raise TrainingArgumentsError(f"invalid training arguments (from {', '.join(sources)}): {exc}") from None


def describe() -> str:
    """One line per field, for ``--list-training-args``: name, type, default and help."""
    lines = []
    for name, field in sorted(fields().items()):
        default = field.default if field.default is not dataclasses.MISSING else "(required)"
        if field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = field.default_factory()  # type: ignore[misc]
        hint = _hints()[name]
        hint = hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")  # float, not <class 'float'>
        text = " ".join(str(field.metadata.get("help", "")).split())
        lines.append(f"{name} ({hint}, default {default!r}){os.linesep}    {text}" if text else f"{name} ({hint}, default {default!r})")
    return "\n".join(lines)

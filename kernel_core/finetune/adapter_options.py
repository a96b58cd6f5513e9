"""The adapter ``kcore finetune`` trains: the chosen method's own config fields, in layers each over
the one before: kernel-core's defaults for the method, ``--adapter-config FILE.json``, the shortcut
flags (``--r``, ``--alpha``, ``--dropout``, ``--target-modules``), then ``--set key=value``.

Nothing here knows a method's fields: they are the fields of its pydantic config
(``Method.config_class``), and the method validates the result, so a method installed as a plugin
takes its options exactly as LoRA does, and no LoRA field ever reaches another method.
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pydantic

from kernel_core.errors import InvalidAdapterConfigError
from kernel_core.finetune import arguments
from kernel_core.finetune.json_object import read_json_object
from kernel_core.peft.config import Method, get_config, get_method, validated

#: ``kcore finetune`` flag -> the config field it sets, for a method whose config has that field.
SHORTCUTS = {"--r": "r", "--alpha": "lora_alpha", "--dropout": "lora_dropout", "--target-modules": "target_modules"}

#: Fields ``kcore finetune`` sets itself: ``--set`` naming them is refused, and an
#: ``--adapter-config`` file's values for them (a saved adapter's, e.g. ``inference_mode: true``)
#: are left out.
OWNED = {"inference_mode": "kcore finetune (the adapter trains)", "base_model_name_or_path": "--model"}

#: ``--set`` prefixes that say which of the two a key is for.
ADAPTER_PREFIX, TRAINING_PREFIX = "adapter.", "training."


class AdapterOptionsError(InvalidAdapterConfigError):
    """An adapter option that the method does not take, or that is ambiguous; the message names it."""


def _show_config(method: Method) -> str:
    return f"kcore finetune --method {method.spec.name} --show-config lists them"


def read_file(path: Path, method: Method) -> dict[str, Any]:
    """The method's fields in an ``--adapter-config`` file (PEFT's ``adapter_config.json``): a
    ``peft_type`` other than the method's, a key the method does not take, or a bad value is
    refused naming it; keys PEFT writes at their "off" value, and the :data:`OWNED` ones, are left out."""
    source = f"--adapter-config {path}"
    document = read_json_object(path, "--adapter-config", f"{method.config_class.__name__} fields", AdapterOptionsError)
    peft_type = document.get("peft_type")
    if peft_type is not None and str(peft_type).upper() != method.spec.peft_type:
        raise AdapterOptionsError(
            f"{source} has peft_type {peft_type!r}, but --method {method.spec.name} writes {method.spec.peft_type!r}: "
            "pass the method the file is for, or drop its peft_type"
        )
    config_class = method.config_class
    unsupported = [key for key in document if key not in config_class.model_fields and _dropped_with_a_warning(method, key, document[key])]
    if unsupported:
        raise AdapterOptionsError(
            f"{source}: {', '.join(repr(key) for key in unsupported)} {'is not a field' if len(unsupported) == 1 else 'are not fields'} "
            f"of {config_class.__name__} (the {method.spec.name} method's options; {_show_config(method)})"
        )
    try:
        config = validated(config_class, lambda: config_class.from_dict(document))
    except InvalidAdapterConfigError as exc:
        raise AdapterOptionsError(f"{source}: {exc}") from None
    return {key: value for key, value in config.model_dump().items() if key in config.model_fields_set and key not in OWNED}


def _dropped_with_a_warning(method: Method, key: str, value: Any) -> bool:
    """Whether the method's ``from_dict`` would drop this non-field with a warning: a setting it
    does not support, rather than PEFT's bookkeeping or a feature PEFT writes switched off."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            method.config_class.from_dict({key: value})
        except pydantic.ValidationError:
            pass  # a config with required fields: it has warned (or not) before validating
    return any(issubclass(warning.category, UserWarning) for warning in caught)


def shortcut_values(given: Mapping[str, Any], method: Method) -> dict[str, Any]:
    """The fields the shortcut flags given (``{"--r": 8}``, ``None`` meaning not given) set; a flag
    for a field the method's config lacks is refused naming the flag."""
    values: dict[str, Any] = {}
    for flag, value in given.items():
        if value is None:
            continue
        name = SHORTCUTS[flag]
        if name not in method.config_class.model_fields:
            raise AdapterOptionsError(
                f"{flag} sets {name}, which the {method.spec.name} method does not have "
                f"({method.config_class.__name__}'s options: {_show_config(method)})"
            )
        values[name] = value
    return values


def route_set(values: Mapping[str, Any], method: Method) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split ``--set`` keys into ``(adapter fields, TrainingArguments fields)``: a key only one of
    them knows goes there; ``adapter.KEY`` or ``training.KEY`` says which where both know it, and
    a key neither knows is refused naming both places it was looked up in."""
    adapter_fields, training_fields = method.config_class.model_fields, arguments.fields()
    adapter: dict[str, Any] = {}
    training: dict[str, Any] = {}
    for key, value in values.items():
        if key.startswith(ADAPTER_PREFIX):
            name = key.removeprefix(ADAPTER_PREFIX)
            if name not in adapter_fields:
                raise AdapterOptionsError(
                    f"--set {key}: {name!r} is not a field of {method.config_class.__name__}{_nearest(name, adapter_fields)} "
                    f"(the {method.spec.name} method's options; {_show_config(method)})"
                )
            adapter[name] = value
        elif key.startswith(TRAINING_PREFIX):
            training[key.removeprefix(TRAINING_PREFIX)] = value  # checked with the other training layers
        elif key in adapter_fields and key in training_fields:
            raise AdapterOptionsError(
                f"--set {key}: both the {method.spec.name} method's config and TrainingArguments have a field {key!r}; "
                f"say which: --set {ADAPTER_PREFIX}{key}=... or --set {TRAINING_PREFIX}{key}=..."
            )
        elif key in adapter_fields:
            adapter[key] = value
        elif key in training_fields:
            training[key] = value
        else:
            raise AdapterOptionsError(
                f"--set {key}: not a field of {method.config_class.__name__} (the {method.spec.name} method's options; "
                f"{_show_config(method)}) nor of TrainingArguments (kcore finetune --list-training-args lists them)"
                + _nearest(key, [*adapter_fields, *training_fields]).replace(" (", "; ").rstrip(")")
            )
    for key in adapter:
        if key in OWNED:
            raise AdapterOptionsError(f"--set: {key} is set by {OWNED[key]}, not here")
    return adapter, training


def _nearest(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def build(method_name: str, layers: Iterable[tuple[str, Mapping[str, Any]]]) -> Any:
    """The method's validated config: its tuner's ``finetune_defaults``, then ``(source, fields)``
    layers, later ones winning; a bad field is named, with the layers' sources."""
    method = get_method(method_name)
    merged: dict[str, Any] = dict(method.tuner.finetune_defaults)
    sources: list[str] = []
    for source, values in layers:
        merged.update(values)
        if values:
            sources.append(source)
    try:
        return get_config(method.spec.name, **merged)
    except InvalidAdapterConfigError as exc:
        where = f" (from {', '.join(sources)})" if sources else ""
        raise AdapterOptionsError(f"adapter options{where}: {exc}") from None


def describe(method: Method) -> str:
    """``--show-config``: the method, then one entry per field of its config: name, type, default
    (kernel-core's where it has one), the flag that sets it, and the field's description."""
    defaults = method.tuner.finetune_defaults
    flags = {name: flag for flag, name in SHORTCUTS.items()}
    lines = [
        f"{method.spec.name} (peft_type {method.spec.peft_type}): {method.spec.description}",
        f"{method.config_class.__name__} fields, set with --adapter-config FILE.json or --set KEY=VALUE "
        f"(--set {ADAPTER_PREFIX}KEY=VALUE where TrainingArguments has the same field):",
    ]
    for name, field in method.config_class.model_fields.items():
        default = defaults[name] if name in defaults else field.get_default(call_default_factory=True)
        notes = [_type_name(field.annotation), f"default {default!r}" + (" (kcore finetune's)" if name in defaults else "")]
        if name in flags:
            notes.append(flags[name])
        if name in OWNED:
            notes.append(f"set by {OWNED[name]}")
        description = " ".join((field.description or "").split())
        lines.append(f"{name} ({', '.join(notes)})" + (f"\n    {description}" if description else ""))
    return "\n".join(lines)


def _type_name(annotation: Any) -> str:
    """``int``, ``list[str] | str | None``, ``Literal['none', 'all']``: as a user would write it."""
    return annotation.__name__ if isinstance(annotation, type) else str(annotation).replace("typing.", "")

"""argparse types shared by the commands: a bad value is a usage error naming its option."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any, NamedTuple


def number(kind: Callable[[str], Any], ok: Callable[[Any], bool], expected: str) -> Callable[[str], Any]:
    """An argparse type: ``kind(text)`` if ``ok`` accepts it (comparisons refuse nan too)."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {'an integer' if kind is int else 'a number'}: {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {expected}, got {value}")
        return value

    return parse


positive_int = number(int, lambda v: v >= 1, "at least 1")
non_negative_int = number(int, lambda v: v >= 0, "0 or more")
positive_float = number(float, lambda v: v > 0, "more than 0")
non_negative_float = number(float, lambda v: v >= 0, "0 or more")
fraction = number(float, lambda v: 0 <= v < 1, "in [0, 1)")


def non_empty(text: str) -> str:
    if not text:
        raise argparse.ArgumentTypeError("must not be empty")
    return text


class PluginOption(NamedTuple):
    """One ``--plugin-option KIND.NAME.KEY=VALUE``: the plugin (``KIND.NAME``), the key, the value."""

    plugin: str
    key: str
    value: Any
    text: str


def plugin_option(text: str) -> PluginOption:
    """``KIND.NAME.KEY=VALUE``, VALUE read as JSON where it parses (``64``, ``true``, ``[1, 2]``),
    else kept as a string; the plugin's Settings model validates it when the engine starts."""
    target, sep, raw = text.partition("=")
    parts = target.split(".")
    if not sep or len(parts) != 3 or not all(parts):
        raise argparse.ArgumentTypeError(
            f"expected KIND.NAME.KEY=VALUE (e.g. attention-backend.torch.bucket_bytes=65536), got {text!r}"
        )
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return PluginOption(f"{parts[0]}.{parts[1]}", parts[2], value, text)


def add_plugin_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--plugin-option``, repeatable, on every command that builds an engine."""
    parser.add_argument(
        "--plugin-option",
        dest="plugin_options",
        type=plugin_option,
        action="append",
        default=[],
        metavar="KIND.NAME.KEY=VALUE",
        help="a setting of a plugin, e.g. attention-backend.torch.bucket_bytes=65536 (VALUE is JSON, else a "
        "string); repeatable; `kcore plugins doctor` lists each plugin's settings",
    )


def plugin_options(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The ``--plugin-option`` values as ``EngineConfig.plugin_options`` (a later KEY wins)."""
    options: dict[str, dict[str, Any]] = {}
    for option in getattr(args, "plugin_options", None) or ():
        options.setdefault(option.plugin, {})[option.key] = option.value
    return options

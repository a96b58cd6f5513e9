"""argparse types shared by the commands: a bad value is a usage error naming its option."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


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

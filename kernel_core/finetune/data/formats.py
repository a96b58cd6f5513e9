"""Row shapes: which of the four supported formats a row is, and why it is not a valid one.

A row is read as the first shape whose keys it has (a key whose value is ``None`` counts as absent:
a file's columns are the union of its rows' keys, so ``datasets`` fills the others with ``None``):

1. ``{"messages": [...]}``: a conversation; its assistant turns are learned.
2. ``{"prompt": ..., "completion": ...}``: both strings (raw text, the completion is learned), or
   both lists of messages (TRL's conversational prompt-completion, the completion is learned).
3. ``{"text": str}``: language modeling, every token is learned.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

MESSAGES = "messages"
PROMPT_COMPLETION = "prompt-completion"
CONVERSATIONAL = "conversational prompt-completion"
TEXT = "text"

#: Every key a supported shape reads.
KEYS = ("messages", "prompt", "completion", "text")

#: The shapes, as an error message lists them.
SHAPES = (
    '{"prompt": str, "completion": str}, {"messages": [{"role", "content"}, ...]}, '
    '{"prompt": [messages], "completion": [messages]} or {"text": str}'
)


def clean_row(row: Any) -> Any:
    """``row`` as a plain dict without its ``None`` values, at the top and in each message:
    ``datasets`` pads every row (and every message) with the keys the others have, and a chat
    template would see a padded ``tool_calls: None`` as a tool call."""
    if not isinstance(row, Mapping):
        return row
    cleaned = {key: value for key, value in row.items() if value is not None}
    for key in ("messages", "prompt", "completion"):
        if isinstance(cleaned.get(key), list):
            cleaned[key] = [_without_none(message) for message in cleaned[key]]
    return cleaned


def _without_none(message: Any) -> Any:
    return {key: value for key, value in message.items() if value is not None} if isinstance(message, dict) else message


def row_format(row: dict[str, Any]) -> str | None:
    """The shape a cleaned row is read as (see the module docstring), or ``None`` for none."""
    if "messages" in row:
        return MESSAGES
    if "prompt" in row or "completion" in row:
        return CONVERSATIONAL if isinstance(row.get("prompt"), list) else PROMPT_COMPLETION
    if "text" in row:
        return TEXT
    return None


def row_problem(row: object) -> str | None:
    """Why a cleaned ``row`` is not a valid training row, or ``None`` when it is."""
    if not isinstance(row, dict):
        return f"a row must be a JSON object, got {type(row).__name__}"
    shape = row_format(row)
    if shape == MESSAGES:
        return _messages_problem(row["messages"], "messages")
    if shape == TEXT:
        return _text_problem(row, "text")
    if shape is None:
        keys = ", ".join(repr(key) for key in row) or "none"
        return f"the row matches no supported shape (its keys: {keys}); a row is {SHAPES}"
    missing = [key for key in ("prompt", "completion") if key not in row]
    if missing:
        return f"missing key {' and '.join(repr(key) for key in missing)}: a prompt-completion row needs both"
    if isinstance(row["prompt"], list) != isinstance(row["completion"], list):
        listed, other = ("prompt", "completion") if isinstance(row["prompt"], list) else ("completion", "prompt")
        return f"{listed!r} is a list of messages but {other!r} is not: both are strings or both are lists"
    if shape == CONVERSATIONAL:
        return _messages_problem(row["prompt"], "prompt", need_assistant=False) or _messages_problem(
            row["completion"], "completion"
        )
    return _text_problem(row, "prompt") or _text_problem(row, "completion")


def columns_problem(columns: Iterable[str], *, text_only: bool = False) -> str | None:
    """Why a table with these columns cannot hold training rows, or ``None``: it needs at least one
    key of a supported shape, and a ``text_only`` source (CSV) cannot hold messages."""
    columns = list(columns)
    if not any(key in columns for key in KEYS):
        found = ", ".join(repr(column) for column in columns) or "none"
        return f"its columns ({found}) match no supported shape: a row is {SHAPES}"
    if text_only and "messages" in columns:
        return "a CSV file holds only text; put conversations ('messages') in JSON lines, JSON or Parquet"
    return None


def _text_problem(row: dict[str, Any], key: str) -> str | None:
    if not isinstance(row[key], str):
        what = "a string or a list of messages" if key == "prompt" else "a string"
        return f"{key!r} must be {what}, got {type(row[key]).__name__}"
    if not row[key].strip():
        return f"{key!r} is empty"
    return None


def _messages_problem(messages: object, key: str, *, need_assistant: bool = True) -> str | None:
    if not isinstance(messages, list):
        return f"{key!r} must be a list, got {type(messages).__name__}"
    if not messages:
        return f"{key!r} is empty"
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            return f"{key}[{index}] must be an object with 'role' and 'content', got {type(message).__name__}"
        for field in ("role", "content"):
            if field not in message:
                return f"{key}[{index}] has no {field!r}"
            if not isinstance(message[field], str):
                return f"{key}[{index}].{field} must be a string, got {type(message[field]).__name__}"
        if not message["role"].strip():
            return f"{key}[{index}].role is empty"
    if need_assistant and not any(message["role"] == "assistant" for message in messages):
        return f"{key!r} has no assistant message: there is nothing to learn"
    if need_assistant and messages[-1]["role"] == "assistant" and not messages[-1]["content"].strip():
        return f"{key}[{len(messages) - 1}] (the last assistant reply) is empty"
    return None

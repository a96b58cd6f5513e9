"""Row shapes: which format a row is read as, what makes it invalid, and which columns can hold rows."""

from __future__ import annotations

from typing import Any

import pytest

from kernel_core.finetune.data.formats import (
    CONVERSATIONAL,
    MESSAGES,
    PROMPT_COMPLETION,
    TEXT,
    clean_row,
    columns_problem,
    row_format,
    row_problem,
)
from .samples import FORMATS

USER = {"role": "user", "content": "q"}
ASSISTANT = {"role": "assistant", "content": "a"}


@pytest.mark.parametrize(
    ("row", "shape"),
    [
        (FORMATS["prompt-completion"], PROMPT_COMPLETION),
        (FORMATS["messages"], MESSAGES),
        (FORMATS["conversational"], CONVERSATIONAL),
        (FORMATS["text"], TEXT),
        # the first shape whose keys a row has wins: a dataset may carry a prompt beside its messages
        ({"messages": [USER, ASSISTANT], "prompt": "q", "text": "t"}, MESSAGES),
        ({"prompt": "q", "completion": "a", "text": "t"}, PROMPT_COMPLETION),
        ({"question": "q"}, None),
    ],
)
def test_each_row_is_read_as_the_first_shape_whose_keys_it_has(row: dict[str, Any], shape: str | None) -> None:
    assert row_format(row) == shape
    assert (row_problem(row) is None) == (shape is not None)


def test_clean_row_drops_the_none_values_datasets_pads_rows_and_messages_with() -> None:
    padded = {
        "prompt": None, "completion": None, "text": None, "id": 3,
        "messages": [{"role": "user", "content": "q", "tool_calls": None}, {"role": "assistant", "content": "a", "tool_calls": None}],
    }
    assert clean_row(padded) == {"id": 3, "messages": [USER, ASSISTANT]}
    conversational = {"prompt": [{**USER, "name": None}], "completion": [ASSISTANT], "messages": None}
    assert clean_row(conversational) == {"prompt": [USER], "completion": [ASSISTANT]}
    assert clean_row(["not", "a", "row"]) == ["not", "a", "row"]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (["prompt", "completion"], "must be a JSON object, got list"),
        ({"prompt": "a"}, "missing key 'completion': a prompt-completion row needs both"),
        ({"completion": "a"}, "missing key 'prompt'"),
        ({"question": "q", "answer": "a"}, "matches no supported shape (its keys: 'question', 'answer')"),
        ({}, "matches no supported shape (its keys: none)"),
        ({"prompt": 1, "completion": "b"}, "'prompt' must be a string or a list of messages, got int"),
        ({"prompt": "a", "completion": 2}, "'completion' must be a string, got int"),
        ({"prompt": "a", "completion": "  "}, "'completion' is empty"),
        ({"prompt": "", "completion": "b"}, "'prompt' is empty"),
        ({"prompt": [USER], "completion": "a"}, "'prompt' is a list of messages but 'completion' is not"),
        ({"prompt": "q", "completion": [ASSISTANT]}, "'completion' is a list of messages but 'prompt' is not"),
        ({"prompt": [], "completion": [ASSISTANT]}, "'prompt' is empty"),
        ({"prompt": [USER], "completion": [USER]}, "'completion' has no assistant message"),
        ({"prompt": [USER], "completion": [{"role": "assistant"}]}, "completion[0] has no 'content'"),
        ({"prompt": ["q"], "completion": [ASSISTANT]}, "prompt[0] must be an object with 'role' and 'content', got str"),
        ({"text": 5}, "'text' must be a string, got int"),
        ({"text": " "}, "'text' is empty"),
        ({"messages": "hi"}, "'messages' must be a list"),
        ({"messages": []}, "'messages' is empty"),
        ({"messages": [USER]}, "no assistant message"),
        ({"messages": [{"role": "assistant"}]}, "messages[0] has no 'content'"),
        ({"messages": [{"role": "assistant", "content": 3}]}, "messages[0].content must be a string, got int"),
        ({"messages": [{"role": " ", "content": "a"}, ASSISTANT]}, "messages[0].role is empty"),
        ({"messages": [USER, {"role": "assistant", "content": ""}]}, "messages[1] (the last assistant reply) is empty"),
    ],
)
def test_a_malformed_row_says_what_is_wrong(row: object, message: str) -> None:
    problem = row_problem(row)
    assert problem is not None and message in problem


def test_every_shape_is_listed_when_none_matches() -> None:
    problem = row_problem({"question": "q"})
    assert problem is not None
    for shape in ('{"prompt": str, "completion": str}', '{"messages"', '{"prompt": [messages], "completion": [messages]}', '{"text": str}'):
        assert shape in problem


def test_columns_must_hold_some_shape_and_csv_holds_no_conversation() -> None:
    assert columns_problem(["prompt", "completion", "id"]) is None
    assert columns_problem(["text"], text_only=True) is None
    problem = columns_problem(["question", "answer"])
    assert problem is not None and "its columns ('question', 'answer') match no supported shape" in problem
    assert "no supported shape" in (columns_problem([]) or "")
    assert "CSV file holds only text" in (columns_problem(["messages"], text_only=True) or "")
    assert columns_problem(["messages"]) is None

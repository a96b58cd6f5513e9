"""Tokenizing a valid row (see :mod:`.formats`) with a loss only on what the model must learn to
write: every other position gets the label :data:`IGNORE_INDEX`, which the loss ignores.

- prompt / completion (strings): the prompt as is (with the tokenizer's own special prefix), then
  the completion, then EOS so the model learns to stop; the completion and EOS are learned.
- messages: the chat template's rendering; each assistant turn, as the template renders it (its end
  token included), is learned.
- prompt / completion (lists of messages, TRL's conversational format): the template renders the
  prompt with its generation prompt, then the prompt and completion together; everything the
  completion adds is learned.
- text: the text with the tokenizer's special prefix, then EOS; every token is learned.

The first position never carries a loss: nothing comes before it to predict it from. Pieces of text
are tokenized one by one where a target starts, so the ids before a target are exactly the ids of
the prompt the model is later asked to continue.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kernel_core.errors import FinetuneDataError
from kernel_core.finetune.data.formats import CONVERSATIONAL, MESSAGES, PROMPT_COMPLETION, TEXT, row_format

#: The label of a position that carries no loss (the ``ignore_index`` of the cross-entropy).
IGNORE_INDEX = -100


@dataclass(frozen=True)
class Example:
    """One tokenized row: ``labels[i]`` is ``input_ids[i]`` where the model is trained to produce
    that token, :data:`IGNORE_INDEX` elsewhere."""

    input_ids: list[int]
    labels: list[int]


def has_target(labels: list[int]) -> bool:
    """Whether a row teaches anything: a target token past the first position."""
    return any(label != IGNORE_INDEX for label in labels[1:])


def _render(tokenizer: Any, messages: list[dict[str, Any]], *, generation_prompt: bool = False) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise FinetuneDataError("the model's tokenizer has no chat template, so conversations cannot be rendered")
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def _split(before: str, through: str, done: str) -> tuple[str, str]:
    """``before`` past ``done`` (the context) and ``through`` past ``before`` (the target), checking
    that the template renders a conversation as a growing prefix, so targets can be located."""
    if not (before.startswith(done) and through.startswith(before)):
        raise FinetuneDataError(
            "the chat template does not render a conversation as a growing prefix, so the tokens to "
            "learn cannot be located; use prompt/completion rows of text"
        )
    return before[len(done) :], through[len(before) :]


def _segments(row: dict[str, Any], tokenizer: Any) -> list[tuple[str, bool]]:
    """The row's text cut into ``(text, is_target)`` pieces whose concatenation is what the model
    reads; target pieces are the ones it must learn to write."""
    shape = row_format(row)
    if shape == PROMPT_COMPLETION:
        return [(row["prompt"], False), (row["completion"], True)]
    if shape == TEXT:
        return [(row["text"], True)]
    if shape == CONVERSATIONAL:
        before = _render(tokenizer, row["prompt"], generation_prompt=True)
        context, target = _split(before, _render(tokenizer, row["prompt"] + row["completion"]), "")
        return [(text, is_target) for text, is_target in ((context, False), (target, True)) if text]
    messages = row["messages"]
    segments: list[tuple[str, bool]] = []
    done = ""
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:index], generation_prompt=True)
        through = _render(tokenizer, messages[: index + 1])
        context, target = _split(before, through, done)
        segments += [(context, False), (target, True)]
        done = through
    full = _render(tokenizer, messages)
    if full.startswith(done) and len(full) > len(done):
        segments.append((full[len(done) :], False))
    return [(text, target) for text, target in segments if text]


def _tokenize(tokenizer: Any, text: str, *, first: bool) -> list[int]:
    # The first piece of raw text gets the tokenizer's special prefix (BOS where the model uses
    # one); chat templates write their own special tokens, so a rendered conversation adds none.
    return list(tokenizer(text, add_special_tokens=first)["input_ids"])


def encode_row(row: dict[str, Any], tokenizer: Any, max_len: int | None = None) -> Example:
    """Tokenize one valid, cleaned row (see :func:`~.formats.row_problem`) into ids and labels, cut
    to ``max_len`` tokens from the right so the prompt's start is kept."""
    raw = row_format(row) in (PROMPT_COMPLETION, TEXT)
    input_ids: list[int] = []
    labels: list[int] = []
    for index, (text, target) in enumerate(_segments(row, tokenizer)):
        ids = _tokenize(tokenizer, text, first=index == 0 and raw)
        input_ids += ids
        labels += ids if target else [IGNORE_INDEX] * len(ids)
    if raw and tokenizer.eos_token_id is not None:
        input_ids.append(tokenizer.eos_token_id)
        labels.append(tokenizer.eos_token_id)
    if labels:
        labels[0] = IGNORE_INDEX
    if max_len is not None:
        input_ids, labels = input_ids[:max_len], labels[:max_len]
    return Example(input_ids, labels)


def encode_prompt(row: dict[str, Any], tokenizer: Any) -> tuple[list[int], str]:
    """The ids the model reads before it must write the row's last target, and that target's text:
    what :mod:`kernel_core.finetune.exact_match` asks the model to reproduce. The ids are exactly
    the ones training puts before that target."""
    shape = row_format(row)
    if shape == TEXT:
        raise FinetuneDataError("for exact match, a row needs a prompt and a completion; a 'text' row has neither")
    if shape == PROMPT_COMPLETION:
        return _tokenize(tokenizer, row["prompt"], first=True), row["completion"]
    if shape == CONVERSATIONAL:
        completion = row["completion"]
        if len(completion) != 1 or completion[0]["role"] != "assistant":
            raise FinetuneDataError("for exact match, a conversational completion must be one assistant message")
        last_message = completion[0]
    else:
        last_message = row["messages"][-1]
        if last_message["role"] != "assistant":
            raise FinetuneDataError("for exact match, the last message of a conversation must be the assistant's")
    segments = _segments(row, tokenizer)
    last = max(i for i, (_, is_target) in enumerate(segments) if is_target)
    ids: list[int] = []
    for text, _ in segments[:last]:
        ids += _tokenize(tokenizer, text, first=False)
    return ids, last_message["content"]

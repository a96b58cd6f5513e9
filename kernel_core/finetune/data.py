"""Fine-tuning data: JSONL rows checked line by line, tokenized with loss only on what the model
must learn to write, and padded into batches.

Two row formats are accepted, one per line:

- ``{"prompt": str, "completion": str}``: raw text; the completion is followed by the tokenizer's
  EOS token so the model learns where to stop. Only completion tokens (and that EOS) carry a loss.
- ``{"messages": [{"role": str, "content": str}, ...]}``: a conversation rendered with the
  tokenizer's chat template. Only the assistant turns, as the template renders them (their end
  token included), carry a loss.

Every other position gets the label ``-100``, which the loss ignores.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kernel_core.errors import FinetuneDataError

logger = logging.getLogger(__name__)

#: The label of a position that carries no loss (the ``ignore_index`` of the cross-entropy).
IGNORE_INDEX = -100


@dataclass(frozen=True)
class Example:
    """One tokenized row: ``labels[i]`` is ``input_ids[i]`` where the model is trained to produce
    that token, :data:`IGNORE_INDEX` elsewhere. ``line`` is where it came from, for messages."""

    input_ids: list[int]
    labels: list[int]
    line: int = 0

    @property
    def num_target_tokens(self) -> int:
        """Tokens that carry a loss: the first token can never be predicted, so it never counts."""
        return sum(label != IGNORE_INDEX for label in self.labels[1:])


# -- reading ------------------------------------------------------------------------------------


def read_rows(path: str | os.PathLike[str]) -> list[tuple[int, dict[str, Any]]]:
    """Every row of a JSONL file with its 1-based line number, checked so that a bad row fails
    here, naming the file and line, rather than in the middle of training. Blank lines are skipped.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FinetuneDataError(f"data file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise FinetuneDataError(f"data file {path} cannot be read: {exc}") from None
    rows: list[tuple[int, dict[str, Any]]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise FinetuneDataError(f"{path}:{number}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        problem = row_problem(row)
        if problem:
            raise FinetuneDataError(f"{path}:{number}: {problem}")
        rows.append((number, row))
    if not rows:
        raise FinetuneDataError(f"data file {path} has no rows (expected JSON lines with prompt/completion or messages)")
    return rows


def row_problem(row: object) -> str | None:
    """Why ``row`` is not a valid training row, or ``None`` when it is."""
    if not isinstance(row, dict):
        return f"a row must be a JSON object, got {type(row).__name__}"
    if "messages" in row:
        return _messages_problem(row["messages"])
    missing = [key for key in ("prompt", "completion") if key not in row]
    if missing:
        return (
            f"missing key {' and '.join(repr(key) for key in missing)}: a row is either "
            '{"prompt": ..., "completion": ...} or {"messages": [...]}'
        )
    for key in ("prompt", "completion"):
        if not isinstance(row[key], str):
            return f"{key!r} must be a string, got {type(row[key]).__name__}"
        if not row[key].strip():
            return f"{key!r} is empty"
    return None


def _messages_problem(messages: object) -> str | None:
    if not isinstance(messages, list):
        return f"'messages' must be a list, got {type(messages).__name__}"
    if not messages:
        return "'messages' is empty"
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            return f"messages[{index}] must be an object with 'role' and 'content', got {type(message).__name__}"
        for key in ("role", "content"):
            if key not in message:
                return f"messages[{index}] has no {key!r}"
            if not isinstance(message[key], str):
                return f"messages[{index}].{key} must be a string, got {type(message[key]).__name__}"
        if not message["role"].strip():
            return f"messages[{index}].role is empty"
    if not any(message["role"] == "assistant" for message in messages):
        return "'messages' has no assistant message: there is nothing to learn"
    if not messages[-1]["content"].strip() and messages[-1]["role"] == "assistant":
        return f"messages[{len(messages) - 1}] (the last assistant reply) is empty"
    return None


# -- tokenizing ---------------------------------------------------------------------------------


def _segments(row: dict[str, Any], tokenizer: Any) -> list[tuple[str, bool]]:
    """The row's text cut into ``(text, is_target)`` pieces whose concatenation is what the model
    reads; target pieces are the ones it must learn to write."""
    if "messages" not in row:
        return [(row["prompt"], False), (row["completion"], True)]
    if not getattr(tokenizer, "chat_template", None):
        raise FinetuneDataError("the model's tokenizer has no chat template, so 'messages' rows cannot be rendered")
    messages = row["messages"]
    segments: list[tuple[str, bool]] = []
    done = ""
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(messages[:index], tokenize=False, add_generation_prompt=True)
        through = tokenizer.apply_chat_template(messages[: index + 1], tokenize=False)
        if not (before.startswith(done) and through.startswith(before)):
            raise FinetuneDataError(
                "the chat template does not render a conversation as a growing prefix, so the assistant "
                "tokens cannot be located; use prompt/completion rows"
            )
        segments += [(before[len(done) :], False), (through[len(before) :], True)]
        done = through
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    if full.startswith(done) and len(full) > len(done):
        segments.append((full[len(done) :], False))
    return [(text, target) for text, target in segments if text]


def _tokenize(tokenizer: Any, text: str, *, first: bool) -> list[int]:
    # The first piece gets the tokenizer's special prefix (BOS where the model uses one); chat
    # templates write their own special tokens, so a rendered conversation adds none.
    return list(tokenizer(text, add_special_tokens=first)["input_ids"])


def encode_row(row: dict[str, Any], tokenizer: Any, max_len: int | None = None, line: int = 0) -> Example:
    """Tokenize one valid row (see :func:`row_problem`) into ids and labels, cut to ``max_len``
    tokens from the right so the prompt's start is kept."""
    chat = "messages" in row
    input_ids: list[int] = []
    labels: list[int] = []
    for index, (text, target) in enumerate(_segments(row, tokenizer)):
        ids = _tokenize(tokenizer, text, first=index == 0 and not chat)
        input_ids += ids
        labels += ids if target else [IGNORE_INDEX] * len(ids)
    if not chat and tokenizer.eos_token_id is not None:
        input_ids.append(tokenizer.eos_token_id)
        labels.append(tokenizer.eos_token_id)
    if max_len is not None:
        input_ids, labels = input_ids[:max_len], labels[:max_len]
    return Example(input_ids, labels, line)


def encode_prompt(row: dict[str, Any], tokenizer: Any) -> tuple[list[int], str]:
    """The ids the model reads before it must write the row's last target, and that target's text:
    what :mod:`kernel_core.finetune.exact_match` asks the model to reproduce. The ids are exactly
    the ones training puts before that target."""
    if "messages" in row:
        if row["messages"][-1]["role"] != "assistant":
            raise FinetuneDataError("for exact match, the last message of a conversation must be the assistant's")
        segments = _segments(row, tokenizer)
        last = max(i for i, (_, is_target) in enumerate(segments) if is_target)
        ids: list[int] = []
        for text, _ in segments[:last]:
            ids += _tokenize(tokenizer, text, first=False)
        return ids, row["messages"][-1]["content"]
    return _tokenize(tokenizer, row["prompt"], first=True), row["completion"]


def load_examples(
    path: str | os.PathLike[str], tokenizer: Any, max_len: int | None = None
) -> list[Example]:
    """Read, check and tokenize a JSONL file. Rows left with no target token after truncation to
    ``max_len`` teach nothing, so they are dropped with a warning that says how many."""
    examples = [encode_row(row, tokenizer, max_len, line) for line, row in read_rows(path)]
    kept = [example for example in examples if example.num_target_tokens > 0]
    if len(kept) < len(examples):
        dropped = [str(example.line) for example in examples if example.num_target_tokens == 0]
        logger.warning(
            "%s: %d row(s) have no completion token within --max-len %s and are skipped (lines %s)",
            path, len(dropped), max_len, ", ".join(dropped[:10]) + (", ..." if len(dropped) > 10 else ""),
        )
    if not kept:
        raise FinetuneDataError(f"{path}: no row has a completion token within --max-len {max_len}")
    return kept


# -- batching -----------------------------------------------------------------------------------


def collate(examples: Sequence[Example], pad_token_id: int, padding_side: str = "right") -> dict[str, torch.Tensor]:
    """Pad a batch to its own longest row (dynamic padding): ``input_ids``, ``attention_mask``
    (1 on real tokens) and ``labels`` (:data:`IGNORE_INDEX` on padding)."""
    width = max(len(example.input_ids) for example in examples)
    ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        span = slice(width - n, width) if padding_side == "left" else slice(0, n)
        ids[row, span] = torch.tensor(example.input_ids)
        labels[row, span] = torch.tensor(example.labels)
        mask[row, span] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def epoch_batches(num_examples: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The example indices of each batch of one epoch, shuffled by ``(seed, epoch)`` alone so a
    resumed run sees exactly the batches an uninterrupted one would."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(num_examples, generator=generator).tolist()
    return [order[start : start + batch_size] for start in range(0, num_examples, batch_size)]


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    """Consecutive slices of ``size`` items (the last may be shorter)."""
    for start in range(0, len(items), size):
        yield items[start : start + size]

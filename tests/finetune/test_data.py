"""Fine-tuning data: row checks naming file and line, loss masks, truncation, padding, order."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch

from kernel_core.errors import FinetuneDataError
from kernel_core.finetune.data import (
    IGNORE_INDEX,
    Example,
    collate,
    encode_prompt,
    encode_row,
    epoch_batches,
    load_examples,
    read_rows,
)

CHAT = {
    "messages": [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello there"},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
    ]
}


def _target_text(example: Example, tokenizer: Any) -> str:
    return tokenizer.decode([i for i, label in zip(example.input_ids, example.labels) if label != IGNORE_INDEX])


def test_prompt_completion_loss_is_on_the_completion_and_eos_only(tokenizer: Any) -> None:
    example = encode_row({"prompt": "Capital of France:", "completion": " Paris"}, tokenizer)
    assert _target_text(example, tokenizer) == " Paris" + tokenizer.eos_token
    prompt_ids = tokenizer("Capital of France:")["input_ids"]
    assert example.input_ids[: len(prompt_ids)] == prompt_ids
    assert example.labels[: len(prompt_ids)] == [IGNORE_INDEX] * len(prompt_ids)
    assert example.input_ids[-1] == tokenizer.eos_token_id


def test_chat_loss_is_on_every_assistant_turn_as_the_template_renders_it(tokenizer: Any) -> None:
    example = encode_row(CHAT, tokenizer)
    assert tokenizer.decode(example.input_ids) == tokenizer.apply_chat_template(CHAT["messages"], tokenize=False)
    target = _target_text(example, tokenizer)
    assert target == "Hello there<|im_end|>\n4<|im_end|>\n"  # SmolLM2's ChatML: the end token is learned
    masked = tokenizer.decode([i for i, label in zip(example.input_ids, example.labels) if label == IGNORE_INDEX])
    assert "Hi" in masked and "2+2?" in masked and "Hello" not in masked


def test_truncation_keeps_the_start(tokenizer: Any) -> None:
    full = encode_row({"prompt": "one two three four five", "completion": " six seven"}, tokenizer)
    cut = encode_row({"prompt": "one two three four five", "completion": " six seven"}, tokenizer, max_len=6)
    assert cut.input_ids == full.input_ids[:6] and cut.labels == full.labels[:6]


def test_rows_left_without_target_are_dropped_with_a_warning(
    tokenizer: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture, write_jsonl: Any
) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a " * 20, "completion": " b"}, {"prompt": "a", "completion": " b"}])
    with caplog.at_level(logging.WARNING):
        examples = load_examples(path, tokenizer, max_len=8)
    assert [example.line for example in examples] == [2]
    assert "1 row(s) have no completion token" in caplog.text and "lines 1" in caplog.text
    with pytest.raises(FinetuneDataError, match="no row has a completion token"):
        load_examples(path, tokenizer, max_len=1)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"prompt": "a", "completion": "b"', "not valid JSON"),
        ('["prompt", "completion"]', "must be a JSON object"),
        ('{"prompt": "a"}', "missing key 'completion'"),
        ('{"text": "a"}', "missing key 'prompt' and 'completion'"),
        ('{"prompt": 1, "completion": "b"}', "'prompt' must be a string, got int"),
        ('{"prompt": "a", "completion": "  "}', "'completion' is empty"),
        ('{"messages": "hi"}', "'messages' must be a list"),
        ('{"messages": []}', "'messages' is empty"),
        ('{"messages": [{"role": "user", "content": "hi"}]}', "no assistant message"),
        ('{"messages": [{"role": "assistant"}]}', "messages[0] has no 'content'"),
        ('{"messages": [{"role": "assistant", "content": 3}]}', "messages[0].content must be a string"),
        ('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]}', "is empty"),
    ],
)
def test_a_malformed_row_names_file_and_line(tmp_path: Path, line: str, message: str, write_jsonl: Any) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "ok", "completion": "ok"}, "", line])
    with pytest.raises(FinetuneDataError) as error:
        read_rows(path)
    assert str(error.value).startswith(f"{path}:3: ")  # blank line 2 is skipped but still counted
    assert message in str(error.value)


def test_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(FinetuneDataError, match="does not exist"):
        read_rows(tmp_path / "absent.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n  \n")
    with pytest.raises(FinetuneDataError, match="has no rows"):
        read_rows(tmp_path / "empty.jsonl")


def test_collate_pads_each_batch_to_its_longest_row() -> None:
    examples = [Example([5, 6, 7], [IGNORE_INDEX, 6, 7]), Example([8], [8])]
    right = collate(examples, pad_token_id=0)
    assert right["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert right["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert right["labels"].tolist() == [[IGNORE_INDEX, 6, 7], [8, IGNORE_INDEX, IGNORE_INDEX]]
    left = collate(examples, pad_token_id=0, padding_side="left")
    assert left["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert left["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]


def test_epoch_order_depends_only_on_seed_and_epoch() -> None:
    first = epoch_batches(10, 4, seed=1, epoch=0)
    assert first == epoch_batches(10, 4, seed=1, epoch=0)
    assert [len(batch) for batch in first] == [4, 4, 2]
    assert sorted(i for batch in first for i in batch) == list(range(10))
    assert epoch_batches(10, 4, seed=1, epoch=1) != first
    assert epoch_batches(10, 4, seed=2, epoch=0) != first


@pytest.mark.parametrize(
    "row",
    [
        {"prompt": "Capital of France:", "completion": " Paris"},
        {"messages": [{"role": "user", "content": "France"}, {"role": "assistant", "content": "Paris"}]},
        CHAT,
    ],
)
def test_prompt_for_exact_match_is_what_training_puts_before_the_last_target(row: dict[str, Any], tokenizer: Any) -> None:
    prompt_ids, target = encode_prompt(row, tokenizer)
    example = encode_row(row, tokenizer)
    assert example.input_ids[: len(prompt_ids)] == prompt_ids
    assert example.labels[len(prompt_ids)] != IGNORE_INDEX  # the next token is the last target's first
    assert target == (row["completion"] if "completion" in row else row["messages"][-1]["content"])
    assert torch.tensor(prompt_ids).dtype == torch.long

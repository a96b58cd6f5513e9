"""Tokenizing rows: the loss falls on what the model must write, TRL's formats tokenize as TRL does,
truncation keeps the start, and exact match's prompt is what training puts before the target."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kernel_core.errors import FinetuneDataError
from kernel_core.finetune.data import IGNORE_INDEX, encode_prompt, encode_row
from kernel_core.finetune.data.encode import Example, has_target

from .samples import FORMATS

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


def test_conversational_prompt_completion_learns_the_whole_completion(tokenizer: Any) -> None:
    row = {"prompt": CHAT["messages"][:3], "completion": CHAT["messages"][3:]}
    example = encode_row(row, tokenizer)
    assert tokenizer.decode(example.input_ids) == tokenizer.apply_chat_template(CHAT["messages"], tokenize=False)
    assert _target_text(example, tokenizer) == "4<|im_end|>\n"  # the prompt's assistant turn is context here


def test_text_learns_every_token_but_the_first(tokenizer: Any) -> None:
    example = encode_row(FORMATS["text"], tokenizer)
    assert example.input_ids == tokenizer(FORMATS["text"]["text"])["input_ids"] + [tokenizer.eos_token_id]
    assert example.labels == [IGNORE_INDEX, *example.input_ids[1:]]  # nothing comes before the first to predict it


def test_trl_formats_tokenize_as_trl_sft_trainer_does(tokenizer: Any, tiny_model: Path, tmp_path: Path) -> None:
    """The oracle: TRL's own ``SFTTrainer`` tokenizing the same rows."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    for row in (FORMATS["conversational"], FORMATS["text"]):
        config = SFTConfig(output_dir=str(tmp_path), report_to=[], max_length=None, use_cpu=True, bf16=False)
        trl_row = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list([row]), processing_class=tokenizer).train_dataset[0]
        ours = encode_row(row, tokenizer)
        assert ours.input_ids == trl_row["input_ids"]
        # TRL also labels the first token, which no position predicts; here it is ignored outright.
        assert ours.labels[1:] == trl_row["labels"][1:]


def test_truncation_keeps_the_start(tokenizer: Any) -> None:
    full = encode_row({"prompt": "one two three four five", "completion": " six seven"}, tokenizer)
    cut = encode_row({"prompt": "one two three four five", "completion": " six seven"}, tokenizer, max_len=6)
    assert cut.input_ids == full.input_ids[:6] and cut.labels == full.labels[:6]
    prompt_length = len(tokenizer("one two three four five")["input_ids"])
    prompt_only = encode_row({"prompt": "one two three four five", "completion": " six"}, tokenizer, max_len=prompt_length)
    assert not has_target(prompt_only.labels) and has_target(full.labels)
    assert has_target([IGNORE_INDEX, 5]) and not has_target([5, IGNORE_INDEX])  # the first label never counts


@pytest.mark.parametrize(
    "row",
    [
        FORMATS["prompt-completion"],
        FORMATS["messages"],
        FORMATS["conversational"],
        CHAT,
        {"prompt": CHAT["messages"][:3], "completion": CHAT["messages"][3:]},
    ],
)
def test_prompt_for_exact_match_is_what_training_puts_before_the_last_target(row: dict[str, Any], tokenizer: Any) -> None:
    prompt_ids, target = encode_prompt(row, tokenizer)
    example = encode_row(row, tokenizer)
    assert example.input_ids[: len(prompt_ids)] == prompt_ids
    assert example.labels[len(prompt_ids)] != IGNORE_INDEX  # the next token is the last target's first
    last = row["completion"] if "completion" in row else row["messages"]
    assert target == (last if isinstance(last, str) else last[-1]["content"])


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (FORMATS["text"], "a 'text' row has neither"),
        ({"messages": CHAT["messages"][:3]}, "last message of a conversation must be the assistant's"),
        ({"prompt": CHAT["messages"][:1], "completion": CHAT["messages"][1:]}, "must be one assistant message"),
    ],
)
def test_exact_match_needs_one_reply_to_reproduce(row: dict[str, Any], message: str, tokenizer: Any) -> None:
    with pytest.raises(FinetuneDataError, match=message):
        encode_prompt(row, tokenizer)


def test_conversations_need_a_chat_template(tokenizer: Any) -> None:
    plain = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    plain.chat_template = None
    with pytest.raises(FinetuneDataError, match="has no chat template"):
        encode_row(FORMATS["conversational"], plain)
    assert encode_row(FORMATS["text"], plain).input_ids == encode_row(FORMATS["text"], tokenizer).input_ids

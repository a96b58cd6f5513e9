"""Exact match: batched, left-padded greedy generation gives each row what it would get alone, and
only exact answers (whitespace aside) count."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from kernel_core.errors import FinetuneDataError
from kernel_core.finetune.data import encode_prompt
from kernel_core.finetune.exact_match import ExactMatchResult, exact_match, load_exact_match_rows

from .data.samples import FORMATS, write_source

NEW_TOKENS = 4

pytestmark = pytest.mark.usefixtures("datasets_cache")


def _alone(model: torch.nn.Module, tokenizer: Any, prompt_ids: list[int]) -> str:
    """What greedy decoding writes for one prompt with no batch and no padding."""
    with torch.no_grad():
        output = model.generate(
            input_ids=torch.tensor([prompt_ids]), max_new_tokens=NEW_TOKENS, do_sample=False,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        )
    return tokenizer.decode(output[0, len(prompt_ids) :], skip_special_tokens=True)


def test_batched_left_padded_generation_matches_each_row_alone(
    load_tiny: Callable[..., Any], tokenizer: Any, tmp_path: Path, write_jsonl: Any, capital_rows: list[dict[str, Any]]
) -> None:
    model = load_tiny()
    path = write_jsonl(tmp_path / "held_out.jsonl", capital_rows[:5])
    rows = load_exact_match_rows(path, tokenizer)
    assert len({len(ids) for ids, _ in rows}) > 1  # prompts of different lengths: padding matters
    # Expect, for each row, what the model writes for it alone (with stray whitespace that the
    # comparison strips), except for the last row, which expects something else.
    rows = [(ids, f"  {_alone(model, tokenizer, ids)}\n") for ids, _ in rows[:4]] + [(rows[4][0], "not this")]
    model.train()
    result = exact_match(model, tokenizer, rows, batch_size=3, max_new_tokens=NEW_TOKENS)
    assert model.training  # put back as it was
    assert (result.correct, result.total) == (4, 5)
    assert result.accuracy == pytest.approx(0.8)
    assert [p.strip() for p in result.predictions[:4]] == [t.strip() for _, t in rows[:4]]
    assert sum(bool(p.strip()) for p in result.predictions) >= 2  # not only empty answers


def test_default_budget_is_the_longest_target_plus_a_few(load_tiny: Callable[..., Any], tokenizer: Any) -> None:
    prompt = tokenizer("Capital of France:")["input_ids"]
    seen: list[int] = []
    model = load_tiny()
    real_generate = model.generate

    def spy(**kwargs: Any) -> Any:
        seen.append(kwargs["max_new_tokens"])
        return real_generate(**kwargs)

    model.generate = spy
    exact_match(model, tokenizer, [(prompt, " Paris"), (prompt, " Rome, Italy")])
    assert seen == [len(tokenizer(" Rome, Italy", add_special_tokens=False)["input_ids"]) + 4]


def test_empty_result() -> None:
    assert ExactMatchResult(0, [], []).accuracy == 0.0


def test_a_conversation_must_end_with_the_reply_to_reproduce(tokenizer: Any, tmp_path: Path, write_jsonl: Any) -> None:
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Bye"}]
    path = write_jsonl(tmp_path / "held_out.jsonl", [{"prompt": "a", "completion": "b"}, {"messages": chat}])
    with pytest.raises(FinetuneDataError, match=r"held_out.jsonl:2: .*last message of a conversation must be the assistant's"):
        load_exact_match_rows(path, tokenizer)


@pytest.mark.parametrize("kind", ["json", "csv", "parquet", "folder"])
def test_held_out_rows_come_from_any_source_kind(kind: str, tokenizer: Any, tmp_path: Path) -> None:
    names = ["prompt-completion"] if kind == "csv" else ["messages", "conversational"]
    rows = [FORMATS[name] for name in names]
    assert load_exact_match_rows(write_source(tmp_path / "held_out", kind, rows), tokenizer) == [
        encode_prompt(row, tokenizer) for row in rows
    ]


def test_a_row_without_a_reply_names_its_row(tokenizer: Any, tmp_path: Path) -> None:
    path = write_source(tmp_path / "held_out", "parquet", [FORMATS["prompt-completion"], FORMATS["text"]])
    with pytest.raises(FinetuneDataError, match=rf"^{path}: row 2: for exact match, a row needs a prompt and a completion"):
        load_exact_match_rows(path, tokenizer)

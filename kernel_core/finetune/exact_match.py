"""Exact-match accuracy on held-out rows: does the model, decoding greedily, write the expected
completion? Measured before and after training, it shows whether the adapter learned the task
(a loss going down does not say that on its own).

Prompts are tokenized exactly as training tokenizes them (:func:`~kernel_core.finetune.data.encode_prompt`),
left-padded into batches so that every row's next token comes right after its own prompt, and
decoded with transformers' ``generate`` on the (possibly wrapped) model. A prediction matches when it
equals the expected completion once surrounding whitespace is stripped from both.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from kernel_core.errors import FinetuneDataError
from kernel_core.finetune.data import DataCollator, encode_prompt
from kernel_core.finetune.data.load import checked_rows
from kernel_core.finetune.data.sources import Source
from kernel_core.finetune.precision import autocast


@dataclass(frozen=True)
class ExactMatchResult:
    """Accuracy over ``len(predictions)`` rows, and what the model wrote for each."""

    correct: int
    predictions: list[str]
    targets: list[str]

    @property
    def total(self) -> int:
        """How many rows were asked."""
        return len(self.targets)

    @property
    def accuracy(self) -> float:
        """Share of rows answered exactly (0 when there are none)."""
        return self.correct / self.total if self.total else 0.0


def load_exact_match_rows(path: str | os.PathLike[str], tokenizer: Any) -> list[tuple[list[int], str]]:
    """``(prompt ids, expected completion)`` of every row of a data file or folder in the training
    formats that have a prompt and a completion; a conversation must end with the assistant's
    reply, the one to reproduce."""
    source = Source.of(path)
    rows = []
    for index, row in checked_rows(source):
        try:
            rows.append(encode_prompt(row, tokenizer))
        except FinetuneDataError as exc:
            raise FinetuneDataError(f"{source.where(index)}: {exc}") from None
    return rows


@torch.no_grad()
def exact_match(
    model: Any,
    tokenizer: Any,
    rows: Sequence[tuple[list[int], str]],
    *,
    batch_size: int = 8,
    max_new_tokens: int | None = None,
    precision: str = "fp32",
    device: torch.device | str = "cpu",
) -> ExactMatchResult:
    """Greedy-generate a completion for each prompt and count the exact matches.

    ``max_new_tokens`` defaults to the longest expected completion in tokens plus a few, enough to
    write it and its end token, so a model that rambles is cut short rather than waited for.
    """
    device = torch.device(device)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if max_new_tokens is None:
        longest = max((len(tokenizer(target, add_special_tokens=False)["input_ids"]) for _, target in rows), default=0)
        max_new_tokens = longest + 4
    was_training = model.training
    model.eval()
    predictions: list[str] = []
    try:
        collator = DataCollator(pad_id, padding_side="left")
        for start in range(0, len(rows), batch_size):
            batch = collator([{"input_ids": ids, "labels": ids} for ids, _ in rows[start : start + batch_size]])
            with autocast(precision, device):
                output = model.generate(
                    input_ids=batch["input_ids"].to(device),
                    attention_mask=batch["attention_mask"].to(device),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=pad_id,
                    eos_token_id=tokenizer.eos_token_id,
                )
            new_tokens = output[:, batch["input_ids"].shape[1] :]
            predictions += tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    finally:
        model.train(was_training)
    targets = [target for _, target in rows]
    correct = sum(prediction.strip() == target.strip() for prediction, target in zip(predictions, targets))
    return ExactMatchResult(correct, predictions, targets)

"""Packing: best-fit decreasing, and a packed batch computes what the unpacked rows compute (the
loss summed over target tokens, each row's logits) on the tiny model in fp32."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest
import torch

from kernel_core.finetune.data import IGNORE_INDEX, DataCollator, encode_row
from kernel_core.finetune.data.packing import best_fit_decreasing, pack_batch


def test_each_row_goes_where_it_leaves_the_least_room() -> None:
    # 7 -> bin 0 (3 left), 4 -> bin 1 (6 left), 4 -> bin 1 (2 left); 2 fits both: best fit takes
    # bin 1, where it leaves no room (first fit would take bin 0)
    assert best_fit_decreasing([7, 4, 4, 2], 10) == [[0], [1, 2, 3]]
    assert best_fit_decreasing([3, 3, 3, 3], 6) == [[0, 1], [2, 3]]  # ties keep the input's order
    assert best_fit_decreasing([], 6) == []
    with pytest.raises(ValueError, match="a row of 7 tokens cannot be packed into rows of 6"):
        best_fit_decreasing([7], 6)


def test_a_packed_row_restarts_positions_and_ignores_each_first_label() -> None:
    batch = {"input_ids": [[1, 2], [3, 4, 5], [6]], "labels": [[IGNORE_INDEX, 2], [IGNORE_INDEX, 4, 5], [IGNORE_INDEX]]}
    assert pack_batch(batch, 4) == {
        "input_ids": [[3, 4, 5, 6], [1, 2]],
        "labels": [[IGNORE_INDEX, 4, 5, IGNORE_INDEX], [IGNORE_INDEX, 2]],
        "position_ids": [[0, 1, 2, 0], [0, 1]],
    }
    unlabelled_start = {"input_ids": [[1, 2], [3, 4]], "labels": [[1, 2], [3, 4]]}
    assert pack_batch(unlabelled_start, 4)["labels"] == [[IGNORE_INDEX, 2, IGNORE_INDEX, 4]]


def _run(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**{key: value for key, value in batch.items() if key != "labels"}, use_cache=False).logits


def _token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The loss of each target token, as transformers' causal LM loss takes it: position t predicts
    label t+1, and positions whose next label is ignored carry none. Computed in float64 from the
    model's fp32 logits, so that the only noise is the model's."""
    logits, labels = logits[..., :-1, :].flatten(0, -2).double(), labels[..., 1:].flatten()
    losses = torch.nn.functional.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="none")
    return losses[labels != IGNORE_INDEX]


def test_a_packed_batch_computes_what_the_unpacked_rows_compute(
    load_tiny: Callable[..., Any], tokenizer: Any, capital_rows: list[dict[str, Any]]
) -> None:
    model = load_tiny().eval()
    features = [{"input_ids": e.input_ids, "labels": e.labels} for e in (encode_row(row, tokenizer) for row in capital_rows[:8])]
    lengths = [len(f["input_ids"]) for f in features]
    width = max(lengths) * 3
    packed = pack_batch({key: [f[key] for f in features] for key in ("input_ids", "labels")}, width)
    packed_batch = DataCollator(tokenizer.pad_token_id)([dict(zip(packed, row)) for row in zip(*packed.values())])
    assert "attention_mask" not in packed_batch and len(packed["input_ids"]) < len(features)
    pad = tokenizer.pad_token_id

    def unpacked(side: str, extra: int = 0) -> list[torch.Tensor]:
        """Each row's logits, from a batch padded on ``side`` (``extra`` more columns than needed)."""
        filler = [{"input_ids": [pad] * (max(lengths) + extra), "labels": [IGNORE_INDEX] * (max(lengths) + extra)}] if extra else []
        logits = _run(model, DataCollator(pad, side)(features + filler))
        return [logits[i, :n] if side == "right" else logits[i, logits.shape[1] - n :] for i, n in enumerate(lengths)]

    # fp32 noise: how far the same rows' logits move with nothing but another padding (the widest
    # variants as wide as the packed rows)
    extra = width - max(lengths)
    variants = [unpacked("right"), unpacked("left"), unpacked("right", extra), unpacked("left", extra)]
    variants.append([_run(model, DataCollator(pad)([f]))[0] for f in features])  # each row alone
    noise = max((a - b).abs().max().item() for x, y in itertools.combinations(variants, 2) for a, b in zip(x, y))
    assert 0 < noise < 1e-5

    packed_logits = _run(model, packed_batch)
    rows: dict[int, torch.Tensor] = {}
    for packed_row, group in enumerate(best_fit_decreasing(lengths, width)):
        starts = itertools.accumulate((lengths[i] for i in group), initial=0)
        rows.update({i: packed_logits[packed_row, start : start + lengths[i]] for i, start in zip(group, starts)})
    moved = max((rows[i] - variants[0][i]).abs().max().item() for i in range(len(features)))
    assert moved <= noise

    # The loss as Trainer takes it from the packed batch: the same target tokens (so the same token
    # count normalises it), and each token's loss within 2 * moved of the unpacked one (a token's
    # loss, logsumexp(z) - z[label], moves by at most twice its logits' largest move), so the sum
    # within that many times it.
    packed_losses = _token_losses(packed_logits, packed_batch["labels"])
    per_row = torch.cat([_token_losses(rows[i], torch.tensor(f["labels"])) for i, f in enumerate(features)])
    unpacked_losses = torch.cat([_token_losses(x, torch.tensor(f["labels"])) for x, f in zip(variants[0], features)])
    assert sorted(packed_losses.tolist()) == sorted(per_row.tolist())  # no token lost or added at the seams
    assert (packed_batch["labels"] != IGNORE_INDEX).sum() == sum((torch.tensor(f["labels"]) != IGNORE_INDEX).sum() for f in features)
    assert (per_row - unpacked_losses).abs().max().item() <= 2 * moved
    assert abs(packed_losses.sum().item() - unpacked_losses.sum().item()) <= 2 * moved * len(per_row)

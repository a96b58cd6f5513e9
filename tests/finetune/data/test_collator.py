"""Batches: padding to the batch's longest row, with an attention mask, or for packed rows with
positions that make the padding a row of its own."""

from __future__ import annotations

import pytest
import torch
from transformers.masking_utils import find_packed_sequence_indices

from kernel_core.finetune.data import IGNORE_INDEX, DataCollator

ROWS = [{"input_ids": [5, 6, 7], "labels": [IGNORE_INDEX, 6, 7]}, {"input_ids": [8, 9], "labels": [IGNORE_INDEX, 9]}]


def test_rows_are_padded_to_the_longest_with_an_attention_mask() -> None:
    right = DataCollator(pad_token_id=0)(ROWS)
    assert set(right) == {"input_ids", "labels", "attention_mask"}
    assert all(tensor.dtype == torch.long for tensor in right.values())
    assert right["input_ids"].tolist() == [[5, 6, 7], [8, 9, 0]]
    assert right["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert right["labels"].tolist() == [[IGNORE_INDEX, 6, 7], [IGNORE_INDEX, 9, IGNORE_INDEX]]
    left = DataCollator(pad_token_id=0, padding_side="left")(ROWS)
    assert left["input_ids"].tolist() == [[5, 6, 7], [0, 8, 9]]
    assert left["attention_mask"].tolist() == [[1, 1, 1], [0, 1, 1]]
    assert left["labels"].tolist() == [[IGNORE_INDEX, 6, 7], [IGNORE_INDEX, IGNORE_INDEX, 9]]


@pytest.mark.parametrize("side", ["right", "left"])
def test_packed_rows_get_no_mask_and_their_padding_is_a_row_of_its_own(side: str) -> None:
    packed = [
        {"input_ids": [1, 2, 3, 4, 5], "labels": [IGNORE_INDEX, 2, 3, IGNORE_INDEX, 5], "position_ids": [0, 1, 2, 0, 1]},
        {"input_ids": [6, 7], "labels": [IGNORE_INDEX, 7], "position_ids": [0, 1]},
    ]
    batch = DataCollator(0, side)(packed)
    assert set(batch) == {"input_ids", "labels", "position_ids"}
    padded = [[6, 7, 0, 0, 0], [0, 1, 0, 1, 2]] if side == "right" else [[0, 0, 0, 6, 7], [0, 1, 2, 0, 1]]
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5], padded[0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1], padded[1]]
    assert batch["labels"][1].tolist() == ([IGNORE_INDEX, 7] + [IGNORE_INDEX] * 3 if side == "right" else [IGNORE_INDEX] * 4 + [7])
    # transformers' reading of the positions: segment ids, padding its own segment
    segments = find_packed_sequence_indices(batch["position_ids"]).tolist()
    assert segments == [[0, 0, 0, 1, 1], [0, 0, 1, 1, 1] if side == "right" else [0, 0, 0, 1, 1]]


def test_padding_side_is_checked() -> None:
    with pytest.raises(ValueError, match="padding_side must be 'right' or 'left', got 'middle'"):
        DataCollator(0, "middle")

"""Batches: rows padded to the batch's own longest row (dynamic padding)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from kernel_core.finetune.data.encode import IGNORE_INDEX


@dataclass(frozen=True)
class DataCollator:
    """``Trainer``'s ``data_collator``: a list of rows in, a batch of tensors out.

    Rows of :func:`~kernel_core.finetune.data.load_training_data` become ``input_ids`` (padded with
    ``pad_token_id``), ``labels`` (:data:`~.encode.IGNORE_INDEX` on padding) and ``attention_mask``
    (1 on real tokens). Packed rows (with ``position_ids``) get no ``attention_mask``: transformers
    then reads the rows' boundaries from ``position_ids`` (a mask would hide them and let packed
    rows attend to each other), and the padding gets positions 0, 1, 2... of its own, so it is a
    row of its own that no real token attends to.
    """

    pad_token_id: int
    #: ``"right"`` for training, ``"left"`` for generation (every row then ends where its
    #: continuation starts).
    padding_side: str = "right"

    def __post_init__(self) -> None:
        if self.padding_side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {self.padding_side!r}")

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        packed = "position_ids" in features[0]
        width = max(len(feature["input_ids"]) for feature in features)
        shape = (len(features), width)
        batch = {
            "input_ids": torch.full(shape, self.pad_token_id, dtype=torch.long),
            "labels": torch.full(shape, IGNORE_INDEX, dtype=torch.long),
        }
        if packed:
            batch["position_ids"] = torch.zeros(shape, dtype=torch.long)
        else:
            batch["attention_mask"] = torch.zeros(shape, dtype=torch.long)
        for row, feature in enumerate(features):
            length = len(feature["input_ids"])
            real = slice(width - length, width) if self.padding_side == "left" else slice(0, length)
            batch["input_ids"][row, real] = torch.tensor(feature["input_ids"], dtype=torch.long)
            batch["labels"][row, real] = torch.tensor(feature["labels"], dtype=torch.long)
            if packed:
                padding = slice(0, width - length) if self.padding_side == "left" else slice(length, width)
                batch["position_ids"][row, real] = torch.tensor(feature["position_ids"], dtype=torch.long)
                batch["position_ids"][row, padding] = torch.arange(width - length)
            else:
                batch["attention_mask"][row, real] = 1
        return batch

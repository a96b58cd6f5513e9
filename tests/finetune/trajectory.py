"""What two ``kcore finetune`` runs share when they followed one trajectory: the adapter's tensors,
bit for bit, and every logged loss, gradient norm, learning rate and eval loss. Timings
(``train_runtime``, tokens per second...) are left out: they differ from one run to the next."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from kernel_core.peft.state_dict import read_adapter

#: The fields of ``trainer_state.json``'s ``log_history`` that a trajectory is made of.
TRAJECTORY_FIELDS = ("step", "epoch", "loss", "grad_norm", "learning_rate", "eval_loss", "num_input_tokens_seen")


def log_history(folder: Path) -> list[dict[str, Any]]:
    """``log_history`` of the ``trainer_state.json`` in ``folder`` (an output or a checkpoint)."""
    return json.loads((folder / "trainer_state.json").read_text())["log_history"]


def trajectory(folder: Path) -> list[dict[str, Any]]:
    """Each record of ``folder``'s log history, with only its :data:`TRAJECTORY_FIELDS`."""
    return [{key: record[key] for key in TRAJECTORY_FIELDS if key in record} for record in log_history(folder)]


def assert_same_adapter(folder: Path, reference: Path) -> None:
    """The adapter in ``folder`` holds exactly the tensors of the one in ``reference``."""
    expected, found = read_adapter(reference)[1], read_adapter(folder)[1]
    assert found.keys() == expected.keys(), folder
    for name, tensor in expected.items():
        assert torch.equal(found[name], tensor), f"{folder}: {name} differs from {reference}"

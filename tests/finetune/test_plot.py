"""``loss.png``: the train and eval curves taken from ``Trainer``'s log history, drawn to a PNG."""

from __future__ import annotations

from pathlib import Path

from kernel_core.finetune.plot import loss_curves, plot_losses

HISTORY = [
    {"step": 1, "loss": 2.0, "grad_norm": 1.0, "learning_rate": 1e-3},
    {"step": 2, "loss": 1.5, "grad_norm": 1.0, "learning_rate": 1e-3},
    {"step": 2, "eval_loss": 1.7, "eval_runtime": 0.1},
    {"step": 2, "train_loss": 1.75, "train_runtime": 3.0},  # the summary record draws nothing
]


def test_curves_come_from_the_log_history() -> None:
    assert loss_curves(HISTORY) == {"train": [(1, 2.0), (2, 1.5)], "eval": [(2, 1.7)]}


def test_the_plot_is_a_png_written_whole(tmp_path: Path) -> None:
    path = plot_losses(HISTORY, tmp_path / "loss.png")
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert [p.name for p in tmp_path.iterdir()] == ["loss.png"]  # no staging left beside it


def test_an_empty_history_still_draws_axes(tmp_path: Path) -> None:
    assert plot_losses([], tmp_path / "loss.png").stat().st_size > 0

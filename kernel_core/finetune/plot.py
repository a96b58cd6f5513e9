"""``loss.png``: the train and eval loss curves of a run, drawn from ``Trainer``'s log history, so the
first look at a finished run needs no TensorBoard."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kernel_core.atomic import atomic_files

LOSS_PLOT = "loss.png"


def loss_curves(log_history: Sequence[Mapping[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """``{"train": [(step, loss)...], "eval": [...]}`` from ``TrainerState.log_history``."""
    curves: dict[str, list[tuple[int, float]]] = {"train": [], "eval": []}
    for record in log_history:
        if "loss" in record:
            curves["train"].append((int(record["step"]), float(record["loss"])))
        if "eval_loss" in record:
            curves["eval"].append((int(record["step"]), float(record["eval_loss"])))
    return curves


def plot_losses(log_history: Sequence[Mapping[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Draw the curves into the PNG file ``path`` (written atomically) and return it."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed, and never a GUI backend's side effects
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    path = Path(path)
    curves = loss_curves(log_history)
    figure = Figure(figsize=(7, 4), dpi=100)
    axes = figure.add_subplot()
    for label, points, style in (("train loss", curves["train"], "-"), ("eval loss", curves["eval"], "o-")):
        if points:
            steps, losses = zip(*points, strict=True)
            axes.plot(steps, losses, style, label=label, markersize=4)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("loss (mean per target token)")
    axes.grid(alpha=0.3)
    if curves["train"] or curves["eval"]:
        axes.legend()
    figure.tight_layout()
    with atomic_files(path.parent, path.name) as staging:
        figure.savefig(staging / path.name, format="png")
    return path

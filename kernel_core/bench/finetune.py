"""``kcore bench finetune``: LoRA training steps with our PEFT and with Hugging Face ``peft`` (the
oracle), gradient checkpointing off and on, each configuration in a fresh subprocess
(:mod:`kernel_core.bench.finetune_worker`) so that every peak RSS is that configuration's own.

Reported: seconds per step (median, the first step excluded), peak RSS and the loss of every step;
ratios ours / peft per checkpointing setting (issue 4, point 8: step time <= 1.0 at no more peak
memory) and the largest difference between the two loss curves (<= 1e-4).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from kernel_core.bench.finetune_worker import OURS, PEFT, WorkerConfig
from kernel_core.bench.report import Ratio, _table
from kernel_core.errors import KernelCoreError

_ISSUE = "issue 4, point 8 (peft 0.21.2, fp32, 2 cores)"
#: What the issue's reference numbers were measured with: only then do they compare with a run.
REFERENCE_SETTINGS = {"batch_size": 8, "seq_len": 256, "r": 16, "lora_alpha": 32}
TARGET_STEP_RATIO = 1.0
TARGET_MEMORY_RATIO = 1.0
TARGET_LOSS_DIFFERENCE = 1e-4
GB = 1e9


@dataclass(frozen=True)
class FinetuneReference:
    """peft's numbers from the issue: measured on this machine type, not in this run."""

    config: str
    gradient_checkpointing: bool
    seconds_per_step: float
    peak_rss_gb: float
    source: str = _ISSUE

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "measured_in_this_run": False}


REFERENCES = (
    FinetuneReference("peft 0.21.2, GC off", False, seconds_per_step=18.0, peak_rss_gb=8.5),
    FinetuneReference("peft 0.21.2, GC on", True, seconds_per_step=22.5, peak_rss_gb=4.5),
)


@dataclass(frozen=True)
class LossCheck:
    """The largest ``|loss ours - loss peft|`` over the steps of one checkpointing setting."""

    label: str
    value: float
    at_most: float = TARGET_LOSS_DIFFERENCE

    @property
    def met(self) -> bool:
        return self.value <= self.at_most

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "value": self.value, "target": f"<= {self.at_most:g}", "met": self.met}


@dataclass(frozen=True)
class FinetuneReport:
    settings: dict[str, Any]
    #: True when the settings are the ones the reference numbers were measured with.
    comparable: bool
    results: list[dict[str, Any]]
    ratios: dict[str, Ratio]
    loss_checks: dict[str, LossCheck]

    def to_dict(self) -> dict[str, Any]:
        return {
            "benchmark": "finetune", **self.settings, "comparable_with_references": self.comparable,
            "results": self.results,
            "references": [r.to_dict() for r in REFERENCES],
            "ratios": {key: ratio.to_dict() for key, ratio in self.ratios.items()},
            "loss_checks": {key: check.to_dict() for key, check in self.loss_checks.items()},
        }


def benchmark(
    template: WorkerConfig,
    gradient_checkpointing: Sequence[bool],
    skip_peft: bool = False,
    reference_model: bool = True,
) -> FinetuneReport:
    """Every (checkpointing setting, side) of ``template`` in its own subprocess, ours first, then
    the ratios and loss-curve checks of the settings that ran both sides. ``reference_model`` says
    whether the model is the one the reference numbers were measured on (SmolLM2-135M)."""
    sides = [OURS] if skip_peft else [OURS, PEFT]
    if not skip_peft and importlib.util.find_spec("peft") is None:
        raise KernelCoreError("the peft baseline needs the 'peft' package: pip install peft, or pass --skip-peft")
    results = [
        run_config(replace(template, side=side, gradient_checkpointing=gc))
        for gc in gradient_checkpointing
        for side in sides
    ]
    ratios: dict[str, Ratio] = {}
    checks: dict[str, LossCheck] = {}
    for gc in gradient_checkpointing:
        name = f"gc_{'on' if gc else 'off'}"
        ours = _find(results, OURS, gc)
        theirs = _find(results, PEFT, gc) if not skip_peft else None
        if theirs is not None:
            ratios[f"step_time_{name}"] = Ratio(
                f"s/step, {OURS} / peft, GC {_on(gc)} (this run)",
                ours["seconds_per_step"], theirs["seconds_per_step"], at_most=TARGET_STEP_RATIO,
            )
            ratios[f"peak_rss_{name}"] = Ratio(
                f"peak RSS, {OURS} / peft, GC {_on(gc)} (this run)",
                ours["peak_rss_bytes"], theirs["peak_rss_bytes"], at_most=TARGET_MEMORY_RATIO,
            )
            checks[name] = LossCheck(
                f"max |loss {OURS} - loss peft| over {len(ours['losses'])} steps, GC {_on(gc)}",
                max(abs(a - b) for a, b in zip(ours["losses"], theirs["losses"], strict=True)),
            )
        reference = next(r for r in REFERENCES if r.gradient_checkpointing == gc)
        ratios[f"step_time_{name}_vs_reference"] = Ratio(
            f"s/step, {OURS} / {reference.config} (reference, not this run)",
            ours["seconds_per_step"], reference.seconds_per_step,
        )
        ratios[f"peak_rss_{name}_vs_reference"] = Ratio(
            f"peak RSS, {OURS} / {reference.config} (reference, not this run)",
            ours["peak_rss_bytes"] / GB, reference.peak_rss_gb,
        )
    settings = {
        **{k: v for k, v in asdict(template).items() if k not in ("side", "gradient_checkpointing")},
        "gradient_checkpointing": [_on(gc) for gc in gradient_checkpointing],
        "skip_peft": skip_peft,
        "dtype": "float32",
        "optimizer": "AdamW",
        "target_modules": "all-linear",
        "lora_dropout": 0.0,
    }
    comparable = reference_model and all(getattr(template, k) == v for k, v in REFERENCE_SETTINGS.items())
    return FinetuneReport(settings, comparable, results, ratios, checks)


def run_config(config: WorkerConfig) -> dict[str, Any]:
    """One configuration in a fresh ``python -m kernel_core.bench.finetune_worker``; its progress
    goes to our stderr, its result comes back through a JSON file."""
    print(f"kcore bench finetune: {config.label}, {config.steps} steps", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="kcore-bench-finetune-") as folder:
        out = Path(folder) / "result.json"
        command = [sys.executable, "-m", "kernel_core.bench.finetune_worker", *config.argv(), "--out", str(out)]
        completed = subprocess.run(command, stdout=2, check=False)  # our stdout is for the report
        if completed.returncode != 0 or not out.is_file():
            raise KernelCoreError(
                f"the {config.label} run failed (exit status {completed.returncode}; its error is above): "
                + " ".join(command)
            )
        return json.loads(out.read_text())


def _find(results: list[dict[str, Any]], side: str, gc: bool) -> dict[str, Any]:
    return next(r for r in results if r["side"] == side and r["gradient_checkpointing"] == gc)


def _on(gc: bool) -> str:
    return "on" if gc else "off"


def render(report: FinetuneReport) -> str:
    """Measured table, per-step losses, labelled references, ratios, loss-curve checks."""
    s = report.settings
    title = (
        f"finetune benchmark: LoRA r={s['r']} alpha {s['lora_alpha']} on all linear layers, "
        f"batch {s['batch_size']} x {s['seq_len']} tokens, fp32, AdamW lr {s['lr']:g}, {s['steps']} steps, "
        f"each configuration in its own process: measured in this run"
    )
    measured = _table(
        ["config", "s/step", "peak RSS GB", "first loss", "final loss", "trainable params", "threads"],
        [
            [r["config"], r["seconds_per_step"], r["peak_rss_bytes"] / GB, _loss(r["losses"][0]),
             _loss(r["final_loss"]), r["trainable_parameters"], r["threads_used"]]
            for r in report.results
        ],
    )
    curves = _table(
        ["step", *(r["config"] for r in report.results)],
        [[step + 1, *(_loss(r["losses"][step]) for r in report.results)] for step in range(s["steps"])],
    )
    references = _table(
        ["config", "s/step", "peak RSS GB", "source"],
        [[r.config, r.seconds_per_step, r.peak_rss_gb, r.source] for r in REFERENCES],
    )
    parts = [title, measured, "Loss per step", curves, "Reference numbers (NOT measured in this run)", references]
    parts += [
        "Ratios (targets: s/step <= 1.0 at no more peak RSS than peft in the same run)",
        _table(
            ["ratio", "value", "target", "met"],
            [[r.label, r.value, r.target, r.met] for r in report.ratios.values()],
        ),
    ]
    if report.loss_checks:
        parts += [
            "Loss curves (target: the same curve, within 1e-4 at every step)",
            _table(
                ["check", "value", "target", "met"],
                [[c.label, f"{c.value:.2e}", f"<= {c.at_most:g}", c.met] for c in report.loss_checks.values()],
            ),
        ]
    if not report.comparable:
        parts.append("note: model or settings differ from the references' (SmolLM2-135M, batch 8 x 256, r 16, "
                     "alpha 32), so the comparisons with reference numbers mean nothing")
    return "\n\n".join(parts) + "\n"


def _loss(value: float) -> str:
    return f"{value:.6f}"


def write_json(report: FinetuneReport, path: str | os.PathLike[str]) -> None:
    Path(path).write_text(json.dumps(report.to_dict(), indent=2) + "\n")

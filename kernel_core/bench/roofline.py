"""``kcore bench roofline``: the physical limit of W1 on this machine (issue 16, point 1).

One W1 run computes a known list of GEMMs: every layer's fused projections (q/k/v, o, gate/up,
down) at the row count of each engine step, and ``lm_head`` at each step's sampling rows. The
steps follow from the engine's scheduling settings, so :func:`schedule` replays the scheduler
(first come first served, all requests arriving at once, running requests first, prompts chunked
to the step's token budget) on W1's tokenized prompts. Each distinct shape is then timed per dtype
with every GEMM path torch offers here, and W1's floor is the sum over shapes of their time at the
best path: what W1's GEMMs alone cost if every one ran at the best rate this machine showed for its
shape. Attention, norms, sampling and Python are not in the floor; attention's FLOPs are reported
beside it so a measured time far above the floor can be read.
"""

from __future__ import annotations

import gc
import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kernel_core.bench import build_engine, call_seconds, run_engine, settings
from kernel_core.bench.machine import NATIVE_FLAGS, describe_cpu, dtype_support, summary
from kernel_core.bench.report import Ratio, _table
from kernel_core.bench.workloads import Workload
from kernel_core.errors import KernelCoreError

#: Issue 16, point 2: W1 within 1.5x of its GEMM floor, in every dtype.
TARGET_MEASURED_VS_FLOOR = 1.5
#: Each shape and path is timed for at least this long (and 3 calls): the default run stays ~2 minutes.
DEFAULT_MIN_SECONDS = 0.05
#: The GEMM paths timed: torch's ``F.linear`` (MKL for float32 here), oneDNN's linear on the weight as
#: it is (a private torch op, timed for comparison) and the engine's: the selected platform's GEMM
#: policy on the weight it prepared (oneDNN on packed weights on the CPU platform; packing not timed).
PATHS = ("F.linear", "onednn", "engine")


@dataclass(frozen=True)
class Projection:
    """One GEMM of the model: ``[rows, in_features] @ [in_features, out_features]``."""

    name: str
    in_features: int
    out_features: int


@dataclass(frozen=True)
class Step:
    """One engine step: the token rows every layer computes, and the requests that sample a token."""

    rows: int
    sampled: int


@dataclass(frozen=True)
class Gemm:
    """A projection at one row count, and how many times one W1 run computes it."""

    name: str
    rows: int
    in_features: int
    out_features: int
    calls: int

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.rows, self.in_features, self.out_features)

    @property
    def flops(self) -> int:
        """Multiply-adds of every call, two FLOPs each."""
        return 2 * self.rows * self.in_features * self.out_features * self.calls


def projections(config: Any) -> tuple[list[Projection], Projection]:
    """A dense decoder's per-layer GEMMs as the engine fuses them, and ``lm_head``, from its HF config."""
    from kernel_core.modeling import AttentionHeads

    if getattr(config, "num_local_experts", None) or getattr(config, "num_experts", None):
        raise KernelCoreError("kcore bench roofline models dense decoders; this model has MoE layers")
    heads = AttentionHeads.from_config(config)
    hidden, intermediate = config.hidden_size, config.intermediate_size
    q, kv = heads.num_heads * heads.head_size, heads.num_kv_heads * heads.head_size
    layer = [
        Projection("qkv_proj", hidden, q + 2 * kv),
        Projection("o_proj", q, hidden),
        Projection("gate_up_proj", hidden, 2 * intermediate),
        Projection("down_proj", intermediate, hidden),
    ]
    return layer, Projection("lm_head", hidden, config.vocab_size)


def schedule(
    prompt_lengths: Sequence[int], max_tokens: int, max_num_batched_tokens: int, max_num_seqs: int
) -> list[Step]:
    """The steps the engine's scheduler makes when all requests arrive at once (FCFS, no preemption,
    no prefix-cache hits): running requests first, each its remaining tokens within the budget, then
    waiting ones while budget and sequence slots last. A request samples when its step computes its
    last token; it finishes after ``max_tokens`` samples (ignore_eos), its last token never computed."""
    waiting = [[length, 0, 0] for length in prompt_lengths]  # prompt tokens, computed, generated
    running: list[list[int]] = []
    steps = []
    while waiting or running:
        budget, scheduled = max_num_batched_tokens, []
        for request in running:
            if budget == 0:
                break
            new = min(request[0] + request[2] - request[1], budget)
            scheduled.append((request, new))
            budget -= new
        while waiting and budget and len(running) < max_num_seqs:
            request = waiting.pop(0)
            running.append(request)
            new = min(request[0], budget)
            scheduled.append((request, new))
            budget -= new
        sampled = 0
        for request, new in scheduled:
            request[1] += new
            if request[1] == request[0] + request[2]:
                sampled += 1
                request[2] += 1
                if request[2] == max_tokens:
                    running.remove(request)
        steps.append(Step(sum(new for _, new in scheduled), sampled))
    return steps


def w1_gemms(layer: Sequence[Projection], head: Projection, num_layers: int, steps: Sequence[Step]) -> list[Gemm]:
    """Every GEMM of the steps, one entry per projection and row count, with its number of calls."""
    calls: Counter[tuple[Projection, int]] = Counter()
    for step in steps:
        for projection in layer:
            calls[projection, step.rows] += num_layers
        if step.sampled:
            calls[head, step.sampled] += 1
    return [Gemm(p.name, rows, p.in_features, p.out_features, n) for (p, rows), n in calls.items()]


def attention_flops(config: Any, prompt_lengths: Sequence[int], max_tokens: int) -> int:
    """FLOPs of causal attention (scores and weighted values) over every computed position: a token at
    position p attends to p + 1 keys in each layer (sliding windows not modelled)."""
    from kernel_core.modeling import AttentionHeads

    heads = AttentionHeads.from_config(config)
    keys = sum(n * (n + 1) // 2 for n in (length + max_tokens - 1 for length in prompt_lengths))
    return 4 * heads.num_heads * heads.head_size * config.num_hidden_layers * keys


def floor_seconds(gemms: Sequence[Gemm], seconds: Mapping[tuple[int, int, int], float | None]) -> float | None:
    """Seconds of every call of ``gemms`` at the time measured for its shape; None if a shape has none."""
    total = 0.0
    for gemm in gemms:
        time = seconds.get(gemm.shape)
        if time is None:
            return None
        total += gemm.calls * time
    return total


def gemm_paths() -> dict[str, tuple[Callable[[Any], Any], Callable[[Any, Any], Any]]]:
    """``(prepare(weight), (x, prepared) -> x @ weight.T)`` for each path of :data:`PATHS` this torch
    build has; ``prepare`` runs once per weight, outside the timing, as the engine does at load."""
    import torch
    import torch.nn.functional as F

    from kernel_core.platforms import select_platform

    def as_is(weight: Any) -> Any:
        return weight

    policy = select_platform().platform.linear_policy()
    paths: dict[str, tuple[Callable[[Any], Any], Callable[[Any, Any], Any]]] = {
        "F.linear": (as_is, F.linear), "engine": (policy.prepare, policy.linear),
    }
    if torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        paths["onednn"] = (as_is, lambda x, w: torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], ""))
    return {name: paths[name] for name in PATHS if name in paths}


def time_shapes(
    shapes: Sequence[tuple[int, int, int]], dtype: str, min_seconds: float
) -> dict[str, dict[tuple[int, int, int], float | None]]:
    """Seconds of one GEMM per path and shape ``(rows, in, out)`` in ``dtype``, the fastest call: the
    rate the machine reaches undisturbed (on a shared machine a median measures the other load too).
    None where the path refuses the dtype (oneDNN's float16 without hardware support)."""
    import torch

    generator = torch.Generator().manual_seed(0)
    paths = gemm_paths()
    timings: dict[str, dict[tuple[int, int, int], float | None]] = {path: {} for path in paths}
    for rows, in_features, out_features in shapes:
        x = torch.randn(rows, in_features, generator=generator).to(getattr(torch, dtype))
        weight = torch.randn(out_features, in_features, generator=generator).to(x.dtype)
        for path, (prepare, gemm) in paths.items():

            @torch.inference_mode()
            def run(gemm: Callable[[Any, Any], Any] = gemm, prepared: Any = prepare(weight)) -> Any:
                return gemm(x, prepared)

            try:
                timings[path][rows, in_features, out_features] = min(call_seconds(run, min_seconds))
            except RuntimeError:
                timings[path][rows, in_features, out_features] = None
    return timings


def default_dtypes(cpu: Mapping[str, Any]) -> list[str]:
    """float32 and bfloat16, and float16 where the CPU computes it natively."""
    native_fp16 = set(NATIVE_FLAGS["float16"]) & set(cpu["flags"].split())
    return ["float32", "bfloat16", *(["float16"] if native_fp16 else [])]


def benchmark(
    folder: Path,
    workload: Workload,
    options: Mapping[str, Any],
    dtypes: Sequence[str],
    *,
    measure: bool = False,
    min_seconds: float = DEFAULT_MIN_SECONDS,
) -> dict[str, Any]:
    """W1's GEMMs and floor per dtype on this machine; with ``measure``, W1 on our engine beside each."""
    import torch
    from transformers import AutoConfig, AutoTokenizer

    from kernel_core.config import EngineConfig

    config = AutoConfig.from_pretrained(folder)
    engine = EngineConfig(model=str(folder), **options)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    lengths = [len(ids) for ids in tokenizer(workload.prompts, add_special_tokens=False)["input_ids"]]
    steps = schedule(lengths, workload.max_tokens, engine.max_num_batched_tokens, engine.max_num_seqs)
    layer, head = projections(config)
    gemms = w1_gemms(layer, head, config.num_hidden_layers, steps)
    shapes = sorted({g.shape for g in gemms}, key=lambda s: (-s[0] * s[1] * s[2], s))
    cpu = describe_cpu()
    report: dict[str, Any] = {
        "benchmark": "roofline",
        **settings(folder, workload, options),
        "full_workload": workload.full,
        "cpu": cpu,
        "torch_threads": torch.get_num_threads(),
        #: 1, 5 and 15 minute load averages before and after: other processes make GEMMs look slower.
        "load_average": {"start": list(os.getloadavg())},
        "schedule": {
            "max_num_batched_tokens": engine.max_num_batched_tokens, "max_num_seqs": engine.max_num_seqs,
            "steps": len(steps), "steps_with_prefill": sum(s.rows > s.sampled for s in steps),
            "prompt_tokens": sum(lengths), "rows": sum(s.rows for s in steps),
            "sampled_rows": sum(s.sampled for s in steps),
        },
        "gemms": [{**asdict(g), "flops": g.flops} for g in gemms],
        "gemm_flops": sum(g.flops for g in gemms),
        "attention_flops": attention_flops(config, lengths, workload.max_tokens),
        "dtypes": {},
    }
    for dtype in dtypes:
        timings = time_shapes(shapes, dtype, min_seconds)
        best = {
            shape: min((t for t in (by_shape[shape] for by_shape in timings.values()) if t is not None), default=None)
            for shape in shapes
        }
        floor = floor_seconds(gemms, best)
        result: dict[str, Any] = {
            "dtype_support": dtype_support(dtype, cpu),
            "timings": [
                {"rows": s[0], "in_features": s[1], "out_features": s[2], "path": path, "seconds": by_shape[s],
                 "gflop_s": None if by_shape[s] is None else 2e-9 * s[0] * s[1] * s[2] / by_shape[s]}
                for path, by_shape in timings.items() for s in shapes
            ],
            "floor_s": floor,
            "floor_by_path_s": {path: floor_seconds(gemms, by_shape) for path, by_shape in timings.items()},
            "floor_gflop_s": None if floor is None else report["gemm_flops"] / floor * 1e-9,
        }
        if measure:
            measured, _ = run_engine(build_engine(folder, {**options, "dtype": dtype}), workload)
            gc.collect()
            result["measured"] = {**measured.to_dict(), "dtype": dtype}
            if floor is not None:
                result["measured_vs_floor"] = Ratio(
                    f"W1 seconds, measured / GEMM floor, {dtype}", measured.seconds, floor,
                    at_most=TARGET_MEASURED_VS_FLOOR,
                ).to_dict()
        report["dtypes"][dtype] = result
    report["load_average"]["end"] = list(os.getloadavg())
    return report


def render(report: Mapping[str, Any]) -> str:
    """Per dtype, each shape's rate per path; then each dtype's floor, and the measured time beside it."""
    s = report["schedule"]
    parts = [
        f"roofline benchmark, {report['workload']}: W1's GEMMs timed in this run, "
        f"{report['torch_threads']} torch threads\n{summary(report['cpu'])}\nload average (1, 5, 15 min): "
        + ", then ".join(" ".join(f"{x:.2f}" for x in report["load_average"][k]) for k in ("start", "end")),
        f"schedule: {s['steps']} steps ({s['steps_with_prefill']} with prefill) at max_num_batched_tokens "
        f"{s['max_num_batched_tokens']}, max_num_seqs {s['max_num_seqs']}: {s['prompt_tokens']} prompt tokens, "
        f"{s['rows']} token rows, {s['sampled_rows']} lm_head rows\n"
        f"GEMM FLOPs {report['gemm_flops'] / 1e9:.1f} G; attention FLOPs {report['attention_flops'] / 1e9:.1f} G "
        "(not GEMMs with weights: not in the floor)",
    ]
    names = {(g["rows"], g["in_features"], g["out_features"]): g for g in report["gemms"]}
    paths = list(dict.fromkeys(t["path"] for r in report["dtypes"].values() for t in r["timings"]))
    summary_rows = []
    for dtype, result in report["dtypes"].items():
        rate = {(t["path"], t["rows"], t["in_features"], t["out_features"]): t["gflop_s"] for t in result["timings"]}
        rows = []
        for shape in dict.fromkeys((t["rows"], t["in_features"], t["out_features"]) for t in result["timings"]):
            gemm = names[shape]
            rates = [rate.get((path, *shape)) for path in paths]
            present = [r for r in rates if r is not None]
            best = paths[rates.index(max(present))] if present else None
            rows.append([gemm["name"], *shape, gemm["calls"], gemm["flops"] / 1e9, *rates, best])
        parts += [
            f"{dtype}: GFLOP/s per path ({result['dtype_support']})",
            _table(["gemm", "rows", "in", "out", "calls", "GFLOP", *paths, "best"], rows),
        ]
        measured = result.get("measured")
        ratio = result.get("measured_vs_floor")
        summary_rows.append([
            dtype, result["floor_s"], result["floor_gflop_s"], *(result["floor_by_path_s"].get(p) for p in paths),
            measured["seconds"] if measured else None, ratio["value"] if ratio else None,
            ratio["met"] if ratio else None,
        ])
    parts += [
        f"W1's GEMM floor: seconds at the best path per shape (GFLOP/s over all), and if every GEMM took one "
        f"path; measured: W1 on our engine (--measure); target measured / floor <= {TARGET_MEASURED_VS_FLOOR:g}",
        _table(
            ["dtype", "floor s", "GFLOP/s", *(f"{p} s" for p in paths), "measured s", "measured / floor", "met"],
            summary_rows,
        ),
    ]
    if not report["full_workload"]:
        parts.append("note: reduced workload, the floor is that of the reduced run")
    return "\n\n".join(parts) + "\n"

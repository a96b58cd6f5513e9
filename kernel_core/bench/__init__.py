"""Benchmarks of kernel-core's engine on the shared reference workloads (issue 3, point 8).

This module holds what every benchmark shares: building our engine and timing one workload on it.
torch and transformers are imported inside the functions, so loading the package stays cheap.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kernel_core.bench.report import Measurement
from kernel_core.bench.workloads import Workload
from kernel_core.errors import KernelCoreError

if TYPE_CHECKING:
    from kernel_core.llm import LLM
    from kernel_core.outputs import RequestOutput
    from kernel_core.sampling_params import SamplingParams

ENGINE_NAME = "kernel-core"


def greedy(max_tokens: int) -> SamplingParams:
    """Greedy and ignore_eos, as the anchor runs vLLM: every request yields exactly ``max_tokens``."""
    from kernel_core.sampling_params import SamplingParams

    return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)


def build_engine(folder: Path, options: Mapping[str, Any]) -> LLM:
    """Our engine, warmed up: the first steps pay one-off costs (allocation, lazy set-up) that serving does not."""
    from kernel_core.llm import LLM

    llm = LLM(str(folder), **options)
    llm.generate(["warm up"], greedy(4))
    return llm


def run_engine(
    llm: LLM, workload: Workload, engine: str = ENGINE_NAME, adapters: list[str | None] | None = None
) -> tuple[Measurement, list[RequestOutput]]:
    """Submit all of the workload at once and time it to the last token; a failed request fails the run.

    ``adapters`` names the LoRA adapter of each prompt (None: the base model), as ``LLM.generate`` takes it.
    """
    start = time.perf_counter()
    outputs = llm.generate(workload.prompts, greedy(workload.max_tokens), adapter=adapters, use_tqdm=True)
    seconds = time.perf_counter() - start
    errors = [(o.request_id, c.error) for o in outputs for c in o.outputs if c.finish_reason == "error"]
    if errors:
        raise KernelCoreError(f"{len(errors)} {workload.name} requests failed on {engine}, first: {errors[0][1]}")
    measurement = Measurement(
        engine=engine,
        workload=workload.name,
        requests=len(outputs),
        prompt_tokens=sum(len(o.prompt_token_ids) for o in outputs),
        output_tokens=sum(len(c.token_ids) for o in outputs for c in o.outputs),
        seconds=seconds,
    )
    return measurement, outputs


def call_seconds(run: Callable[[], Any], min_seconds: float = 0.5, min_calls: int = 3) -> list[float]:
    """Seconds of each call of ``run()``, called until ``min_seconds`` have passed and at least ``min_calls``
    times, after one untimed call: one-off allocations and lazy set-up are not what a serving step pays."""
    run()
    seconds: list[float] = []
    while len(seconds) < min_calls or sum(seconds) < min_seconds:
        start = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - start)
    return seconds


def median_seconds(run: Callable[[], Any], min_seconds: float = 0.5, min_calls: int = 3) -> float:
    """The median of :func:`call_seconds`: a call's typical time."""
    return statistics.median(call_seconds(run, min_seconds, min_calls))


def dtype_settings(dtype: str) -> dict[str, Any]:
    """What a report records about its dtype: the dtype, the CPU, and whether the CPU computes that
    dtype natively (a bfloat16 number means something else without bf16 dot products)."""
    from kernel_core.bench.machine import describe_cpu, dtype_support

    cpu = describe_cpu()
    return {"dtype": dtype, "cpu": cpu, "dtype_support": dtype_support(dtype, cpu)}


def settings(folder: Path, workload: Workload, options: Mapping[str, Any]) -> dict[str, Any]:
    """What a report records about its run, so a JSON file says what it measured."""
    return {
        "workload": workload.name,
        "workload_file": str(workload.source),
        "model": str(folder),
        "num_prompts": len(workload.prompts),
        "max_tokens": workload.max_tokens,
        "engine_config": dict(options),
    }

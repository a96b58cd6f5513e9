"""Where a W1 run's time goes on our engine (issue #16): per-phase wall-clock timers over a whole run,
then ``torch.profiler``'s top operators over a shorter one.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/profile_w1.py --dtype bfloat16 [--attention-backend cpu]

Phases: scheduling (``Scheduler.schedule``), input prep (``ModelRunner.prepare``), attention (the
backend's ``forward``, KV writes included), embedding/GEMMs/norms (the rest of the model's forward),
logits + sampling, detokenize + stop checks (``_append``), and whatever else the step loop spends.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch

from kernel_core.bench import build_engine, run_engine
from kernel_core.bench.workloads import locate, workload
from kernel_core.models.resolve import resolve_model


def timed(totals: dict[str, float], phase: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """``function``, adding its wall-clock seconds to ``totals[phase]``."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            totals[phase] += time.perf_counter() - start

    return wrapper


def instrument(engine: Any) -> dict[str, float]:
    """Wrap the engine's phases in timers (instance attributes shadow the methods)."""
    totals: dict[str, float] = defaultdict(float)
    attention = engine.components.attention
    attention.forward = timed(totals, "attention", attention.forward)
    engine.scheduler.schedule = timed(totals, "scheduling", engine.scheduler.schedule)
    worker = engine.executor.worker  # the uniproc executor's worker, in this process
    worker.runner.prepare = timed(totals, "input prep", worker.runner.prepare)
    worker.runner.execute = timed(totals, "model forward", worker.runner.execute)
    worker.runner.logits = timed(totals, "logits + sampling", worker.runner.logits)
    worker.sampler = timed(totals, "logits + sampling", worker.sampler)
    engine._append = timed(totals, "detokenize + stop", engine._append)
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--attention-backend", default=None)
    parser.add_argument("--num-prompts", type=int, default=None, help="of the timed run (default: all of W1)")
    parser.add_argument("--profile-prompts", type=int, default=16, help="of the torch.profiler run")
    parser.add_argument("--profile-tokens", type=int, default=32)
    args = parser.parse_args()

    folder = resolve_model("smollm2-135m-instruct")
    options = {"dtype": args.dtype, "attention_backend": args.attention_backend}
    llm = build_engine(folder, options)
    engine = llm.engine
    print(f"attention backend: {type(engine.components.attention).__name__}, threads {torch.get_num_threads()}")
    totals = instrument(engine)
    run = workload(locate(), "W1", num_prompts=args.num_prompts)
    measurement, _ = run_engine(llm, run)
    model_forward = totals.pop("model forward")
    totals["embedding/GEMMs/norms"] = model_forward - totals["attention"]
    totals["other (step loop)"] = measurement.seconds - sum(totals.values())
    print(f"\nW1 {args.dtype}: {measurement.seconds:.1f} s, {measurement.output_tok_s:.1f} output tok/s")
    for phase, seconds in sorted(totals.items(), key=lambda item: -item[1]):
        print(f"| {phase} | {seconds:.2f} | {100 * seconds / measurement.seconds:.1f}% |")

    short = workload(locate(), "W1", num_prompts=args.profile_prompts, max_tokens=args.profile_tokens)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        run_engine(llm, short)
    print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()

"""W1 output tok/s on two attention backends side by side in one process (issue #16): both engines
built and warmed first, then their runs alternate (A B A B ...), so that a change in the machine's
load hits both alike. Prints each run and the ratio of the medians.

    OMP_NUM_THREADS=1 nice -n -15 .venv/bin/python scripts/attention_ab.py --dtype bfloat16 --rounds 2
"""

from __future__ import annotations

import argparse
import os
import statistics

import torch

from kernel_core.bench import build_engine, run_engine
from kernel_core.bench.workloads import locate, workload
from kernel_core.models.resolve import resolve_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--backends", nargs=2, default=["torch", "cpu"], metavar=("A", "B"))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--num-prompts", type=int, default=None, help="default: all of W1")
    parser.add_argument("--kv-cache-memory", type=float, default=3.0, help="GiB per engine (both the same)")
    args = parser.parse_args()

    folder = resolve_model("smollm2-135m-instruct")
    engines = {
        name: build_engine(folder, {"dtype": args.dtype, "attention_backend": name, "kv_cache_memory": args.kv_cache_memory})
        for name in args.backends
    }
    run = workload(locate(), "W1", num_prompts=args.num_prompts)
    print(f"W1 ({len(run.prompts)} prompts, {run.max_tokens} tokens), {args.dtype}, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.2f}")
    rates: dict[str, list[float]] = {name: [] for name in args.backends}
    texts: dict[str, list[list[int]]] = {}
    for round_ in range(args.rounds):
        for name, llm in engines.items():
            measurement, outputs = run_engine(llm, run, engine=name)
            rates[name].append(measurement.output_tok_s)
            texts[name] = [c.token_ids for o in outputs for c in o.outputs]
            print(f"round {round_ + 1} {name}: {measurement.seconds:.1f} s, {measurement.output_tok_s:.1f} output tok/s, "
                  f"load average {os.getloadavg()[0]:.2f}")
    a, b = args.backends
    ratio = statistics.median(rates[b]) / statistics.median(rates[a])
    same = sum(x == y for xs, ys in zip(texts[a], texts[b]) for x, y in zip(xs, ys))
    total = sum(len(xs) for xs in texts[a])
    print(f"median output tok/s {a} {statistics.median(rates[a]):.1f}, {b} {statistics.median(rates[b]):.1f}: "
          f"{b}/{a} = {ratio:.2f}x; greedy tokens equal {same}/{total}")


if __name__ == "__main__":
    main()

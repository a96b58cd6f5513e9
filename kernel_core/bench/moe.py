"""``kcore bench moe``: a mid-size random mixture-of-experts model served by our engine beside HF
transformers batched ``generate`` on W1's prompts, and the MoE layer alone, our kernels beside
transformers' expert loop, in one run (only numbers from the same run compare on a shared machine).

Targets (issue 13, point 5): engine output tok/s at least 3x HF's; each kernel at least 2x the loop
at every token count from 16; int8 experts within 10% of float32's time or faster.
"""

from __future__ import annotations

import gc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kernel_core.bench import build_engine, run_engine, settings
from kernel_core.bench.machine import describe_cpu, summary
from kernel_core.bench.moe_layer import DENSE_FLOOR, HF_IMPLEMENTATIONS, LayerTiming, benchmark_layer
from kernel_core.bench.moe_model import CONFIG
from kernel_core.bench.report import Measurement, Ratio, _table, render as render_engine
from kernel_core.bench.report import Report
from kernel_core.bench.throughput import run_hf
from kernel_core.bench.workloads import Workload
from kernel_core.plugins import PluginManager

TARGET_ENGINE_VS_HF = 3.0
TARGET_LAYER_VS_LOOP = 2.0
#: Token counts from which the layer target applies (one to a few tokens is launch-bound).
LAYER_TARGET_FROM_TOKENS = 16
#: Token counts from which the dense GEMM floor bounds what an exact kernel can gain (compute-bound).
FLOOR_FROM_TOKENS = 1024
#: int8 experts may take at most this much of float32's time.
TARGET_INT8_VS_FP32 = 1.1
INT8 = " int8"


@dataclass
class MoEReport:
    """The engine comparison (None when skipped), the layer timings and the ratios judged on them."""

    cpu: dict[str, Any]
    config: dict[str, Any]
    engine: Report | None
    layer: list[LayerTiming]
    layer_ratios: dict[str, Ratio] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "benchmark": "moe",
            "cpu": self.cpu,
            "model_config": self.config,
            "engine": self.engine.to_dict() if self.engine else None,
            "layer": [t.to_dict() for t in self.layer],
            "layer_ratios": {key: ratio.to_dict() for key, ratio in self.layer_ratios.items()},
        }


def benchmark_engine(
    folder: Path, workload: Workload, options: Mapping[str, Any], hf_batch_size: int | None, int8: bool
) -> Report:
    """Our engine on the MoE model (float32 experts, then int8 ones), then HF ``generate``."""
    full, full_tokens = _engine_run(folder, workload, options, "kernel-core")
    measurements = [full]
    ratios = {}
    if int8:
        quantized, int8_tokens = _engine_run(folder, workload, {**options, "moe_quantization": "int8"}, "kernel-core int8")
        measurements.append(quantized)
        ratios["int8_vs_fp32_engine"] = Ratio(
            "output tok/s, kernel-core fp32 / int8 experts (this run)",
            full.output_tok_s, quantized.output_tok_s, at_most=TARGET_INT8_VS_FP32,
        )
        ratios["int8_greedy_agreement"] = Ratio(
            "greedy tokens of int8 experts equal to fp32's before each request's first difference / all",
            agreeing_prefix_tokens(full_tokens, int8_tokens), sum(map(len, full_tokens)),
        )
    if hf_batch_size is not None:
        hf = run_hf(folder, workload, hf_batch_size)
        measurements.append(hf)
        ratios["ours_vs_hf"] = Ratio(
            "output tok/s, kernel-core / HF (this run)", measurements[0].output_tok_s, hf.output_tok_s,
            at_least=TARGET_ENGINE_VS_HF,
        )
    return Report(
        "moe", {**settings(folder, workload, options), "hf_batch_size": hf_batch_size},
        workload.full, measurements, [], ratios,
    )


def _engine_run(
    folder: Path, workload: Workload, options: Mapping[str, Any], name: str
) -> tuple[Measurement, list[list[int]]]:
    """The measurement and each request's output tokens."""
    llm = build_engine(folder, options)
    try:
        measurement, outputs = run_engine(llm, workload, engine=name)
    finally:
        del llm
        gc.collect()  # the next side needs the memory of this one's weights and KV cache
    return measurement, [list(o.outputs[0].token_ids) for o in outputs]


def agreeing_prefix_tokens(reference: Sequence[Sequence[int]], other: Sequence[Sequence[int]]) -> int:
    """Tokens of ``other`` equal to ``reference``'s, request by request, up to the first that
    differs (after one difference greedy decoding continues another text, so later matches are luck)."""
    total = 0
    for expected, got in zip(reference, other, strict=True):
        for a, b in zip(expected, got):
            if a != b:
                break
            total += 1
    return total


def layer_ratios(timings: Sequence[LayerTiming]) -> dict[str, Ratio]:
    """Per kernel and dtype: the slowest speed-up over the loop from 16 tokens, and int8's worst
    time against the same kernel's float32 experts; per dtype, the least headroom the dense GEMM
    floor leaves over the loop from :data:`FLOOR_FROM_TOKENS` (not judged: it bounds the target)."""
    seconds = {(t.implementation, t.dtype, t.tokens): t.seconds for t in timings}
    loop = f"hf-{HF_IMPLEMENTATIONS[0]}"
    ratios = {}
    for implementation, dtype in dict.fromkeys((t.implementation, t.dtype) for t in timings):
        if not implementation.startswith("kernel:"):
            continue
        counts = [n for (i, d, n) in seconds if i == implementation and d == dtype and n >= LAYER_TARGET_FROM_TOKENS]
        if not counts:
            continue
        if implementation.endswith(INT8):
            fp32 = implementation.removesuffix(INT8)
            worst = max(counts, key=lambda n: seconds[implementation, dtype, n] / seconds[fp32, dtype, n])
            ratios[f"{implementation}/{dtype}/vs_unquantized"] = Ratio(
                f"layer time, {implementation} / {fp32}, {dtype}, worst at {worst} tokens",
                seconds[implementation, dtype, worst], seconds[fp32, dtype, worst], at_most=TARGET_INT8_VS_FP32,
            )
            continue
        worst = min(counts, key=lambda n: seconds[loop, dtype, n] / seconds[implementation, dtype, n])
        ratios[f"{implementation}/{dtype}/vs_loop"] = Ratio(
            f"layer speed, {implementation} / HF loop, {dtype}, slowest at {worst} tokens",
            seconds[loop, dtype, worst], seconds[implementation, dtype, worst], at_least=TARGET_LAYER_VS_LOOP,
        )
    for dtype in dict.fromkeys(t.dtype for t in timings):
        counts = [n for (i, d, n) in seconds if i == DENSE_FLOOR and d == dtype and n >= FLOOR_FROM_TOKENS]
        if counts and all((loop, dtype, n) in seconds for n in counts):
            least = min(counts, key=lambda n: seconds[loop, dtype, n] / seconds[DENSE_FLOOR, dtype, n])
            ratios[f"{DENSE_FLOOR}/{dtype}/headroom"] = Ratio(
                f"most an exact kernel can gain: HF loop / dense GEMM floor, {dtype}, least at {least} tokens",
                seconds[loop, dtype, least], seconds[DENSE_FLOOR, dtype, least],
            )
    return ratios


def run(
    manager: PluginManager,
    folder: Path | None,
    workload: Workload | None,
    options: Mapping[str, Any],
    hf_batch_size: int | None,
    int8: bool,
    token_counts: Sequence[int],
    dtypes: Sequence[str],
    config: dict[str, Any] = CONFIG,
) -> MoEReport:
    """The layer benchmark on ``config``'s MoE block, then (unless ``folder`` is None) the engine
    comparison on ``folder``."""
    timings = benchmark_layer(manager, token_counts, dtypes, config)
    engine = None
    if folder is not None and workload is not None:
        engine = benchmark_engine(folder, workload, options, hf_batch_size, int8)
    return MoEReport(describe_cpu(), config, engine, timings, layer_ratios(timings))


def render(report: MoEReport) -> str:
    """The CPU, the engine report, the layer table (milliseconds per call), then every ratio."""
    parts = [summary(report.cpu)]
    if report.engine is not None:
        parts.append(render_engine(report.engine).rstrip())
    implementations = list(dict.fromkeys(t.implementation for t in report.layer))
    by_key = {(t.implementation, t.dtype, t.tokens): t for t in report.layer}
    rows = []
    for dtype, tokens in dict.fromkeys((t.dtype, t.tokens) for t in report.layer):
        cells = [by_key.get((i, dtype, tokens)) for i in implementations]
        errors = [c.max_abs_error for c in cells if c and c.max_abs_error is not None]
        rows.append([dtype, tokens, *(c.seconds * 1e3 if c else None for c in cells),
                     f"{max(errors):.1e}" if errors else None])
    config = report.config
    parts += [
        f"MoE layer alone (hidden {config['hidden_size']}, expert width {config['intermediate_size']}, "
        f"{config['num_local_experts']} experts, top-{config['num_experts_per_tok']}): ms per call, this run",
        _table(["dtype", "tokens", *implementations, "max |error| vs loop"], rows),
    ]
    if report.layer_ratios:
        parts += [
            "Layer ratios (targets from 16 tokens)",
            _table(["ratio", "value", "target", "met"], [[r.label, r.value, r.target, r.met] for r in report.layer_ratios.values()]),
        ]
    return "\n\n".join(parts) + "\n"

"""``kcore bench roofline``: the GEMMs of one W1 run, their FLOPs and the floor they add up to.

The schedule, shapes and arithmetic are checked by hand on small numbers; the end-to-end run uses the
tiny model and two prompts. No timing is asserted: on a shared machine it says nothing in a test.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest
from transformers import LlamaConfig

from kernel_core.bench import roofline
from kernel_core.bench.roofline import Gemm, Projection, Step
from kernel_core.bench.workloads import default_path
from kernel_core.cli import bench
from kernel_core.errors import KernelCoreError

TINY = LlamaConfig(
    vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2,
)


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="kcore")
    bench.register(parser.add_subparsers())
    return parser.parse_args(["bench", "roofline", *argv])


def test_options_and_defaults() -> None:
    args = _parse()
    assert (args.dtypes, args.measure, args.min_seconds) == (None, False, roofline.DEFAULT_MIN_SECONDS)
    args = _parse("--dtypes", "bfloat16", "float32", "--measure", "--min-seconds", "0.5", "--max-num-seqs", "8")
    assert (args.dtypes, args.measure, args.min_seconds, args.max_num_seqs) == (["bfloat16", "float32"], True, 0.5, 8)
    with pytest.raises(SystemExit):
        _parse("--dtypes", "float64")


def test_default_dtypes_add_float16_only_where_the_cpu_computes_it() -> None:
    assert roofline.default_dtypes({"flags": "avx2 avx512_bf16"}) == ["float32", "bfloat16"]
    assert roofline.default_dtypes({"flags": "amx_bf16 amx_fp16"}) == ["float32", "bfloat16", "float16"]


def test_projections_are_the_engines_fused_gemms() -> None:
    layer, head = roofline.projections(TINY)
    assert layer == [
        Projection("qkv_proj", 64, 64 + 2 * 32),  # 4 query heads and 2 kv heads of 16
        Projection("o_proj", 64, 64),
        Projection("gate_up_proj", 64, 256),
        Projection("down_proj", 128, 64),
    ]
    assert head == Projection("lm_head", 64, 100)


def test_moe_models_are_refused() -> None:
    with pytest.raises(KernelCoreError, match="dense decoders"):
        roofline.projections(LlamaConfig(**{**TINY.to_dict(), "num_local_experts": 8}))


def test_schedule_chunks_prompts_and_runs_decodes_first() -> None:
    # budget 4: r0's prompt (5) takes two steps, r1's (3) rides in the second; each samples twice.
    assert roofline.schedule([5, 3], 2, 4, 8) == [Step(4, 0), Step(4, 2), Step(2, 2)]
    # one sequence slot: r1 waits until r0 is done; r0's last sampled token is never computed.
    assert roofline.schedule([5, 3], 2, 4, 1) == [Step(4, 0), Step(1, 1), Step(1, 1), Step(3, 1), Step(1, 1)]


def test_w1_gemms_count_every_layer_and_lm_head_on_sampling_rows() -> None:
    layer, head = roofline.projections(TINY)
    gemms = roofline.w1_gemms(layer, head, TINY.num_hidden_layers, [Step(4, 0), Step(4, 2), Step(2, 2)])
    calls = {(g.name, g.rows): g.calls for g in gemms}
    assert calls == {
        **{(p.name, 4): 4 for p in layer}, **{(p.name, 2): 2 for p in layer}, ("lm_head", 2): 2,
    }
    per_row_and_layer = 2 * (64 * 128 + 64 * 64 + 64 * 256 + 128 * 64)
    assert sum(g.flops for g in gemms) == per_row_and_layer * 2 * (4 + 4 + 2) + 2 * 64 * 100 * (2 + 2)


def test_attention_flops_count_keys_per_computed_position() -> None:
    # positions computed: prompt + max_tokens - 1, so 6 and 4: 21 + 10 keys; 4 FLOPs per key and head dim.
    assert roofline.attention_flops(TINY, [5, 3], 2) == 4 * 4 * 16 * 2 * (21 + 10)


def test_floor_is_calls_times_seconds_and_none_if_a_shape_is_missing() -> None:
    gemms = [Gemm("a", 4, 8, 16, calls=3), Gemm("b", 2, 8, 16, calls=5)]
    assert roofline.floor_seconds(gemms, {(4, 8, 16): 0.5, (2, 8, 16): 0.1}) == pytest.approx(3 * 0.5 + 5 * 0.1)
    assert roofline.floor_seconds(gemms, {(4, 8, 16): 0.5, (2, 8, 16): None}) is None
    assert Gemm("a", 4, 8, 16, calls=3).flops == 2 * 4 * 8 * 16 * 3


@pytest.mark.skipif(not default_path().is_file(), reason=f"no shared workload file at {default_path()}")
def test_end_to_end_on_the_tiny_model(tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "roofline.json"
    args = _parse(
        "--model", str(tiny_model), "--num-prompts", "2", "--max-tokens", "3", "--kv-cache-memory", "0.02",
        "--dtypes", "float32", "bfloat16", "--min-seconds", "0.001", "--measure", "--json", str(out),
    )
    assert args.func(args) == 0
    report: dict[str, Any] = json.loads(out.read_text())
    printed = capsys.readouterr().out
    schedule = report["schedule"]
    assert schedule["rows"] == schedule["prompt_tokens"] + 2 * (3 - 1) and schedule["sampled_rows"] == 2 * 3
    assert report["gemm_flops"] == sum(g["flops"] for g in report["gemms"]) > 0
    shapes = {(g["rows"], g["in_features"], g["out_features"]) for g in report["gemms"]}
    assert list(report["dtypes"]) == ["float32", "bfloat16"]
    for dtype, result in report["dtypes"].items():
        timings = result["timings"]
        paths = {t["path"] for t in timings}
        assert {"F.linear", "engine"} <= paths
        assert {(t["path"], t["rows"], t["in_features"], t["out_features"]) for t in timings} == {
            (path, *shape) for path in paths for shape in shapes
        }
        best = {}
        for t in timings:
            if t["seconds"] is not None:
                shape = (t["rows"], t["in_features"], t["out_features"])
                best[shape] = min(best.get(shape, t["seconds"]), t["seconds"])
                assert t["gflop_s"] == pytest.approx(2e-9 * shape[0] * shape[1] * shape[2] / t["seconds"])
        calls = {(g["rows"], g["in_features"], g["out_features"]): g["calls"] for g in report["gemms"]}
        assert result["floor_s"] == pytest.approx(sum(calls[s] * best[s] for s in shapes))
        assert all(s is None or s >= result["floor_s"] * (1 - 1e-9) for s in result["floor_by_path_s"].values())
        measured, ratio = result["measured"], result["measured_vs_floor"]
        assert measured["dtype"] == dtype and measured["prompt_tokens"] == schedule["prompt_tokens"]
        assert (ratio["numerator"], ratio["denominator"]) == (measured["seconds"], result["floor_s"])
        assert ratio["target"] == "<= 1.5" and result["dtype_support"] in printed
    assert "W1's GEMM floor" in printed and "reduced workload" in printed
    assert [len(report["load_average"][k]) for k in ("start", "end")] == [3, 3]

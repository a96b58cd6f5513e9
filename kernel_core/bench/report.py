"""What every benchmark prints: a table of this run's measurements, the reference numbers measured
elsewhere (labelled as such, never mixed with this run's), the ratios against targets, and JSON.

Measurement fields match the JSON lines of ``anchor_vllm.py`` so both outputs compare key by key.
JSON keeps full precision: the ratios must be recomputable from the values beside them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kernel_core.bench.machine import summary


@dataclass(frozen=True)
class Measurement:
    """One engine's timed run of one workload in this process."""

    engine: str
    workload: str
    requests: int
    prompt_tokens: int
    output_tokens: int
    seconds: float
    #: Benchmark-specific values (batch size, time to first token, hit rate), shown as extra columns.
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def output_tok_s(self) -> float:
        return self.output_tokens / self.seconds

    @property
    def total_tok_s(self) -> float:
        return (self.prompt_tokens + self.output_tokens) / self.seconds

    def to_dict(self) -> dict[str, Any]:
        return {
            "engine": self.engine, "workload": self.workload, "requests": self.requests,
            "prompt_tokens": self.prompt_tokens, "output_tokens": self.output_tokens, "seconds": self.seconds,
            "output_tok_s": self.output_tok_s, "total_tok_s": self.total_tok_s, **self.extra,
        }


@dataclass(frozen=True)
class Reference:
    """A number measured on this machine type but not in this run (DESIGN.md section 6, issue 3)."""

    engine: str
    workload: str
    source: str
    seconds: float
    output_tok_s: float | None = None
    total_tok_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "engine": self.engine, "workload": self.workload, "seconds": self.seconds,
            "output_tok_s": self.output_tok_s, "total_tok_s": self.total_tok_s, "source": self.source,
            "measured_in_this_run": False,
        }


@dataclass(frozen=True)
class Ratio:
    """``numerator / denominator`` and the target it should meet (``at_least`` or ``at_most``)."""

    label: str
    numerator: float
    denominator: float
    at_least: float | None = None
    at_most: float | None = None

    @property
    def value(self) -> float:
        return self.numerator / self.denominator

    @property
    def target(self) -> str | None:
        if self.at_least is not None:
            return f">= {self.at_least:g}"
        return f"<= {self.at_most:.3g}" if self.at_most is not None else None

    @property
    def met(self) -> bool | None:
        if self.at_least is not None:
            return self.value >= self.at_least
        return self.value <= self.at_most if self.at_most is not None else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label, "value": self.value, "numerator": self.numerator,
            "denominator": self.denominator, "target": self.target, "met": self.met,
        }


@dataclass(frozen=True)
class Report:
    """A benchmark run: its settings, measurements, references and ratios keyed by a stable name."""

    benchmark: str
    settings: dict[str, Any]
    full_workload: bool
    measurements: list[Measurement]
    references: list[Reference]
    ratios: dict[str, Ratio]

    def to_dict(self) -> dict[str, Any]:
        return {
            "benchmark": self.benchmark, **self.settings, "full_workload": self.full_workload,
            "results": [m.to_dict() for m in self.measurements],
            "references": [r.to_dict() for r in self.references],
            "ratios": {key: ratio.to_dict() for key, ratio in self.ratios.items()},
        }


def render(report: Report) -> str:
    """The human-readable report: measurements, references, ratios, then one JSON line per engine."""
    extras = list(dict.fromkeys(key for m in report.measurements for key in m.extra))
    measured = _table(
        ["engine", "requests", "prompt tok", "output tok", "seconds", "output tok/s", "total tok/s", *extras],
        [
            [m.engine, m.requests, m.prompt_tokens, m.output_tokens, m.seconds, m.output_tok_s, m.total_tok_s,
             *(m.extra.get(key) for key in extras)]
            for m in report.measurements
        ],
    )
    parts = [f"{report.benchmark} benchmark, {report.settings['workload']}: measured in this run", measured]
    if "dtype_support" in report.settings:
        parts.append(f"{summary(report.settings['cpu'])}\n{report.settings['dtype_support']}")
    if report.references:
        parts += [
            "Reference numbers (NOT measured in this run)",
            _table(
                ["engine", "workload", "seconds", "output tok/s", "total tok/s", "source"],
                [[r.engine, r.workload, r.seconds, r.output_tok_s, r.total_tok_s, r.source] for r in report.references],
            ),
        ]
    if report.ratios:
        parts += [
            "Ratios",
            _table(
                ["ratio", "value", "target", "met"],
                [[r.label, r.value, r.target, r.met] for r in report.ratios.values()],
            ),
        ]
    if not report.full_workload:
        parts.append("note: reduced workload, so the comparisons with reference numbers mean nothing")
    parts.append("\n".join(json.dumps(m.to_dict()) for m in report.measurements))
    return "\n\n".join(parts) + "\n"


def write_json(report: Report, path: str | os.PathLike[str]) -> None:
    Path(path).write_text(json.dumps(report.to_dict(), indent=2) + "\n")


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    """Plain-text table: numbers right-aligned, text left-aligned, headers aligned like their column."""
    cells = [headers, *([_cell(value) for value in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    numeric = [bool(rows) and all(_is_number(row[i]) or row[i] is None for row in rows) for i in range(len(headers))]
    lines = [
        "  ".join(text.rjust(width) if right else text.ljust(width) for text, width, right in zip(row, widths, numeric))
        for row in cells
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)

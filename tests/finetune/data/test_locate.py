"""Row index -> line in text files (blank lines, pretty-printed arrays, multi-line CSV records), and
the culprit scans that name a bad line."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from kernel_core.errors import FinetuneDataError
from kernel_core.finetune.data.locate import RowLines, csv_records, first_blank_line, json_rows, row_lines


def test_json_lines_rows_skip_blank_lines_but_count_them(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('\n{"a": 1}\n  \n\n{"a": 2}\r\n{"a": 3}')
    assert list(json_rows(path)) == [(2, {"a": 1}), (5, {"a": 2}), (6, {"a": 3})]
    assert list(row_lines(path, "json")) == [2, 5, 6]
    assert first_blank_line(path) == 1


def test_a_pretty_printed_array_gives_each_element_the_line_it_starts_on(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    rows = [{"a": 1}, {"b": [1, 2]}, "three"]
    path.write_text("\ufeff\n" + json.dumps(rows, indent=2))  # a BOM and a blank line before the array
    lines = path.read_text(encoding="utf-8-sig").split("\n")
    expected = [number for number, text in enumerate(lines, start=1) if text in ("  {", '  "three"')]
    assert list(json_rows(path)) == list(zip(expected, rows))
    assert list(row_lines(path, "json")) == expected


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("d.jsonl", '{"a": 1}\n\n{"a": 2', "d.jsonl:3: not valid JSON (Expecting ',' delimiter at column 8)"),
        ("d.json", '[\n  {"a": 1},\n  {"a": 2,}\n]', "d.json:3: not valid JSON (Expecting property name enclosed in double quotes"),
        ("d.jsonl", b'{"a": 1}\n{"a": "\xff"}\n', "d.jsonl:2: not valid UTF-8"),
    ],
)
def test_bad_json_names_its_line(tmp_path: Path, name: str, content: str | bytes, message: str) -> None:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(FinetuneDataError) as error:
        list(json_rows(path))
    assert message in str(error.value) and str(error.value).startswith(str(tmp_path))


def test_csv_records_start_lines_with_quoted_newlines_and_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text('\nprompt,completion\n"two\nlines",a\n\nb,c\n')
    assert list(csv_records(path)) == [(3, ["two\nlines", "a"]), (6, ["b", "c"])]
    assert list(row_lines(path, "csv")) == [3, 6]


def test_a_csv_record_with_more_fields_than_the_header_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("prompt,completion\na,b\nc,d,e\n")
    with pytest.raises(FinetuneDataError, match=r"d\.csv:3: 3 fields, but the header has 2 \(prompt, completion\)"):
        list(csv_records(path))


def test_row_lines_reads_forward_and_starts_over_for_an_earlier_row(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2}\n{"a": 3}\n')
    lines = RowLines(path, "json")
    assert [lines.line(0), lines.line(2), lines.line(2), lines.line(1)] == [1, 4, 4, 3]
    copy = pickle.loads(pickle.dumps(lines))  # a stream's map function goes to DataLoader workers
    assert copy.line(2) == 4
    with pytest.raises(FinetuneDataError, match="row 4 has no line"):
        lines.line(3)

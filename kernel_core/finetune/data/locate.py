"""Where a row of a text file is: ``datasets`` numbers rows, people read lines.

Only an error or a warning needs a line, so files are scanned here on those paths alone, reading
forward from the last lookup (a stream's rows are looked up in order: each file is read at most
once more). The scan also finds the culprit when ``datasets`` fails on a file with an error that
names no line (bad JSON, a row of the wrong type, a CSV record with too many fields).
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kernel_core.errors import FinetuneDataError

#: What may stand between two elements of a JSON array.
_BETWEEN_ELEMENTS = re.compile(r"[ \t\r\n,]*")


def _read_error(path: Path, exc: OSError) -> FinetuneDataError:
    return FinetuneDataError(f"data file {path} cannot be read: {exc}")


def _is_json_array(path: Path) -> bool:
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(4096), b""):
            stripped = chunk.lstrip().removeprefix(b"\xef\xbb\xbf").lstrip()
            if stripped:
                return stripped.startswith(b"[")
    return False


def json_rows(path: Path) -> Iterator[tuple[int, Any]]:
    """``(line, value)`` of each row of a JSON-lines file (blank lines skipped) or of each element of
    a JSON array, parsed; bad JSON or bad UTF-8 fails naming its line."""
    if _is_json_array(path):
        yield from _array_rows(path)
        return
    with path.open("rb") as file:
        for number, raw in enumerate(file, start=1):
            if not raw.strip():
                continue
            try:
                yield number, json.loads(raw.decode("utf-8").removeprefix("\ufeff"))
            except UnicodeDecodeError as exc:
                raise FinetuneDataError(f"{path}:{number}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
            except json.JSONDecodeError as exc:
                raise FinetuneDataError(f"{path}:{number}: not valid JSON ({exc.msg} at column {exc.colno})") from None


def _array_rows(path: Path) -> Iterator[tuple[int, Any]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
        values = json.loads(text)
    except UnicodeDecodeError as exc:
        raise FinetuneDataError(f"{path}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise FinetuneDataError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    decoder = json.JSONDecoder()
    position, line = text.index("[") + 1, 1 + text.count("\n", 0, text.index("["))
    for value in values:
        start = _BETWEEN_ELEMENTS.match(text, position).end()
        line += text.count("\n", position, start)
        yield line, value
        position = decoder.raw_decode(text, start)[1]
        line += text.count("\n", start, position)


def csv_records(path: Path) -> Iterator[tuple[int, list[str]]]:
    """``(line it starts on, fields)`` of each CSV record after the header; blank lines are
    skipped, as ``pandas`` skips them. A record with more fields than the header fails here."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as file:
            reader = csv.reader(file)
            start, header = 1, None
            for record in reader:
                if record and header is None:
                    header = record
                elif record:
                    if len(record) > len(header):
                        raise FinetuneDataError(
                            f"{path}:{start}: {len(record)} fields, but the header has {len(header)} ({', '.join(header)})"
                        )
                    yield start, record
                start = reader.line_num + 1
    except UnicodeDecodeError as exc:
        raise FinetuneDataError(f"{path}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    except csv.Error as exc:
        raise FinetuneDataError(f"{path}:{start}: not valid CSV ({exc})") from None


def row_lines(path: Path, kind: str) -> Iterator[int]:
    """The line each row of a ``json`` or ``csv`` file starts on, in order."""
    if kind == "csv":
        return (line for line, _ in csv_records(path))
    if _is_json_array(path):
        return (line for line, _ in _array_rows(path))
    return _nonblank_lines(path)


def _nonblank_lines(path: Path) -> Iterator[int]:
    with path.open("rb") as file:
        yield from (number for number, raw in enumerate(file, start=1) if raw.strip())


def first_blank_line(path: Path) -> int | None:
    """The first blank line of a file, if any."""
    with path.open("rb") as file:
        return next((number for number, raw in enumerate(file, start=1) if not raw.strip()), None)


class RowLines:
    """Row index -> line of one text file, reading forward from the previous lookup and starting
    over only when asked about an earlier row."""

    def __init__(self, path: Path, kind: str) -> None:
        self._path, self._kind = path, kind
        self._reset()

    def _reset(self) -> None:
        self._lines: Iterator[int] | None = None
        self._index, self._line = -1, 0

    def __getstate__(self) -> dict[str, Any]:
        # A stream's map function travels to DataLoader workers; an open scan does not.
        return {"_path": self._path, "_kind": self._kind}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    def line(self, index: int) -> int:
        """The 1-based line where row ``index`` (0-based) starts."""
        if self._lines is None or index < self._index:
            self._reset()
            self._lines = row_lines(self._path, self._kind)
        try:
            while self._index < index:
                self._line = next(self._lines)
                self._index += 1
        except OSError as exc:
            raise _read_error(self._path, exc) from None
        except StopIteration:
            raise FinetuneDataError(f"{self._path}: row {index + 1} has no line: the file changed while being read") from None
        return self._line

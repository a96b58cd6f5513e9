"""Sample rows of every format, and a writer of every source kind."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

#: The row formats, one row each; CSV holds only the string ones.
FORMATS = {
    "prompt-completion": {"prompt": "Capital of France:", "completion": " Paris"},
    "messages": {"messages": [{"role": "user", "content": "France?"}, {"role": "assistant", "content": "Paris"}]},
    "conversational": {
        "prompt": [{"role": "user", "content": "Capital of Italy?"}],
        "completion": [{"role": "assistant", "content": "Rome"}],
    },
    "text": {"text": "Madrid is the capital of Spain."},
}
KINDS = ("jsonl", "json", "csv", "parquet", "folder")
SUFFIX = {"jsonl": ".jsonl", "json": ".json", "csv": ".csv", "parquet": ".parquet", "folder": ""}


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(key for row in rows for key in row))


def write_source(path: Path, kind: str, rows: list[dict[str, Any]]) -> Path:
    """Write ``rows`` as a data source of ``kind`` at ``path`` (plus the kind's suffix)."""
    path = path.with_name(path.name + SUFFIX[kind])
    columns = _columns(rows)
    if kind == "jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    elif kind == "json":
        path.write_text(json.dumps(rows, indent=2))
    elif kind == "csv":
        with path.open("w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
    else:
        from datasets import Dataset

        dataset = Dataset.from_dict({column: [row.get(column) for row in rows] for column in columns})
        if kind == "parquet":
            dataset.to_parquet(str(path))
        else:
            dataset.save_to_disk(str(path))
    return path

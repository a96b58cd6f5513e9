"""``load_training_data``: every source kind and row format gives the rows ``encode_row`` makes,
errors name file and line (or row), streaming reads lazily, rows with nothing to learn are
dropped, and packing keeps every row whole."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from kernel_core.errors import FinetuneDataError
from kernel_core.finetune.data import IGNORE_INDEX, encode_row, load_training_data
from kernel_core.finetune.data.formats import clean_row

from .samples import FORMATS, KINDS, write_source

CASES = [(kind, name) for kind in KINDS for name in FORMATS if kind != "csv" or name in ("prompt-completion", "text")]
NO_ASSISTANT = {"messages": [{"role": "user", "content": "q"}]}


def _expected(rows: list[dict[str, Any]], tokenizer: Any, max_len: int | None = None) -> list[dict[str, list[int]]]:
    encoded = [encode_row(clean_row(row), tokenizer, max_len) for row in rows]
    return [{"input_ids": example.input_ids, "labels": example.labels} for example in encoded]


@pytest.mark.parametrize(("kind", "name"), CASES)
def test_every_kind_and_format_gives_the_rows_encode_row_makes(tmp_path: Path, tokenizer: Any, kind: str, name: str) -> None:
    from datasets import Dataset, IterableDataset

    rows = [FORMATS[name], FORMATS[name] if kind != "csv" else FORMATS["text"]]
    path = write_source(tmp_path / "d", kind, rows)
    dataset = load_training_data(path, tokenizer, 64)
    assert isinstance(dataset, Dataset) and len(dataset) == 2
    assert dataset.column_names == ["input_ids", "labels"]
    assert list(dataset) == _expected(rows, tokenizer, 64)
    stream = load_training_data(path, tokenizer, 64, streaming=True)
    assert isinstance(stream, IterableDataset) and stream.column_names == ["input_ids", "labels"]
    assert list(stream) == _expected(rows, tokenizer, 64)


def test_formats_mix_freely_in_one_file(tmp_path: Path, tokenizer: Any, write_jsonl: Any) -> None:
    rows = list(FORMATS.values())
    path = write_jsonl(tmp_path / "d.jsonl", [rows[0], rows[1], rows[2], rows[3]])
    assert list(load_training_data(path, tokenizer, None)) == _expected(rows, tokenizer)


@pytest.mark.parametrize("streaming", [False, True])
def test_a_bad_row_names_its_line_counting_blank_lines(tmp_path: Path, tokenizer: Any, write_jsonl: Any, streaming: bool) -> None:
    good = FORMATS["prompt-completion"]
    path = write_jsonl(tmp_path / "d.jsonl", [good, "", good, "   ", NO_ASSISTANT, good])
    message = rf"^{path}:5: 'messages' has no assistant message: there is nothing to learn$"
    if not streaming:
        with pytest.raises(FinetuneDataError, match=message):  # before any model loads
            load_training_data(path, tokenizer, 64)
        return
    rows = iter(load_training_data(path, tokenizer, 64, streaming=True))  # the bad row is not read yet
    assert [next(rows), next(rows)] == _expected([good, good], tokenizer, 64)
    with pytest.raises(FinetuneDataError, match=message):  # it fails when it is reached
        next(rows)


@pytest.mark.parametrize("streaming", [False, True])
def test_csv_json_parquet_and_folder_errors_name_the_line_or_row(tmp_path: Path, tokenizer: Any, streaming: bool) -> None:
    csv = tmp_path / "d.csv"
    csv.write_text('prompt,completion\n"a prompt\nover two lines", b\n\nc,\n')
    json = write_source(tmp_path / "d", "json", [FORMATS["text"], NO_ASSISTANT])
    rows = [FORMATS["messages"], FORMATS["messages"], NO_ASSISTANT]
    expected = {
        csv: f"{csv}:5: missing key 'completion'",
        json: f"{json}:5: 'messages' has no assistant message",  # the pretty-printed array's second element
        write_source(tmp_path / "d", "parquet", rows): "{path}: row 3: 'messages' has no assistant message",
        write_source(tmp_path / "d", "folder", rows): "{path}: row 3: 'messages' has no assistant message",
    }
    for path, message in expected.items():
        with pytest.raises(FinetuneDataError) as error:
            list(load_training_data(path, tokenizer, 64, streaming=streaming))
        assert str(error.value).startswith(message.format(path=path))


@pytest.mark.parametrize("streaming", [False, True])
def test_a_row_the_chat_template_cannot_render_names_its_line(tmp_path: Path, tokenizer: Any, write_jsonl: Any, streaming: bool) -> None:
    plain = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    plain.chat_template = None
    path = write_jsonl(tmp_path / "d.jsonl", [FORMATS["text"], FORMATS["conversational"]])
    with pytest.raises(FinetuneDataError, match=rf"^{path}:2: the model's tokenizer has no chat template"):
        list(load_training_data(path, plain, 64, streaming=streaming))


def test_rows_left_without_a_target_are_dropped_with_a_warning(
    tmp_path: Path, tokenizer: Any, write_jsonl: Any, caplog: pytest.LogCaptureFixture
) -> None:
    long, short = {"prompt": "a " * 20, "completion": " b"}, {"prompt": "a", "completion": " b"}
    path = write_jsonl(tmp_path / "d.jsonl", [long, "", short, long])
    with caplog.at_level(logging.WARNING):
        dataset = load_training_data(path, tokenizer, max_len=8)
    assert list(dataset) == _expected([short], tokenizer, 8)
    assert f"{path}: 2 row(s) have no target token within max_len 8 and are skipped (lines 1, 4)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert list(load_training_data(path, tokenizer, max_len=8, streaming=True)) == _expected([short], tokenizer, 8)
    assert f"{path}:4: no target token within max_len 8; the row is skipped" in caplog.text


@pytest.mark.parametrize("streaming", [False, True])
def test_a_file_with_no_usable_rows_is_refused_naming_it(tmp_path: Path, tokenizer: Any, write_jsonl: Any, streaming: bool) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a " * 20, "completion": " b"}])
    with pytest.raises(FinetuneDataError, match=rf"^data file {path}: no row has a target token within max_len 4"):
        load_training_data(path, tokenizer, 4, streaming=streaming)
    header_only = tmp_path / "header.csv"
    header_only.write_text("prompt,completion\n")
    with pytest.raises(FinetuneDataError, match=rf"^data file {header_only}"):
        load_training_data(header_only, tokenizer, 4, streaming=streaming)


def test_a_stream_is_read_as_it_is_iterated(tmp_path: Path, tokenizer: Any, write_jsonl: Any) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [FORMATS["text"]])
    stream = load_training_data(path, tokenizer, 64, streaming=True)
    with path.open("a") as file:
        file.write('{"prompt": "Capital of France:", "completion": " Paris"}\n')
    assert list(stream) == _expected([FORMATS["text"], FORMATS["prompt-completion"]], tokenizer, 64)


def _segments(packed: dict[str, list[int]]) -> list[tuple[list[int], list[int]]]:
    """A packed row cut where its positions start again at 0."""
    starts = [i for i, position in enumerate(packed["position_ids"]) if position == 0] + [len(packed["position_ids"])]
    return [(packed["input_ids"][a:b], packed["labels"][a:b]) for a, b in zip(starts, starts[1:])]


@pytest.mark.parametrize("streaming", [False, True])
def test_packing_keeps_every_row_whole_within_max_len(tmp_path: Path, tokenizer: Any, write_jsonl: Any,
                                                     capital_rows: list[dict[str, Any]], streaming: bool) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", capital_rows)
    packed = list(load_training_data(path, tokenizer, 48, streaming=streaming, packing=True))
    assert list(packed[0]) == ["input_ids", "labels", "position_ids"]
    assert all(len(row["input_ids"]) <= 48 for row in packed) and len(packed) < len(capital_rows)
    segments = sorted(segment for row in packed for segment in _segments(row))
    # every first label is ignored: each row's own first one already is, and within a packed row
    # it would be predicted from the previous row's last token
    assert segments == sorted((row["input_ids"], row["labels"]) for row in _expected(capital_rows, tokenizer, 48))
    assert all(labels[0] == IGNORE_INDEX for _, labels in segments)
    assert packed == list(load_training_data(path, tokenizer, 48, streaming=not streaming, packing=True))


def test_packing_needs_max_len(tmp_path: Path, tokenizer: Any, write_jsonl: Any) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [FORMATS["text"]])
    with pytest.raises(FinetuneDataError, match="packing needs max_len"):
        load_training_data(path, tokenizer, None, packing=True)

"""Sources read through ``datasets``: every kind gives its rows, errors name the file and line (or
row), ``datasets`` stays quiet and caches only under ``$KERNEL_CORE_CACHE``."""

from __future__ import annotations

from pathlib import Path

import pytest

from kernel_core.errors import FinetuneDataError
from kernel_core.finetune.data.formats import clean_row
from kernel_core.finetune.data.sources import Source

from .samples import FORMATS, KINDS, write_source

STRINGS = [FORMATS["prompt-completion"], FORMATS["text"]]


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_gives_its_rows_in_order(tmp_path: Path, kind: str) -> None:
    rows = STRINGS if kind == "csv" else [FORMATS["prompt-completion"], FORMATS["text"], FORMATS["messages"]]
    path = write_source(tmp_path / "d", kind, rows)
    source = Source.of(path)
    for streaming in (False, True):
        assert [clean_row(row) for row in source.rows(streaming=streaming)] == rows


def test_csv_cells_stay_text_and_only_an_empty_cell_is_missing(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text('prompt,completion,text\n2+2=, 4,\n"NA",null,\n,,"multi\nline"\n')
    rows = [clean_row(row) for row in Source.of(path).rows()]
    assert rows == [{"prompt": "2+2=", "completion": " 4"}, {"prompt": "NA", "completion": "null"}, {"text": "multi\nline"}]


def test_a_dataset_dict_folder_gives_its_train_split_or_says_which_splits_it_has(tmp_path: Path) -> None:
    from datasets import Dataset, DatasetDict

    train, test = Dataset.from_list([FORMATS["text"]]), Dataset.from_list([FORMATS["prompt-completion"]])
    DatasetDict({"train": train, "test": test}).save_to_disk(str(tmp_path / "both"))
    assert [clean_row(row) for row in Source.of(tmp_path / "both").rows()] == [FORMATS["text"]]
    DatasetDict({"validation": test, "test": test}).save_to_disk(str(tmp_path / "no_train"))
    with pytest.raises(FinetuneDataError, match=r"no_train has no 'train' split \(its splits: 'validation', 'test'\)"):
        Source.of(tmp_path / "no_train").rows()


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("absent.jsonl", "data file {path} does not exist"),
        ("train.txt", "data file {path}: unsupported kind '.txt'; use .jsonl, .json, .csv, .parquet, or a folder written by Dataset.save_to_disk"),
        ("train", "data file {path}: unsupported kind '(no suffix)'"),
    ],
)
def test_a_path_of_no_supported_kind_is_refused(tmp_path: Path, name: str, message: str) -> None:
    path = tmp_path / name
    if name != "absent.jsonl":
        path.write_text("prompt\tcompletion\n")
    with pytest.raises(FinetuneDataError) as error:
        Source.of(path)
    assert message.format(path=path) in str(error.value)


def test_a_folder_that_is_no_dataset_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()
    with pytest.raises(FinetuneDataError, match="notes is a folder but not a dataset written by Dataset.save_to_disk"):
        Source.of(tmp_path / "notes").rows()


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("d.jsonl", '{"prompt": "a", "completion": "b"}\n\n{"prompt": "a" "completion": "b"}\n', "d.jsonl:3: not valid JSON ("),
        ("d.jsonl", '{"prompt": "a", "completion": "b"}\n\n{"prompt": 3, "completion": "b"}\n', "d.jsonl:3: 'prompt' must be a string"),
        ("d.jsonl", '{"prompt": "a", "completion": "b"}\n["a list"]\n', "d.jsonl:2: a row must be a JSON object, got list"),
        ("d.json", '[\n  {"prompt": "a", "completion": "b"},\n  {"prompt": "a", "completion": "b"\n]', "d.json:4: not valid JSON ("),
        ("d.csv", "prompt,completion\na,b\nc,d,e\n", "d.csv:3: 3 fields, but the header has 2"),
        ("d.parquet", "not parquet", "PARQUET file {path} cannot be read by datasets: "),
        ("d.jsonl", "\n \n", "data file {path} has no rows"),
        ("d.csv", "", "data file {path} has no rows"),
    ],
)
def test_what_datasets_cannot_read_is_named_by_file_and_line(tmp_path: Path, name: str, content: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    for streaming in (False, True):
        with pytest.raises(FinetuneDataError) as error:
            list(Source.of(path).rows(streaming=streaming))
        assert message.format(path=path) in str(error.value)
        assert str(path) in str(error.value)


def test_a_file_whose_columns_match_no_shape_is_refused_naming_them(tmp_path: Path) -> None:
    for kind in ("jsonl", "csv", "parquet"):
        path = write_source(tmp_path / "qa", kind, [{"question": "q", "answer": "a"}])
        for streaming in (False, True):
            with pytest.raises(FinetuneDataError) as error:
                Source.of(path).rows(streaming=streaming)
            assert f"data file {path}: its columns ('question', 'answer') match no supported shape" in str(error.value)
    path = write_source(tmp_path / "chat", "csv", [{"messages": "[]"}])
    with pytest.raises(FinetuneDataError, match="a CSV file holds only text"):
        Source.of(path).rows()


def test_mixed_value_types_with_blank_lines_name_the_datasets_limit(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "a", "completion": "b"}\n\n' '{"prompt": [{"role": "user", "content": "q"}], "completion": [{"role": "assistant", "content": "a"}]}\n')
    with pytest.raises(FinetuneDataError, match="the file has blank lines \\(the first is line 2\\).*remove them"):
        Source.of(path).rows()
    path.write_text(path.read_text().replace("\n\n", "\n"))  # without them, the two formats mix in one file
    assert [sorted(clean_row(row)) for row in Source.of(path).rows()] == [["completion", "prompt"]] * 2


def test_where_names_a_line_or_a_row(tmp_path: Path) -> None:
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text('\n{"text": "a"}\n\n{"text": "b"}\n')
    source = Source.of(jsonl)
    assert [source.where(0), source.where(1), source.positions([0, 1])] == [f"{jsonl}:2", f"{jsonl}:4", "lines 2, 4"]
    parquet = write_source(tmp_path / "d", "parquet", [FORMATS["text"]] * 12)
    source = Source.of(parquet)
    assert source.where(0) == f"{parquet}: row 1"
    assert source.positions(list(range(12))) == "rows 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, ..."


def test_datasets_is_quiet_offline_and_caches_under_kernel_core_cache(
    tmp_path: Path, datasets_cache: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import datasets
    import datasets.load

    requests: list[tuple[object, ...]] = []
    monkeypatch.setattr(datasets.load, "get_session", lambda: type("Session", (), {"head": lambda *a, **k: requests.append(a)})())
    path = write_source(tmp_path / "d", "jsonl", STRINGS)
    capfd.readouterr()
    assert len(Source.of(path).rows()) == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a"\n')
    with pytest.raises(FinetuneDataError):
        Source.of(bad).rows()
    assert capfd.readouterr() == ("", "")  # no progress bar, no "Failed to load JSON" log line
    assert datasets.is_progress_bar_enabled() and datasets.config.HF_UPDATE_DOWNLOAD_COUNTS  # the caller's settings are back
    assert requests == []  # reading a local file does not ping the Hub to count a download
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "d.jsonl"]  # nothing beside the data
    assert any((datasets_cache / "datasets").rglob("*.arrow"))

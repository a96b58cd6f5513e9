"""Data sources read through Hugging Face ``datasets``: JSON lines, JSON, CSV, Parquet and folders
written by ``save_to_disk``, each with a way to say where a row is.

Parsed files are cached as Arrow under ``$KERNEL_CORE_CACHE/datasets`` (``datasets``' own cache,
keyed by the file and its modification time): a second run on the same file skips parsing, and a
file larger than memory is memory-mapped, not loaded. ``datasets`` shows no progress bars and logs
nothing while it reads: what goes wrong is raised here, naming the file and the line (or row).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kernel_core.errors import FinetuneDataError
from kernel_core.finetune.data.formats import clean_row, columns_problem, row_problem
from kernel_core.finetune.data.locate import RowLines, csv_records, first_blank_line, json_rows
from kernel_core.models.embedded import cache_root

#: File suffix -> the ``datasets`` builder that reads it.
SUFFIXES = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
#: What a data path may be, as errors list it.
SUPPORTED = ".jsonl, .json, .csv, .parquet, or a folder written by Dataset.save_to_disk"
#: Kinds whose rows have lines (the others are numbered by row).
TEXT_KINDS = ("json", "csv")


@contextmanager
def quiet() -> Iterator[None]:
    """For a while, ``datasets`` shows no progress bar, logs nothing (its errors are reworded here)
    and, reading a local file, does not ping the Hugging Face Hub to count a download (a request
    that can take seconds, or its timeout offline); the caller's settings come back after."""
    import datasets
    from datasets.utils import logging as datasets_logging

    level = datasets_logging.get_verbosity()
    bars_were_off = datasets.are_progress_bars_disabled()
    counts = datasets.config.HF_UPDATE_DOWNLOAD_COUNTS
    datasets_logging.set_verbosity(logging.CRITICAL)
    datasets.disable_progress_bars()
    datasets.config.HF_UPDATE_DOWNLOAD_COUNTS = False
    try:
        yield
    finally:
        datasets.config.HF_UPDATE_DOWNLOAD_COUNTS = counts
        datasets_logging.set_verbosity(level)
        if not bars_were_off:
            datasets.enable_progress_bars()


@dataclass(frozen=True)
class Source:
    """One data file or dataset folder, and the kind of reader it takes."""

    path: Path
    #: ``json``, ``csv``, ``parquet`` or ``folder``.
    kind: str
    _lines: RowLines | None = field(default=None, compare=False, repr=False)

    @classmethod
    def of(cls, path: str | Path) -> Source:
        """The source at ``path``, refused if it is absent or of no supported kind."""
        path = Path(path)
        if path.is_dir():
            return cls(path, "folder")
        if not path.exists():
            raise FinetuneDataError(f"data file {path} does not exist")
        kind = SUFFIXES.get(path.suffix.lower())
        if kind is None:
            raise FinetuneDataError(f"data file {path}: unsupported kind {path.suffix or '(no suffix)'!r}; use {SUPPORTED}")
        return cls(path, kind, RowLines(path, kind) if kind in TEXT_KINDS else None)

    # -- where a row is ----------------------------------------------------------------------------

    def position(self, index: int) -> int:
        """The line row ``index`` (0-based) starts on, or its 1-based number where rows have no lines."""
        return self._lines.line(index) if self._lines is not None else index + 1

    def where(self, index: int) -> str:
        """``path:LINE`` for files of lines, ``path: row N`` for Parquet and dataset folders."""
        if self._lines is not None:
            return f"{self.path}:{self.position(index)}"
        return f"{self.path}: row {self.position(index)}"

    def positions(self, indices: list[int], most: int = 10) -> str:
        """``lines 3, 7`` or ``rows 3, 7``: where the first ``most`` of these rows are."""
        shown = ", ".join(str(self.position(index)) for index in indices[:most])
        return f"{'lines' if self._lines is not None else 'rows'} {shown}{', ...' if len(indices) > most else ''}"

    # -- reading -----------------------------------------------------------------------------------

    def rows(self, *, streaming: bool = False) -> Any:
        """The raw rows: a ``datasets.Dataset`` with its columns checked, or with ``streaming`` an
        ``IterableDataset`` whose reading errors name their line."""
        if streaming:
            from datasets import IterableDataset

            self._load(streaming=True)  # opening fails now, not when training starts
            return IterableDataset.from_generator(_read_stream, gen_kwargs={"source": self})
        return self._load(streaming=False)

    def _load(self, *, streaming: bool) -> Any:
        with quiet():
            try:
                dataset = self._open(streaming)
            except FinetuneDataError:
                raise
            except Exception as exc:  # datasets, pyarrow and pandas raise many kinds, none naming a line
                raise self.culprit(exc) from None
        if dataset.column_names == [] or (not streaming and len(dataset) == 0):
            raise FinetuneDataError(f"data file {self.path} has no rows")
        problem = columns_problem(dataset.column_names or (), text_only=self.kind == "csv")
        if dataset.column_names is not None and problem:
            raise FinetuneDataError(f"data file {self.path}: {problem}")
        return dataset

    def _open(self, streaming: bool) -> Any:
        import datasets

        if self.kind == "folder":
            return _saved_dataset(self.path, streaming)
        options: dict[str, Any] = {}
        if self.kind == "csv":
            options = self._csv_options()
        with warnings.catch_warnings():
            # pandas only warns when a record has more fields than the header: that loses data.
            warnings.simplefilter("error", _parser_warning())
            return datasets.load_dataset(
                self.kind, data_files=str(self.path), split="train", streaming=streaming,
                cache_dir=str(cache_root() / "datasets"), **options,
            )

    def _csv_options(self) -> dict[str, Any]:
        """Every cell is text (``" 4"`` stays ``" 4"``), only an empty cell is missing (``"NA"`` is
        text), and no column becomes the index."""
        from datasets import Features, Value

        header = _csv_header(self.path)
        if header is None:
            raise FinetuneDataError(f"data file {self.path} has no rows")
        return {
            "features": Features({name: Value("string") for name in header}),
            "keep_default_na": False, "na_values": [""], "index_col": False,
        }

    def culprit(self, exc: Exception) -> FinetuneDataError:
        """The error to raise when ``datasets`` failed to read this source with ``exc``: the first
        bad line or row found by reading the file here, else ``exc`` with the file named."""
        try:
            count = 0
            if self.kind == "json":
                for count, (line, row) in enumerate(json_rows(self.path), start=1):
                    problem = row_problem(clean_row(row))
                    if problem:
                        return FinetuneDataError(f"{self.path}:{line}: {problem}")
            elif self.kind == "csv":
                count = sum(1 for _ in csv_records(self.path))
            if self.kind in TEXT_KINDS and not count:
                return FinetuneDataError(f"data file {self.path} has no rows")
        except FinetuneDataError as found:
            return found
        except OSError as error:
            return FinetuneDataError(f"data file {self.path} cannot be read: {error}")
        what = "dataset folder" if self.kind == "folder" else f"{self.kind.upper()} file"
        message = f"{what} {self.path} cannot be read by datasets: {type(exc).__name__}: {exc}"
        blank = first_blank_line(self.path) if self.kind == "json" else None
        if blank is not None:
            # datasets re-parses every line when a column mixes value types, and a blank one fails.
            message += (
                f"; every row is valid, but the file has blank lines (the first is line {blank}), which datasets "
                "cannot read in a file whose columns mix value types (e.g. text and message-list prompts): remove them"
            )
        return FinetuneDataError(message)


def _parser_warning() -> type[Warning]:
    from pandas.errors import ParserWarning

    return ParserWarning


def _csv_header(path: Path) -> list[str] | None:
    """The CSV header: its first record that is not a blank line (``None`` in an empty file)."""
    import csv

    try:
        with path.open(encoding="utf-8-sig", newline="") as file:
            return next((record for record in csv.reader(file) if record), None)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise FinetuneDataError(f"data file {path} cannot be read: {exc}") from None


def _saved_dataset(path: Path, streaming: bool) -> Any:
    """A folder written by ``Dataset.save_to_disk``, or the ``train`` split of a ``DatasetDict``'s."""
    from datasets import DatasetDict, load_from_disk

    try:
        dataset = load_from_disk(str(path))
    except FileNotFoundError:
        raise FinetuneDataError(
            f"{path} is a folder but not a dataset written by Dataset.save_to_disk or DatasetDict.save_to_disk "
            f"(data paths are {SUPPORTED})"
        ) from None
    if isinstance(dataset, DatasetDict):
        if "train" not in dataset:
            splits = ", ".join(repr(name) for name in dataset) or "none"
            raise FinetuneDataError(f"dataset folder {path} has no 'train' split (its splits: {splits}); pass the split's own folder")
        dataset = dataset["train"]
    return dataset.to_iterable_dataset() if streaming else dataset


def _read_stream(source: Source) -> Iterator[dict[str, Any]]:
    """The rows of a streamed source, one at a time; a reading error names its line."""
    with quiet():
        stream = iter(source._open(streaming=True))
    while True:
        try:
            with quiet():
                row = next(stream)
        except StopIteration:
            return
        except Exception as exc:  # as in Source._load
            raise source.culprit(exc) from None
        yield row

"""From a data path to rows ready for ``Trainer``: read (:mod:`.sources`), checked and cleaned
(:mod:`.formats`), tokenized (:mod:`.encode`), rows with nothing to learn dropped, optionally
packed (:mod:`.packing`)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Any

from kernel_core.errors import FinetuneDataError
from kernel_core.finetune.data.encode import encode_row, has_target
from kernel_core.finetune.data.formats import clean_row, row_problem
from kernel_core.finetune.data.packing import PACK_GROUP, pack_batch
from kernel_core.finetune.data.sources import Source, quiet

logger = logging.getLogger(__name__)

#: Tokenized rows are kept in memory as int32 (token ids and -100 fit).
_TOKENS = ("input_ids", "labels")


def checked_rows(source: Source) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(index, row)`` of every row of ``source``, cleaned (:func:`~.formats.clean_row`) and
    checked: a bad row fails naming its file and line (or row)."""
    for index, row in enumerate(source.rows()):
        yield index, _checked(row, index, source)


def _checked(row: Any, index: int, source: Source) -> dict[str, Any]:
    row = clean_row(row)
    problem = row_problem(row)
    if problem:
        raise FinetuneDataError(f"{source.where(index)}: {problem}")
    return row


def _encode(row: dict[str, Any], index: int, *, source: Source, tokenizer: Any, max_len: int | None) -> dict[str, Any]:
    """``datasets``' ``map`` function: one raw row in, its ids and labels out, and ``_keep``:
    whether a target token is left after truncation."""
    row = _checked(row, index, source)
    try:
        example = encode_row(row, tokenizer, max_len)
    except FinetuneDataError as exc:  # a chat template that cannot render this row
        raise FinetuneDataError(f"{source.where(index)}: {exc}") from None
    return {"input_ids": example.input_ids, "labels": example.labels, "_keep": has_target(example.labels)}


def _keep_or_warn(example: dict[str, Any], index: int, *, source: Source, max_len: int | None) -> bool:
    """A stream's filter: rows are dropped one by one as they come, each with its own warning."""
    if not example["_keep"]:
        logger.warning("%s: no target token within max_len %s; the row is skipped", source.where(index), max_len)
    return example["_keep"]


def _features(*, keep: bool = False, packed: bool = False) -> Any:
    from datasets import Features, List, Value

    columns = {name: List(Value("int32")) for name in (*_TOKENS, *(["position_ids"] if packed else []))}
    return Features({**columns, **({"_keep": Value("bool")} if keep else {})})


def load_training_data(
    path: str | os.PathLike[str], tokenizer: Any, max_len: int | None, *, streaming: bool = False, packing: bool = False
) -> Any:
    """Read, check and tokenize the training rows of ``path`` (JSON lines, JSON, CSV, Parquet or a
    ``save_to_disk`` folder): a ``datasets.Dataset`` with one row per kept row, or with
    ``streaming`` an ``IterableDataset`` read and tokenized as it is iterated.

    Columns: ``input_ids`` and ``labels`` (lists of ints, :data:`~.encode.IGNORE_INDEX` where no
    loss is taken), and with ``packing`` ``position_ids``; nothing else. Rows are cut to
    ``max_len`` tokens; those left with no target token are dropped with a warning. Without
    ``streaming`` every row is checked before this returns, so a typo fails before a model loads;
    with it, a bad row fails when it is reached (the first row is read now). Either way the error
    names the file and the line (``path:LINE``) or row (``path: row N``, Parquet and folders).
    """
    if packing and max_len is None:
        raise FinetuneDataError("packing needs max_len: the length of a packed row")
    source = Source.of(path)
    rows = source.rows(streaming=streaming)
    encode = {"function": _encode, "with_indices": True, "features": _features(keep=True),
              "fn_kwargs": {"source": source, "tokenizer": tokenizer, "max_len": max_len}}
    if streaming:
        encoded = rows.map(**encode).filter(_keep_or_warn, with_indices=True, fn_kwargs={"source": source, "max_len": max_len})
        kept = encoded.select_columns(list(_TOKENS))
        _first_kept(kept, source, max_len)
    else:
        with quiet():
            encoded = rows.map(**encode, remove_columns=rows.column_names, keep_in_memory=True)
        kept = _dropped_in_memory(encoded, source, max_len)
    if not packing:
        return kept
    pack = {"function": pack_batch, "batched": True, "batch_size": PACK_GROUP, "remove_columns": list(_TOKENS),
            "features": _features(packed=True), "fn_kwargs": {"max_len": max_len}}
    if streaming:
        return kept.map(**pack)
    with quiet():
        return kept.map(**pack, keep_in_memory=True)


def _dropped_in_memory(encoded: Any, source: Source, max_len: int | None) -> Any:
    """``encoded`` without its rows that have no target token, said in one warning."""
    dropped = [index for index, keep in enumerate(encoded["_keep"]) if not keep]
    if len(dropped) == len(encoded):
        raise FinetuneDataError(f"data file {source.path}: no row has a target token within max_len {max_len}")
    if dropped:
        logger.warning(
            "%s: %d row(s) have no target token within max_len %s and are skipped (%s)",
            source.path, len(dropped), max_len, source.positions(dropped),
        )
    with quiet():
        return encoded.filter(lambda keep: keep, input_columns="_keep", keep_in_memory=True).remove_columns("_keep")


def _first_kept(stream: Any, source: Source, max_len: int | None) -> None:
    """Read a stream up to its first usable row, so an empty or useless file fails now."""
    try:
        next(iter(stream))
    except StopIteration:
        raise FinetuneDataError(
            f"data file {source.path}: no row has a target token within max_len {max_len} (or the file has no rows)"
        ) from None

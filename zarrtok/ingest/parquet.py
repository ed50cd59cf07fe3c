"""Parquet files read directly, one row group per unit: no Arrow cache, no download on the driver.

``datasets.load_dataset("parquet", data_files=...)`` copies every file into its Arrow cache before
the build reads a row. For ``.parquet`` data files (local paths or fsspec URLs, globs expanded in
sorted order, see :mod:`zarrtok.ingest.file_sources`) :func:`plan_parquet` takes the call instead:
the plan reads only the **footers** (row counts per row group, the schema), and every unit is one
row group of one file, read by the worker that encodes it — only that row group, only the text
columns (``ParquetFile.read_row_group(i, columns=...)``: ranged reads of those column chunks).
Memory holds the text columns of the row groups in flight; a row group is never split across
units (reading part of one still reads its column chunks), so ``batch_size`` does not cut them.

Documents are those of ``datasets.load_dataset("parquet")`` (tested against it): rows in file
order, files in the given (sorted) order, a null value is an empty document, several columns are
joined with the separator (empty values skipped). A text column that is not a string column in a
file is refused with an error naming the file and the column; a file without the column is left to
``datasets`` (whose error names it).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import file_sources
from .jsonl import _split_spec, source_options
from .row_units import RowUnitDocuments, SourceSplit, select_splits
from .sources import document_texts

logger = logging.getLogger(__name__)

SUFFIXES = (".parquet",)


@dataclass(frozen=True)
class RowGroup:
    path: str
    row_group: int
    first_row: int  # index of the group's first row among its source split's rows
    num_rows: int
    bytes: int  # uncompressed bytes of the text columns (for the plan's token estimates)


def _is_string(t: Any) -> bool:
    import pyarrow as pa

    if pa.types.is_dictionary(t):
        t = t.value_type
    is_view = getattr(pa.types, "is_string_view", None)
    return pa.types.is_string(t) or pa.types.is_large_string(t) or (is_view is not None and is_view(t))


def _open(path: str, storage_options: dict[str, Any] | None):
    import pyarrow.parquet as pq

    raw = file_sources.open_raw(path, storage_options)
    return pq.ParquetFile(raw), raw


def _text_columns(path: str, schema: Any, columns: str | Sequence[str] | None) -> list[str] | None:
    names = list(schema.names)
    if columns is None:
        if "text" in names:
            wanted = ["text"]
        else:
            strings = [n for n in names if _is_string(schema.field(n).type)]
            if len(strings) != 1:
                return None  # datasets' rule gives the error with the column names
            wanted = strings
    else:
        wanted = [columns] if isinstance(columns, str) else list(columns)
    if not wanted or any(c not in names for c in wanted):
        return None
    for c in wanted:
        if not _is_string(schema.field(c).type):
            raise TypeError(f"{path}: column {c!r} has type {schema.field(c).type}, not string: "
                            "zarrtok tokenizes text columns only")
    return wanted


def plan_parquet(dataset: Any, *, data_files: Any, columns: str | Sequence[str] | None,
                 dataset_config_name: str | None = None, data_dir: str | None = None, revision: str | None = None,
                 load_dataset_kwargs: dict[str, Any] | None = None,
                 shuffle: bool = False) -> tuple[dict[str, list[str]], list[str]] | None:
    """``({split: files}, text columns)`` when the build can read the Parquet files directly, else ``None``."""
    if not isinstance(dataset, str) or dataset != "parquet" or shuffle:
        return None
    if dataset_config_name is not None or data_dir is not None or revision is not None:
        return None
    options = source_options(load_dataset_kwargs)
    spec = _split_spec(data_files)
    if options is None or spec is None:
        return None
    result: dict[str, list[str]] = {}
    text: list[str] | None = None
    for split, entries in spec.items():
        files = file_sources.resolve(entries, options)
        if files is None or not all(f.lower().endswith(SUFFIXES) for f in files):
            return None
        for path in files:
            try:
                pf, raw = _open(path, options)
            except Exception as exc:  # noqa: BLE001 - not a Parquet file: datasets decides (and gives its error)
                logger.info("%s: not read directly (%s: %s)", path, type(exc).__name__, exc)
                return None
            try:
                cols = _text_columns(path, pf.schema_arrow, columns)
            finally:
                raw.close()
            if cols is None or (text is not None and cols != text):
                return None
            text = cols
        result[split] = files
    if not result or text is None:
        return None
    return result, text


class ParquetDocuments(RowUnitDocuments):
    """Documents of Parquet files per build split, one row group per task (the interface of
    :class:`~zarrtok.ingest.row_units.RowUnitDocuments`)."""

    reader = "zarrtok-parquet"
    dataset_path = "parquet"

    def __init__(self, source: dict[str, SourceSplit], selection: dict[str, tuple[str, np.ndarray | None]],
                 columns: list[str], separator: str, storage_options: dict[str, Any] | None = None):
        super().__init__(source, selection, columns, separator, storage_options)
        self._file: tuple[str, Any, Any] | None = None  # (path, ParquetFile, raw file) of the last group read

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_file"] = None
        return state

    @classmethod
    def open(cls, files: dict[str, list[str]], *, columns: list[str], separator: str, validation_split: float | None,
             test_split: float | None, seed: int, splits: Sequence[str] | None,
             storage_options: dict[str, Any] | None = None) -> ParquetDocuments:
        """Read the footers into row groups (tasks) and apply the split rules of :mod:`zarrtok.sources`."""
        source: dict[str, SourceSplit] = {}
        for split, paths in files.items():
            groups: list[RowGroup] = []
            row = 0
            for path in paths:
                pf, raw = _open(path, storage_options)
                try:
                    meta = pf.metadata
                    index = [i for i in range(meta.num_columns)
                             if meta.schema.column(i).path.split(".")[0] in columns]
                    for g in range(meta.num_row_groups):
                        rg = meta.row_group(g)
                        size = sum(rg.column(i).total_uncompressed_size for i in index)
                        groups.append(RowGroup(path, g, row, rg.num_rows, int(size)))
                        row += rg.num_rows
                finally:
                    raw.close()
            source[split] = SourceSplit(paths, groups, row)

        selection = select_splits(source, validation_split=validation_split, test_split=test_split, seed=seed,
                                  splits=splits)
        return cls(source, selection, columns, separator, storage_options)

    def _parquet_file(self, path: str):
        if self._file is not None and self._file[0] == path:
            return self._file[1]
        self.close()
        pf, raw = _open(path, self.storage_options)
        self._file = (path, pf, raw)
        return pf

    def close(self) -> None:
        if self._file is not None:
            self._file[2].close()
            self._file = None

    def texts(self, task: tuple[RowGroup, np.ndarray | None]) -> list[str]:
        """The documents of one task: its row group's text columns only."""
        group, wanted = task
        pf = self._parquet_file(group.path)
        schema = pf.schema_arrow
        for c in self.columns:
            if c not in schema.names:
                raise ValueError(f"{group.path}, row group {group.row_group}: no column {c!r} "
                                 f"(columns: {schema.names})")
            if not _is_string(schema.field(c).type):
                raise TypeError(f"{group.path}, row group {group.row_group}: column {c!r} has type "
                                f"{schema.field(c).type}, not string: zarrtok tokenizes text columns only")
        table = pf.read_row_group(group.row_group, columns=self.columns)
        if table.num_rows != group.num_rows:
            raise ValueError(f"{group.path}, row group {group.row_group}: {table.num_rows} rows, the plan recorded "
                             f"{group.num_rows} (the file changed since)")
        if wanted is not None:
            table = table.take(np.asarray(wanted, dtype=np.int64))
        batch = {c: table.column(c).to_pylist() for c in self.columns}
        return document_texts(batch, self.columns, self.separator)

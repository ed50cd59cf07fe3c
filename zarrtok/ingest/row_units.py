"""What the direct file readers share: files cut into **row units** (JSON Lines blocks, Parquet row
groups), the split rules of :mod:`zarrtok.ingest.sources` applied to row indices, and the document
interface the build uses (``splits``, ``num_documents``, ``tasks``, ``head``, ``identity``).

A subclass provides ``reader`` (its name in the fingerprint), ``dataset_path`` (the
``load_dataset`` builder it stands in for), ``texts(task)`` and ``close()``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import file_sources
from .sources import _jsonable, split_rules


@dataclass
class SourceSplit:
    """One source split: its files and its row units in order (each has ``path``, ``first_row``,
    ``num_rows``)."""

    files: list[str]
    units: list[Any]
    num_rows: int


def select_splits(source: dict[str, SourceSplit], *, validation_split: float | None, test_split: float | None,
                  seed: int, splits: Sequence[str] | None) -> dict[str, tuple[str, np.ndarray | None]]:
    """Build split -> (source split, sorted row indices or ``None`` for all): the split rules of
    :mod:`zarrtok.ingest.sources` (without ``shuffle``) over row indices."""

    def size(part: tuple[str, np.ndarray | None]) -> int:
        return source[part[0]].num_rows if part[1] is None else len(part[1])

    def select(part: tuple[str, np.ndarray | None], positions: np.ndarray) -> tuple[str, np.ndarray]:
        return part[0], positions if part[1] is None else part[1][positions]

    return split_rules({name: (name, None) for name in source}, size=size, select=select,
                       validation_split=validation_split, test_split=test_split, seed=seed, splits=splits)


class RowUnitDocuments:
    """Documents of files cut into row units, per build split (see the module docstring)."""

    reader = ""
    dataset_path = ""

    def __init__(self, source: dict[str, SourceSplit], selection: dict[str, tuple[str, np.ndarray | None]],
                 columns: list[str], separator: str, storage_options: dict[str, Any] | None = None):
        self._source = source
        self._selection = selection  # build split -> (source split, sorted row indices or None for all)
        self.columns = columns
        self.separator = separator
        self.storage_options = dict(storage_options or {})

    @property
    def splits(self) -> list[str]:
        return list(self._selection)

    def num_documents(self, split: str) -> int:
        source_split, rows = self._selection[split]
        return self._source[source_split].num_rows if rows is None else len(rows)

    def tasks(self, split: str, batch_size: int) -> list[tuple[Any, np.ndarray | None]]:
        """One task per row unit holding rows of ``split``: ``(unit, positions of its wanted rows or None)``."""
        source_split, rows = self._selection[split]
        tasks = []
        for unit in self._source[source_split].units:
            if rows is None:
                if unit.num_rows:
                    tasks.append((unit, None))
                continue
            lo, hi = np.searchsorted(rows, [unit.first_row, unit.first_row + unit.num_rows])
            if hi > lo:
                tasks.append((unit, rows[lo:hi] - unit.first_row))
        return tasks

    def texts(self, task: tuple[Any, np.ndarray | None]) -> list[str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> None:
        """Release open files (subclasses)."""

    def head(self, split: str, n: int) -> list[str]:
        """The first ``n`` documents of ``split`` (for verifying an encoder before the build)."""
        texts: list[str] = []
        for task in self.tasks(split, n):
            texts += self.texts(task)
            if len(texts) >= n:
                break
        self.close()
        return texts[:n]

    def files(self) -> list[str]:
        return [p for s in self._source.values() for p in s.files]

    def file_first_rows(self) -> list[tuple[str, int]]:
        """``(file, index of its first row in its source split)`` for every file, in order."""
        out = []
        for s in self._source.values():
            for path in s.files:
                out.append((path, min((u.first_row for u in s.units if u.path == path), default=0)))
        return out

    def identity(self, data_files: Any) -> dict[str, Any]:
        """What the fingerprint records about the source (the files' sizes and version markers)."""
        return {
            "kind": "load_dataset",
            "path": self.dataset_path,
            "reader": self.reader,
            "data_files": _jsonable(data_files),
            "files": file_sources.identity(self.files(), self.storage_options),
            "split_sizes": {name: self.num_documents(name) for name in self._selection},
        }

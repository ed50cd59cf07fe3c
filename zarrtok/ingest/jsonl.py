"""Local JSON Lines files read directly, in byte blocks: the build's streaming source.

``datasets.load_dataset("json", ...)`` first converts every file into an Arrow cache (about the
size of the text, written to ``HF_DATASETS_CACHE``) and the build then reads that cache through
memory maps, so disk and resident memory grow with the corpus. For the common case — local
``.jsonl``/``.json``/``.ndjson`` files of one JSON object per line — :func:`plan_json_lines`
recognises the call and :class:`JsonLinesDocuments` reads the files in place instead: one cheap
pass counts the rows of every block (blocks end at newlines), then workers parse and tokenize
blocks independently. Nothing is written besides the store, and memory holds only the blocks in
flight.

The documents are exactly the ones the ``datasets`` path gives (tested against it): rows are the
non-blank lines in file order, the split rules of :mod:`zarrtok.sources` pick the same rows, a
missing or ``null`` value is an empty document, and several columns are joined the same way. Any
call this module is not sure about (globs, directories, compressed files, a first row that is not
an object or lacks the text column, a byte-order mark, ``shuffle=True``, extra ``load_dataset``
options) goes to ``datasets`` unchanged.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .sources import _jsonable, file_stats, split_rules

logger = logging.getLogger(__name__)

SUFFIXES = (".jsonl", ".json", ".ndjson")
BLOCK_BYTES = 4 << 20  # bytes per block: the unit a worker parses and tokenizes
_BLANK = b" \t\r"


@dataclass(frozen=True)
class Block:
    """A byte range of one file that starts at a line start and ends after a newline (or at EOF)."""

    path: str
    start: int
    end: int
    first_line: int  # 1-based line number of the block's first line, for error messages
    first_row: int  # index of the block's first row among its source split's rows
    num_rows: int


@dataclass
class _SourceSplit:
    files: list[str]
    blocks: list[Block]
    num_rows: int


def plan_json_lines(
    dataset: Any,
    *,
    data_files: Any,
    columns: str | Sequence[str] | None,
    dataset_config_name: str | None = None,
    data_dir: str | None = None,
    revision: str | None = None,
    load_dataset_kwargs: dict[str, Any] | None = None,
    shuffle: bool = False,
) -> dict[str, list[str]] | None:
    """The files of every source split when the build can read them directly, else ``None``.

    Only ``dataset == "json"`` with explicit local file paths (a path, a list, or a dict of split
    -> path(s)) whose first non-blank line is a JSON object holding the text column(s).
    """
    if not isinstance(dataset, str) or dataset != "json" or shuffle:
        return None
    if dataset_config_name is not None or data_dir is not None or revision is not None or load_dataset_kwargs:
        return None
    if isinstance(data_files, dict):
        spec = {str(k): v for k, v in data_files.items()}
    else:
        spec = {"train": data_files}
    wanted = [columns] if isinstance(columns, str) else (list(columns) if columns is not None else ["text"])
    result: dict[str, list[str]] = {}
    for split, paths in spec.items():
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        if not isinstance(paths, (list, tuple)) or not paths:
            return None
        files = []
        for path in paths:
            if not isinstance(path, (str, os.PathLike)):
                return None
            path = os.fspath(path)
            if any(ch in path for ch in "*?[") or "://" in path or not path.lower().endswith(SUFFIXES):
                return None
            if not os.path.isfile(path):
                return None
            first = _first_object(path)
            if first is None or not all(c in first for c in wanted):
                return None
            files.append(os.path.abspath(path))
        result[split] = files
    return result or None


def _first_object(path: str) -> dict[str, Any] | None:
    """The first non-blank line parsed, when it is a JSON object (and the file has no BOM)."""
    with open(path, "rb") as f:
        if f.read(3) == b"\xef\xbb\xbf":
            return None
        f.seek(0)
        for line in f:
            if line.strip(_BLANK + b"\n"):
                try:
                    value = json.loads(line)
                except ValueError:
                    return None
                return value if isinstance(value, dict) else None
    return None


def _count_rows(data: bytes) -> int:
    """Non-blank lines in ``data`` (JSON Lines readers skip blank and whitespace-only lines)."""
    if not data:
        return 0
    lines = data.count(b"\n") + (0 if data.endswith(b"\n") else 1)
    if data.count(b"\n{") + data.startswith(b"{") == lines:  # every line starts an object: none is blank
        return lines
    return sum(1 for line in data.split(b"\n") if line.strip(_BLANK))


def _end_of_rows(data: bytes, start: int, rows: int) -> int:
    """Offset just after the newline that ends the ``rows``-th non-blank line of ``data[start:]``."""
    pos = start
    while True:
        nl = data.find(b"\n", pos)
        if data[pos:nl].strip(_BLANK):
            rows -= 1
        pos = nl + 1
        if rows == 0:
            return pos


def _read_lines(f: Any, start: int, size: int, block_bytes: int) -> bytes:
    """About ``block_bytes`` from ``start``, ending after a newline (or at EOF; a longer line is read whole)."""
    f.seek(start)
    data = f.read(block_bytes)
    if start + len(data) >= size:
        return data
    cut = data.rfind(b"\n")
    if cut >= 0:
        return data[: cut + 1]
    parts = [data]  # a line longer than a block: read on to its end
    while True:
        more = f.read(block_bytes)
        nl = more.find(b"\n")
        if nl >= 0 or not more:
            parts.append(more if nl < 0 else more[: nl + 1])
            return b"".join(parts)
        parts.append(more)


def scan_file(path: str, first_row: int, block_bytes: int = BLOCK_BYTES, block_rows: int | None = None) -> list[Block]:
    """Split one file into blocks ending at newlines (at most ``block_bytes``, unless one line is
    longer, and at most ``block_rows`` rows), counting each block's rows."""
    blocks: list[Block] = []
    size = os.path.getsize(path)
    line, row, start = 1, first_row, 0
    with open(path, "rb") as f:
        while start < size:
            data = _read_lines(f, start, size, block_bytes)
            rows = _count_rows(data)
            pos = 0
            while block_rows is not None and rows > block_rows:  # cut the read into blocks of block_rows rows
                end = _end_of_rows(data, pos, block_rows)
                blocks.append(Block(path, start + pos, start + end, line, row, block_rows))
                line += data.count(b"\n", pos, end)
                row += block_rows
                rows -= block_rows
                pos = end
            blocks.append(Block(path, start + pos, start + len(data), line, row, rows))
            line += data.count(b"\n", pos)
            row += rows
            start += len(data)
    return blocks


class JsonLinesDocuments:
    """Documents of local JSON Lines files per build split, read block by block in worker tasks.

    The interface the build uses (shared with :class:`zarrtok.sources.DatasetDocuments`):
    ``splits``, ``num_documents(split)``, ``tasks(split, batch_size)``, ``texts(task)`` and
    ``head(split, n)``. Tasks are small picklable tuples; ``texts`` runs in worker processes.
    """

    reader = "zarrtok-jsonl"

    def __init__(self, source: dict[str, _SourceSplit], selection: dict[str, tuple[str, np.ndarray | None]],
                 columns: list[str], separator: str):
        self._source = source
        self._selection = selection  # build split -> (source split, sorted row indices or None for all)
        self.columns = columns
        self.separator = separator

    @classmethod
    def open(cls, files: dict[str, list[str]], *, columns: list[str], separator: str, validation_split: float | None,
             test_split: float | None, seed: int, splits: Sequence[str] | None, batch_size: int = 1000,
             block_bytes: int = BLOCK_BYTES) -> JsonLinesDocuments:
        """Scan the files into blocks (tasks) of at most ``block_bytes`` and ``batch_size`` rows, and
        apply the split rules of :mod:`zarrtok.sources` (without ``shuffle``)."""
        source: dict[str, _SourceSplit] = {}
        for split, paths in files.items():
            blocks: list[Block] = []
            for path in paths:
                first_row = blocks[-1].first_row + blocks[-1].num_rows if blocks else 0
                blocks += scan_file(path, first_row, block_bytes, batch_size)
            source[split] = _SourceSplit(paths, blocks, blocks[-1].first_row + blocks[-1].num_rows if blocks else 0)
        def size(part: tuple[str, np.ndarray | None]) -> int:
            return source[part[0]].num_rows if part[1] is None else len(part[1])

        def select(part: tuple[str, np.ndarray | None], positions: np.ndarray) -> tuple[str, np.ndarray]:
            return part[0], positions if part[1] is None else part[1][positions]

        selection = split_rules({name: (name, None) for name in source}, size=size, select=select,
                                validation_split=validation_split, test_split=test_split, seed=seed, splits=splits)
        return cls(source, selection, columns, separator)

    @property
    def splits(self) -> list[str]:
        return list(self._selection)

    def num_documents(self, split: str) -> int:
        source_split, rows = self._selection[split]
        return self._source[source_split].num_rows if rows is None else len(rows)

    def tasks(self, split: str, batch_size: int) -> list[tuple[Block, np.ndarray | None]]:
        """One task per block holding rows of ``split`` (blocks were cut to ``batch_size`` rows by :meth:`open`)."""
        source_split, rows = self._selection[split]
        tasks = []
        for block in self._source[source_split].blocks:
            if rows is None:
                if block.num_rows:
                    tasks.append((block, None))
                continue
            lo, hi = np.searchsorted(rows, [block.first_row, block.first_row + block.num_rows])
            if hi > lo:
                tasks.append((block, rows[lo:hi] - block.first_row))
        return tasks

    def texts(self, task: tuple[Block, np.ndarray | None]) -> list[str]:
        """The documents of one task, in order (parsed from the block's bytes)."""
        block, wanted = task
        with open(block.path, "rb") as f:
            f.seek(block.start)
            data = f.read(block.end - block.start)
        keep = None if wanted is None else set(wanted.tolist())
        texts: list[str] = []
        row = -1
        for number, line in enumerate(data.split(b"\n"), start=block.first_line):
            if not line.strip(_BLANK):
                continue
            row += 1
            if keep is not None and row not in keep:
                continue
            texts.append(self._document(line, block.path, number))
        return texts

    def _document(self, line: bytes, path: str, number: int) -> str:
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise ValueError(f"{path}, line {number}: not valid JSON ({exc})") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{path}, line {number}: expected a JSON object per line, got {type(obj).__name__}")
        values = []
        for column in self.columns:
            value = obj.get(column)
            if value is not None and not isinstance(value, str):
                raise TypeError(
                    f"{path}, line {number}: column {column!r} holds {type(value).__name__}, not a string: "
                    "zarrtok tokenizes text columns only"
                )
            values.append(value)
        if len(values) == 1:
            return values[0] or ""
        return self.separator.join(v for v in values if v)

    def head(self, split: str, n: int) -> list[str]:
        """The first ``n`` documents of ``split`` (for verifying an encoder before the build)."""
        texts: list[str] = []
        for task in self.tasks(split, n):
            texts += self.texts(task)
            if len(texts) >= n:
                break
        return texts[:n]

    def identity(self, data_files: Any) -> dict[str, Any]:
        """What the fingerprint records about the source (the files' sizes and mtimes included)."""
        paths = [p for s in self._source.values() for p in s.files]
        return {
            "kind": "load_dataset",
            "path": "json",
            "reader": self.reader,
            "data_files": _jsonable(data_files),
            "files": file_stats(paths),
            "split_sizes": {name: self.num_documents(name) for name in self._selection},
        }

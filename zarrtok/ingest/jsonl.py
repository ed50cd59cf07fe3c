"""JSON Lines files read directly, in byte blocks: the build's streaming source.

``datasets.load_dataset("json", ...)`` first converts every file into an Arrow cache (about the
size of the text, written to ``HF_DATASETS_CACHE``; for URLs after downloading them on the driver)
and the build then reads that cache through memory maps, so disk and resident memory grow with the
corpus. For files of one JSON object per line — ``.jsonl``/``.json``/``.ndjson``, plain or
compressed (``.gz``, ``.zst``/``.zstd``, ``.bz2``, ``.xz``), local paths or fsspec URLs
(``s3://bucket/dir/*.jsonl.gz``, ``hf://datasets/...``), globs expanded in sorted order (see
:mod:`zarrtok.ingest.file_sources`) — :func:`plan_json_lines` recognises the call and
:class:`JsonLinesDocuments` reads the files in place instead: one sequential pass at plan time
counts the rows of every block (blocks end at newlines, at most ``block_bytes`` and ``batch_size``
rows), then workers open the files themselves and parse and tokenize blocks independently (lines
parsed by :mod:`zarrtok.ingest.json_parse`: msgspec, with ``json.loads`` as the reference).
Nothing is written besides the store, and memory holds only the blocks in flight. The source
filesystem's options are ``load_dataset_kwargs={"storage_options": ...}``.

**Compressed files** cannot be seeked: the plan-time scan decompresses each file once (streaming,
bounded memory) and records blocks as offsets into the *decompressed* bytes. A worker reading a
block decompresses from the start of the file up to it — unless its open stream of that file is
already at or before the block, which it then continues: each process keeps the stream of its
last compressed block. Consecutive blocks of a file within a task (the default, one task per split
without ``shard_size``) therefore cost one decompression of the file. What costs more: a shard
boundary (``shard_size``) inside a compressed file — the next task decompresses the prefix it skips
— and the local process pool spreading the blocks of one task over ``W`` workers, where each worker
decompresses the file once (``W`` decompressions, skipping the other workers' blocks without
parsing them). Blocks (not whole files) are the units so memory stays bounded by the block size.

The documents are exactly the ones the ``datasets`` path gives (tested against it): rows are the
non-blank lines in file order, the split rules of :mod:`zarrtok.sources` pick the same rows, a
missing or ``null`` value is an empty document, and several columns are joined the same way. Any
call this module is not sure about (directories, missing files, a first row that is not an object
or lacks the text column, a byte-order mark, ``shuffle=True``, ``load_dataset`` options other
than ``storage_options``) goes to ``datasets`` unchanged.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import file_sources
from .json_parse import BLANK as _BLANK
from .json_parse import LineParser
from .row_units import RowUnitDocuments, SourceSplit, select_splits

logger = logging.getLogger(__name__)

SUFFIXES = (".jsonl", ".json", ".ndjson")
BLOCK_BYTES = 4 << 20  # bytes per block: the unit a worker parses and tokenizes
SKIP_BYTES = 4 << 20  # read size when a compressed stream is advanced to a block


@dataclass(frozen=True)
class Block:
    """A byte range of one file that starts at a line start and ends after a newline (or at EOF)."""

    path: str
    start: int
    end: int
    first_line: int  # 1-based line number of the block's first line, for error messages
    first_row: int  # index of the block's first row among its source split's rows
    num_rows: int
    compression: str | None = None  # "gzip", "zstd", ...: start/end are offsets into the decompressed bytes



def _split_spec(data_files: Any) -> dict[str, list[str]] | None:
    """``data_files`` as ``{split: [entries]}`` (a path, a list, or a dict of split -> path(s)), or ``None``."""
    spec = {str(k): v for k, v in data_files.items()} if isinstance(data_files, dict) else {"train": data_files}
    out: dict[str, list[str]] = {}
    for split, paths in spec.items():
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        if not isinstance(paths, (list, tuple)) or not paths:
            return None
        if not all(isinstance(p, (str, os.PathLike)) for p in paths):
            return None
        out[split] = [os.fspath(p) for p in paths]
    return out or None


def source_options(load_dataset_kwargs: dict[str, Any] | None) -> dict[str, Any] | None:
    """The source's ``storage_options`` when ``load_dataset_kwargs`` holds nothing else (else ``None``:
    other options change what ``datasets`` reads, so such calls stay with ``datasets``)."""
    kwargs = dict(load_dataset_kwargs or {})
    if set(kwargs) - {"storage_options"}:
        return None
    return dict(kwargs.get("storage_options") or {})


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

    Only ``dataset == "json"`` with explicit files (a path / URL / glob, a list, or a dict of split
    -> those) named ``.jsonl``/``.json``/``.ndjson`` (optionally ``.gz``/``.zst``/``.zstd``...) whose
    first non-blank line is a JSON object holding the text column(s); ``load_dataset_kwargs`` may
    hold only ``storage_options`` (the source filesystem's). Globs are expanded here (sorted).
    """
    if not isinstance(dataset, str) or dataset != "json" or shuffle:
        return None
    if dataset_config_name is not None or data_dir is not None or revision is not None:
        return None
    options = source_options(load_dataset_kwargs)
    spec = _split_spec(data_files)
    if options is None or spec is None:
        return None
    wanted = [columns] if isinstance(columns, str) else (list(columns) if columns is not None else ["text"])
    result: dict[str, list[str]] = {}
    for split, entries in spec.items():
        files = file_sources.resolve(entries, options)
        if files is None or not all(file_sources.base_name(f).endswith(SUFFIXES) for f in files):
            return None
        for path in files:
            first = _first_object(path, options)
            if first is None or not all(c in first for c in wanted):
                return None
        result[split] = files
    return result or None


def _first_object(path: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The first non-blank line parsed, when it is a JSON object (and the file has no BOM)."""
    try:
        with file_sources.open_stream(path, storage_options, file_sources.compression_of(path)) as f:
            buf = b""
            start = True
            while True:
                chunk = f.read(1 << 16)
                buf += chunk
                if start and len(buf) >= 3 or not chunk:
                    if buf.startswith(b"\xef\xbb\xbf"):
                        return None
                    start = False
                while b"\n" in buf or (not chunk and buf):
                    line, _, buf = buf.partition(b"\n")
                    if line.strip(_BLANK):
                        try:
                            value = json.loads(line)
                        except (ValueError, RecursionError):
                            return None
                        return value if isinstance(value, dict) else None
                if not chunk:
                    return None
    except (OSError, EOFError, ValueError) as exc:  # unreadable / not really compressed: datasets decides
        logger.info("%s: not read directly (%s: %s)", path, type(exc).__name__, exc)
        return None


def _read_full(f: Any, n: int) -> bytes:
    """``n`` bytes (fewer only at EOF): decompressing streams may return short reads."""
    data = f.read(n)
    if len(data) == n or not data:
        return data
    parts = [data]
    got = len(data)
    while got < n:
        more = f.read(n - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


SCAN_WINDOW = 16 << 20  # bytes per read of the plan-time scan (one reused buffer)
_WHITESPACE = np.zeros(256, dtype=bool)
_WHITESPACE[[ord(c) for c in " \t\r\n"]] = True  # a line starting with one of these may be blank


def _fill(f: Any, view: memoryview) -> int:
    """Fill ``view`` from the stream (``readinto`` where the stream has it); fewer bytes only at EOF."""
    readinto = getattr(f, "readinto", None)
    got = 0
    while got < len(view):
        if readinto is not None:
            n = readinto(view[got:])
        else:
            data = f.read(len(view) - got)
            n = len(data)
            view[got:got + n] = data
        if not n:
            break
        got += n
    return got


def _nonblank(segment: memoryview) -> bool:
    return bool(bytes(segment).strip(_BLANK))


def line_index(f: Any, window: int = SCAN_WINDOW):
    """``(ends, nonblank)`` array pairs, in order, for the lines of a stream read front to back once:
    the offset just after each line's newline (or EOF, for a last line without one) and whether
    the line is a row (not blank: only spaces, tabs and ``\\r``). One reused buffer; newlines are
    found with numpy, and only lines *starting* with whitespace are looked at byte by byte (none,
    in a file of one JSON object per line)."""
    buf = bytearray(window)
    view = memoryview(buf)
    base = 0  # stream offset of the buffer's first byte
    open_start, open_nonblank = 0, False  # the line still open at the buffer's end
    while True:
        n = _fill(f, view)
        if not n:
            break
        a = np.frombuffer(buf, dtype=np.uint8, count=n)
        nl = np.flatnonzero(a == 10)
        first_end = nl[0] if len(nl) else n
        if not open_nonblank and first_end > 0:  # the open line continues here
            open_nonblank = not _WHITESPACE[a[0]] or _nonblank(view[:first_end])
        if not len(nl):
            base += n
            continue
        ends = nl + 1
        nonblank = np.empty(len(nl), dtype=bool)
        nonblank[0] = open_nonblank
        starts = ends[:-1]  # the lines that start and end in this buffer
        flags = ~_WHITESPACE[a[starts]]
        for i in np.flatnonzero(~flags):  # starts with whitespace: blank unless something else follows
            flags[i] = _nonblank(view[starts[i]:nl[i + 1]])
        nonblank[1:] = flags
        yield base + ends, nonblank
        tail = int(ends[-1])
        open_start = base + tail
        open_nonblank = tail < n and (not _WHITESPACE[a[tail]] or _nonblank(view[tail:n]))
        base += n
    if base > open_start:  # a last line without a newline
        yield np.array([base], dtype=np.int64), np.array([open_nonblank])


def scan_file(path: str, first_row: int, block_bytes: int = BLOCK_BYTES, block_rows: int | None = None,
              storage_options: dict[str, Any] | None = None, window: int = SCAN_WINDOW) -> list[Block]:
    """Split one file into blocks of whole lines, counting each block's rows: one sequential read of
    the file (decompressed, for a compressed file: offsets are then offsets into the decompressed
    bytes), newlines found with numpy in a reused ``window``-byte buffer.

    A block is the longest run of lines from its start that fits in ``block_bytes`` (one line
    alone when it is longer), then cut after every ``block_rows``-th row while more than
    ``block_rows`` remain."""
    compression = file_sources.compression_of(path)
    blocks: list[Block] = []
    state = {"start": 0, "line": 1, "row": first_row}
    pending_ends: list[np.ndarray] = []  # lines since the current block's start, not yet in a block
    pending_rows: list[np.ndarray] = []

    def close(end: int, lines: int, rows: int) -> None:
        """A block from the current start to ``end``, of ``lines`` lines holding ``rows`` rows."""
        blocks.append(Block(path, state["start"], end, state["line"], state["row"], rows, compression))
        state["start"], state["line"], state["row"] = end, state["line"] + lines, state["row"] + rows

    def emit(ends: np.ndarray, rows: np.ndarray) -> None:
        """Blocks of the lines ``ends`` (one byte run), cut every ``block_rows`` rows."""
        counts = np.cumsum(rows, dtype=np.int64)
        lo = 0  # first line of the sub-block
        taken = 0  # rows before it
        total = int(counts[-1]) if len(counts) else 0
        while block_rows is not None and total - taken > block_rows:
            last = int(np.searchsorted(counts, taken + block_rows))  # the line ending the block_rows-th row
            close(int(ends[last]), last + 1 - lo, block_rows)
            taken += block_rows
            lo = last + 1
        close(int(ends[-1]), len(ends) - lo, total - taken)

    def cut(final: bool) -> None:
        if not pending_ends:
            return
        ends = np.concatenate(pending_ends) if len(pending_ends) > 1 else pending_ends[0]
        rows = np.concatenate(pending_rows) if len(pending_rows) > 1 else pending_rows[0]
        lo = 0
        while lo < len(ends):
            limit = state["start"] + block_bytes
            if not final and ends[-1] <= limit:  # the next lines may still fit
                break
            k = int(np.searchsorted(ends, limit, side="right"))
            k = max(k, lo + 1)  # a line longer than a block is a block
            emit(ends[lo:k], rows[lo:k])
            lo = k
        pending_ends[:] = [ends[lo:]] if lo < len(ends) else []
        pending_rows[:] = [rows[lo:]] if lo < len(ends) else []

    with file_sources.open_stream(path, storage_options, compression) as f:
        for ends, rows in line_index(f, window):
            pending_ends.append(ends)
            pending_rows.append(rows)
            cut(final=False)
    cut(final=True)
    return blocks


class JsonLinesDocuments(RowUnitDocuments):
    """Documents of JSON Lines files (local or URLs, plain or compressed) per build split, read block
    by block in worker tasks.

    The interface the build uses (:class:`~zarrtok.ingest.row_units.RowUnitDocuments`, shared with
    :class:`zarrtok.sources.DatasetDocuments`): ``splits``, ``num_documents(split)``,
    ``tasks(split, batch_size)``, ``texts(task)`` and ``head(split, n)``. Tasks are small picklable
    tuples; ``texts`` runs in worker processes. ``storage_options`` are the source filesystem's
    (full, credentials included: this object lives on the driver and in processes forked from it;
    plans get :func:`file_sources.plan_options`).
    """

    reader = "zarrtok-jsonl"
    dataset_path = "json"

    def __init__(self, source: dict[str, SourceSplit], selection: dict[str, tuple[str, np.ndarray | None]],
                 columns: list[str], separator: str, storage_options: dict[str, Any] | None = None):
        super().__init__(source, selection, columns, separator, storage_options)
        self._parser = LineParser(columns, separator)
        self._stream: tuple[str, int, Any] | None = None  # (path, decompressed position, open stream)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_stream"] = None
        return state

    @classmethod
    def open(cls, files: dict[str, list[str]], *, columns: list[str], separator: str, validation_split: float | None,
             test_split: float | None, seed: int, splits: Sequence[str] | None, batch_size: int = 1000,
             block_bytes: int = BLOCK_BYTES, storage_options: dict[str, Any] | None = None) -> JsonLinesDocuments:
        """Scan the files into blocks (tasks) of at most ``block_bytes`` and ``batch_size`` rows, and
        apply the split rules of :mod:`zarrtok.sources` (without ``shuffle``)."""
        source: dict[str, SourceSplit] = {}
        for split, paths in files.items():
            blocks: list[Block] = []
            for path in paths:
                first_row = blocks[-1].first_row + blocks[-1].num_rows if blocks else 0
                blocks += scan_file(path, first_row, block_bytes, batch_size, storage_options)
            source[split] = SourceSplit(paths, blocks, blocks[-1].first_row + blocks[-1].num_rows if blocks else 0)

        selection = select_splits(source, validation_split=validation_split, test_split=test_split, seed=seed,
                                  splits=splits)
        return cls(source, selection, columns, separator, storage_options)

    def read_block(self, block: Block) -> bytes:
        """The block's bytes: a ranged read, or for a compressed file the decompressed stream advanced
        to the block (continuing this process's open stream of that file when the block lies ahead of
        it, else decompressing from the start: see the module docstring for the cost)."""
        if block.compression is None:
            return file_sources.read_range(block.path, self.storage_options, block.start, block.end)
        cached = self._stream
        if cached is not None and cached[0] == block.path and cached[1] <= block.start:
            _, pos, f = cached
        else:
            self.close()
            f = file_sources.open_stream(block.path, self.storage_options, block.compression)
            pos = 0
        try:
            while pos < block.start:
                skipped = _read_full(f, min(SKIP_BYTES, block.start - pos))
                if not skipped:
                    raise ValueError(f"{block.path}: ends at byte {pos} of its decompressed data, before the "
                                     f"block at {block.start} the plan recorded (the file changed since)")
                pos += len(skipped)
            data = _read_full(f, block.end - block.start)
        except BaseException:
            f.close()
            self._stream = None
            raise
        self._stream = (block.path, pos + len(data), f)
        return data

    def close(self) -> None:
        if self._stream is not None:
            self._stream[2].close()
            self._stream = None

    def texts(self, task: tuple[Block, np.ndarray | None]) -> list[str]:
        """The documents of one task, in order (parsed from the block's bytes)."""
        block, wanted = task
        data = self.read_block(block)
        if len(data) != block.end - block.start:
            raise ValueError(f"{block.path}: {len(data)} bytes at {block.start}, the plan recorded "
                             f"{block.end - block.start} (the file changed since)")
        keep = None if wanted is None else set(wanted.tolist())
        texts = self._parser.documents(data, block.path, block.first_line, keep, block.num_rows)
        expected = block.num_rows if keep is None else len(keep)
        if len(texts) != expected:
            raise ValueError(f"{block.path}, line {block.first_line}: {len(texts)} rows in the block, the plan "
                             f"recorded {expected} (the file changed since)")
        return texts

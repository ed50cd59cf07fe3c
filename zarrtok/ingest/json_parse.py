"""Documents from JSON Lines bytes: ``msgspec`` for speed, ``json.loads`` as the reference.

The direct readers (:mod:`zarrtok.ingest.jsonl`, compressed and remote files included) turn a block
of lines into documents here. The reference semantics are those of ``json.loads`` on each
non-blank line (blank: only spaces, tabs and ``\\r``): a JSON object per line, a missing or
``null`` text column is an empty document, several columns are joined with the separator (empty
values skipped), anything else in a text column is an error naming the file and line.

**The fast path** decodes with ``msgspec`` into a struct holding *only* the text columns (every
other value is validated and skipped, never built), a whole block at once
(``Decoder.decode_lines``) when every row is wanted, else line by line. ``msgspec`` is stricter
than ``json`` in a few places, never looser once two gaps are closed:

* ``json.loads(bytes)`` decodes UTF-8 with ``surrogatepass`` and refuses invalid UTF-8 anywhere in
  the line; ``msgspec`` does not look at the bytes of values it skips. So a block that is not pure
  ASCII is checked with ``bytes.decode("utf-8", "surrogatepass")`` first; a block that fails is
  parsed line by line with ``json`` (which then names the bad line).
* Everything ``msgspec`` refuses — lone surrogates (``"\\ud800"``, also as CESU bytes), ``NaN`` /
  ``Infinity`` literals, a non-object line, a non-string in a text column (also when a later
  duplicate key fixes it: ``json`` keeps the last value, and so does ``msgspec`` for strings),
  a byte-order mark, nesting deeper than the recursion limit — goes to ``json.loads`` for that
  line, which gives its document or the error. A line is never dropped or given a different
  document.

Duplicate keys keep the last value in both parsers. ``decode_lines`` skips the same blank lines
(JSON whitespace), and its row count is checked against the block's before it is trusted.

Without ``msgspec`` (not importable) everything goes through ``json`` and this is logged once.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

BLANK = b" \t\r"

try:  # pragma: no branch - depends on the environment
    import msgspec as _msgspec
except Exception as _exc:  # noqa: BLE001  # pragma: no cover - msgspec is a dependency
    _msgspec = None
    _IMPORT_ERROR: Exception | None = _exc
else:
    _IMPORT_ERROR = None
_warned = False


def fast_parser_available() -> bool:
    return _msgspec is not None


def _note_fallback() -> None:
    global _warned
    if not _warned:
        _warned = True
        logger.warning("msgspec is not importable (%s): JSON Lines are parsed with json.loads (slower)", _IMPORT_ERROR)


class LineParser:
    """Parses JSON Lines into documents of ``columns`` joined with ``separator``.

    ``fast=False`` (or no msgspec) parses with ``json.loads`` only: the reference path.
    """

    def __init__(self, columns: Sequence[str], separator: str, *, fast: bool = True):
        self.columns = list(columns)
        if not self.columns:
            raise ValueError("columns must name at least one text column")
        self.separator = separator
        self.fast = bool(fast) and _msgspec is not None
        if fast and _msgspec is None:
            _note_fallback()
        if self.fast:
            fields = [(f"f{i}", str | None, None) for i in range(len(self.columns))]
            row = _msgspec.defstruct("Row", fields, rename={f"f{i}": c for i, c in enumerate(self.columns)})
            self._decoder = _msgspec.json.Decoder(row)
            self._errors = (_msgspec.DecodeError, _msgspec.ValidationError, RecursionError, ValueError)

    # -- the reference: json.loads, one line ----------------------------------------------------------
    def json_document(self, line: bytes, path: str, number: int) -> str:
        """One line's document as ``json.loads`` gives it (or the error naming ``path`` and line)."""
        try:
            obj = json.loads(line)
        except ValueError as exc:  # includes UnicodeDecodeError
            raise ValueError(f"{path}, line {number}: not valid JSON ({exc})") from None
        except RecursionError:
            raise ValueError(f"{path}, line {number}: not valid JSON (nested too deeply to parse)") from None
        if not isinstance(obj, dict):
            got = type(obj).__name__  # a ValueError, as before: the line is bad input, not a bad argument
            raise ValueError(f"{path}, line {number}: expected a JSON object per line, got {got}")  # noqa: TRY004
        values = []
        for column in self.columns:
            value = obj.get(column)
            if value is not None and not isinstance(value, str):
                raise TypeError(
                    f"{path}, line {number}: column {column!r} holds {type(value).__name__}, not a string: "
                    "zarrtok tokenizes text columns only"
                )
            values.append(value)
        return self._join(values)

    def _join(self, values: Sequence[str | None]) -> str:
        if len(values) == 1:
            return values[0] or ""
        return self.separator.join(v for v in values if v)

    def _row_document(self, row: Any) -> str:
        if len(self.columns) == 1:
            return row.f0 or ""
        return self.separator.join(v for v in _msgspec.structs.astuple(row) if v)

    def document(self, line: bytes, path: str, number: int, *, utf8_checked: bool = False) -> str:
        """One line's document: msgspec when it takes the line (and the bytes are valid UTF-8), else json."""
        if self.fast and (utf8_checked or _valid_utf8(line)):
            try:
                return self._row_document(self._decoder.decode(line))
            except self._errors:
                pass
        return self.json_document(line, path, number)

    # -- blocks ---------------------------------------------------------------------------------------
    def documents(self, data: bytes, path: str, first_line: int, keep: set[int] | None = None,
                  num_rows: int | None = None) -> list[str]:
        """The documents of the non-blank lines of ``data`` (a block of whole lines; its first line is
        line ``first_line`` of ``path``), only rows in ``keep`` (positions among the block's rows) when
        given. ``num_rows``: the block's row count when the caller knows it."""
        utf8 = self.fast and _valid_utf8(data)
        if utf8 and keep is None:
            n = _object_lines(data)
            if n is not None and (num_rows is None or n == num_rows):
                try:
                    rows = self._decoder.decode_lines(data)
                except self._errors:
                    rows = None
                if rows is not None and len(rows) == n:
                    if len(self.columns) == 1:
                        return [r.f0 or "" for r in rows]
                    return [self._row_document(r) for r in rows]
        texts: list[str] = []
        row = -1
        for number, line in enumerate(data.split(b"\n"), start=first_line):
            if not line.strip(BLANK):
                continue
            row += 1
            if keep is not None and row not in keep:
                continue
            texts.append(self.document(line, path, number, utf8_checked=utf8) if self.fast else
                         self.json_document(line, path, number))
        return texts


def _object_lines(data: bytes) -> int | None:
    """The number of lines of ``data`` when every line starts with ``{`` and ends with ``}`` (``\\r``
    allowed after it), else ``None``. Then no JSON value can span a newline (after ``}`` only ``,``,
    ``}``, ``]`` or the end may follow, never ``{``; raw newlines are invalid inside strings), so
    ``decode_lines`` returning that many values means one value per line: exactly the line-by-line
    parse (and there are no blank lines). One vectorised pass over the bytes."""
    if not data:
        return None
    a = np.frombuffer(data, dtype=np.uint8)
    nl = np.flatnonzero(a == 10)
    ends = nl if data.endswith(b"\n") else np.append(nl, len(a))
    starts = np.concatenate(([0], nl[: len(ends) - 1] + 1))
    if np.any(ends - starts < 2) or np.any(a[starts] != 0x7B):
        return None
    last = a[ends - 1]
    cr = last == 0x0D
    if np.any(cr):
        if np.any(ends[cr] - starts[cr] < 3):
            return None
        last = last.copy()
        last[cr] = a[ends[cr] - 2]
    return len(ends) if np.all(last == 0x7D) else None


def _valid_utf8(data: bytes) -> bool:
    """Whether ``json.loads`` would decode these bytes (UTF-8 with surrogatepass). ``bytes.decode``
    itself: 21 ms per 4 MB block of the benchmark corpus here, faster than Arrow's validation
    (33 ms) — and importing pyarrow costs each process 0.3 s and 43 MB (0.9 s in a build, where
    it pulled in pandas)."""
    if data.isascii():
        return True
    try:
        data.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return False
    return True

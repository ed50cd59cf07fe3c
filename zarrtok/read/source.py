"""What the train layer may ask of tokens: the :class:`TokenSource` protocol, and the shard-reader
protocol the token array is built from.

Every token source (the multi-shard :class:`~zarrtok.read.token_array.TokenArray`, a shared-memory
copy) implements :class:`TokenSource` completely, so datasets and loaders never probe with
``hasattr``/``isinstance``. Shard readers (local memory maps, remote ranged GETs / chunk caches,
the Zarr fallback) implement :class:`ShardReader`; the conformance suite in
``tests/read/test_conformance.py`` holds all of them to the same tokens, errors and batch results.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Iterable, NamedTuple, Protocol, Sequence, runtime_checkable

import numpy as np

from ..format import RawChunkLayout
from ..storage.location import Location


@runtime_checkable
class TokenSource(Protocol):
    """A read-only 1-D stream of token ids."""

    dtype: np.dtype

    def __len__(self) -> int: ...

    def read(self, a: int, b: int) -> np.ndarray:
        """Tokens ``[a, b)`` (``0 <= a <= b <= len``, not checked); may be a read-only view."""

    def read_into(self, a: int, b: int, out: np.ndarray) -> None:
        """Copy tokens ``[a, b)`` into ``out`` (any numeric dtype, length ``b - a``)."""

    def read_batch_into(self, starts: Sequence[int], n: int, out: np.ndarray) -> None:
        """Fill row ``i`` of ``out`` with tokens ``[starts[i], starts[i] + n)`` in one batched read."""

    @property
    def is_local(self) -> bool:
        """True when reads are memory-speed (mapped local files or memory): global shuffles are cheap."""

    @property
    def chunk_size(self) -> int:
        """The largest chunk length of the source (the unit remote readers fetch)."""

    @property
    def num_chunks(self) -> int:
        """Chunks across the whole source (the range of :meth:`chunk_of`)."""

    def chunk_of(self, positions: Any) -> np.ndarray:
        """Global chunk number of each token position."""

    @property
    def readahead(self) -> int:
        """Chunks prefetched ahead of an access order (0: no read-ahead)."""

    @property
    def shared_cache(self) -> bool:
        """True when processes share fetched chunks (an on-disk cache directory)."""

    def prefetch_chunks(self, chunks: Iterable[int]) -> None:
        """Start fetching these global chunks in the background (no-op where nothing is fetched)."""


@dataclass(frozen=True)
class ShardSpec:
    """What a reader needs to know about one shard's token array."""

    location: Location
    array_path: str  # relative to the store root
    length: int
    chunk_size: int
    dtype: str
    raw: RawChunkLayout | None  # None: read through Zarr
    key: str = ""  # content identity for caches (the shard id); see zarrtok.read.cache
    name: str = ""  # "<split>/<shard>", for error messages
    block_bytes: int | None = None  # bytes per checksummed block (None: no block checksums)

    @property
    def where(self) -> str:
        """Store, split and shard, as error messages name them."""
        return f"store {self.location.url}, shard {self.name or self.array_path}"


class PendingRange(NamedTuple):
    """A byte range a reader could not serve from memory: object ``key`` bytes ``[start, end)``,
    to be written to ``out[row, col : col + tokens]`` by ``reader.fill(pending, blob, out)``."""

    reader: Any
    row: int
    col: int
    chunk: int
    lo: int  # shard-local token range [lo, hi)
    hi: int
    key: str
    start: int
    end: int


class ShardReader(Protocol):
    """One shard's tokens. ``gather`` serves batch pieces from memory and returns the byte ranges it
    could not, so a multi-shard batch issues all of them in one concurrent round."""

    length: int
    chunk_size: int
    dtype: np.dtype
    readahead: int

    def read(self, a: int, b: int) -> np.ndarray: ...

    def read_into(self, a: int, b: int, out: np.ndarray) -> None: ...

    def gather(self, pieces: Sequence[tuple[int, int, int, int]], out: np.ndarray) -> list[PendingRange]:
        """Copy each piece ``(row, col, a, b)`` (shard-local tokens ``[a, b)`` into ``out[row, col:]``)
        that can be served without a request; return the requests still needed."""

    def fill(self, pending: Sequence[PendingRange], blobs: Sequence[bytes], out: np.ndarray) -> None:
        """Write fetched ``blobs`` (one per pending range) into ``out``."""

    def prefetch(self, chunks: Iterable[int]) -> None: ...


class ChunkedShardReader:
    """Base of the shard readers: ``read`` / ``read_into`` / ``gather`` over ``_chunk(k)``, which
    returns chunk ``k``'s (verified) tokens."""

    spec: ShardSpec
    length: int
    chunk_size: int
    dtype: np.dtype
    readahead = 0
    is_local = False
    cache_dir: str | None = None

    def _chunk(self, k: int) -> np.ndarray:
        raise NotImplementedError

    def read(self, a: int, b: int) -> np.ndarray:
        """Tokens ``[a, b)`` of this shard (a read-only view when inside one chunk)."""
        if b <= a:
            return np.empty(0, dtype=self.dtype)
        c = self.chunk_size
        k = a // c
        if b <= (k + 1) * c:
            return self._chunk(k)[a - k * c : b - k * c]
        out = np.empty(b - a, dtype=self.dtype)
        self.read_into(a, b, out)
        return out

    def read_into(self, a: int, b: int, out: np.ndarray) -> None:
        """Copy tokens ``[a, b)`` into ``out`` (any numeric dtype, length ``b - a``)."""
        c = self.chunk_size
        pos = a
        while pos < b:
            k = pos // c
            end = min(b, (k + 1) * c)
            out[pos - a : end - a] = self._chunk(k)[pos - k * c : end - k * c]
            pos = end

    def gather(self, pieces: Sequence[tuple[int, int, int, int]], out: np.ndarray) -> list[PendingRange]:
        for row, col, a, b in pieces:
            self.read_into(a, b, out[row, col : col + (b - a)])
        return []

    def fill(self, pending: Sequence[PendingRange], blobs: Sequence[bytes], out: np.ndarray) -> None:
        if pending:
            raise RuntimeError(f"{type(self).__name__} issues no ranged requests")

    def read_batch_into(self, starts: Sequence[int], n: int, out: np.ndarray) -> None:
        """Fill row ``i`` of ``out`` with this shard's tokens ``[starts[i], starts[i] + n)``."""
        pending = self.gather([(row, 0, a, a + n) for row, a in enumerate(starts)], out)
        if pending:  # readers that issue requests (remote) override this method
            raise RuntimeError(f"{type(self).__name__} left {len(pending)} ranged request(s) unserved")

    def prefetch(self, chunks: Iterable[int]) -> None:
        """Start fetching chunks in the background (nothing to do for this reader)."""


class _ReadInterfaceSource:
    """A full :class:`TokenSource` around anything with ``len``, ``dtype``, ``read`` and ``read_into``
    (or a 1-D numpy array): memory-speed, one chunk, nothing to prefetch."""

    is_local = True
    readahead = 0
    shared_cache = False

    def __init__(self, inner: Any):
        if isinstance(inner, np.ndarray) and inner.ndim != 1:
            raise ValueError(f"a token array must be 1-D, got shape {inner.shape}")
        self.inner = inner
        self.dtype = np.dtype(inner.dtype)
        self._len = len(inner)

    def __len__(self) -> int:
        return self._len

    def read(self, a: int, b: int) -> np.ndarray:
        inner = self.inner
        return inner[a:b] if isinstance(inner, np.ndarray) else inner.read(a, b)

    def read_into(self, a: int, b: int, out: np.ndarray) -> None:
        inner = self.inner
        if isinstance(inner, np.ndarray):
            out[...] = inner[a:b]
        else:
            inner.read_into(a, b, out)

    def read_batch_into(self, starts: Sequence[int], n: int, out: np.ndarray) -> None:
        for row, a in enumerate(starts):
            self.read_into(a, a + n, out[row])

    @property
    def chunk_size(self) -> int:
        return max(1, self._len)

    @property
    def num_chunks(self) -> int:
        return 1 if self._len else 0

    def chunk_of(self, positions: Any) -> np.ndarray:
        return np.zeros(np.shape(positions), dtype=np.int64)

    def prefetch_chunks(self, chunks: Iterable[int]) -> None:
        """Nothing to fetch."""


def as_token_source(tokens: Any) -> TokenSource:
    """``tokens`` itself when it is a complete :class:`TokenSource`, else an adapter around a 1-D
    numpy array or any object with ``len``, ``dtype``, ``read(a, b)`` and ``read_into(a, b, out)``."""
    if isinstance(tokens, TokenSource):
        return tokens
    if isinstance(tokens, np.ndarray) or all(hasattr(tokens, a) for a in ("dtype", "read", "read_into", "__len__")):
        return _ReadInterfaceSource(tokens)
    raise TypeError(f"{type(tokens).__name__} is not a token source: it needs len(), dtype, read(a, b) and "
                    "read_into(a, b, out)")


def index_tokens(source: Any, key: Any) -> Any:
    """``source[key]`` with TokenArray semantics for every source: an int (negative from the end;
    ``IndexError`` out of range; ``TypeError`` for non-integers) gives one token, a slice a numpy
    array of exactly those tokens."""
    n = len(source)
    if isinstance(key, slice):
        start, stop, step = key.indices(n)
        if step == 1:
            return source.read(start, max(start, stop))
        picks = range(start, stop, step)
        if len(picks) == 0:
            return np.empty(0, dtype=source.dtype)
        lo, hi = min(picks[0], picks[-1]), max(picks[0], picks[-1]) + 1
        return source.read(lo, hi)[np.asarray(picks) - lo]
    try:
        if isinstance(key, (bool, np.bool_)):
            raise TypeError
        i = operator.index(key)
    except TypeError:
        raise TypeError(f"token indices must be integers or slices, not {type(key).__name__}") from None
    if i < 0:
        i += n
    if not 0 <= i < n:
        raise IndexError(f"index {key} out of range for {n} tokens")
    return source.read(i, i + 1)[0]

"""A split's tokens as one contiguous read-only array over its shards (:class:`TokenArray`), and the
choice of shard reader (:func:`make_shard_reader`).

Batched reads cut every window into per-shard pieces, let each shard serve what it holds in memory,
and fetch everything else in **one concurrent round** of ranged GETs, whatever the number of shards
(``read_batch_into``). Every reader pickles as a small descriptor (location + array path + sizes),
never as data, and re-creates file handles lazily in each process.
"""

from __future__ import annotations

import bisect
from typing import Any, Iterable, Sequence

import numpy as np

from .local import LocalShardReader
from .source import ShardSpec, index_tokens
from .zarr_fallback import DEFAULT_CACHE_BYTES, ZarrShardReader


def make_shard_reader(spec: ShardSpec, **options: Any):
    """The reader for a shard: memory maps for local raw chunks, ranged GETs / chunk cache for raw
    chunks elsewhere (:mod:`zarrtok.read.remote`), Zarr itself for any other encoding."""
    if spec.raw is not None and spec.location.is_local:
        return LocalShardReader(spec, budget=options.get("budget"), verify=options.get("verify", True))
    if spec.raw is not None:
        from .remote import DEFAULT_CACHE_BYTES as REMOTE_CACHE_BYTES
        from .remote import DEFAULT_READAHEAD, RemoteShardReader

        return RemoteShardReader(
            spec,
            mode=options.get("mode") or "auto",
            cache_bytes=options.get("cache_bytes") or REMOTE_CACHE_BYTES,
            cache_dir=options.get("cache_dir"),
            cache_dir_bytes=options.get("cache_dir_bytes"),
            readahead=DEFAULT_READAHEAD if options.get("readahead") is None else options["readahead"],
            policy=options.get("policy"),
            verify=options.get("verify", True),
        )
    return ZarrShardReader(spec, cache_bytes=options.get("cache_bytes") or DEFAULT_CACHE_BYTES)


class TokenArray:
    """A split's tokens as one contiguous read-only 1-D array over its shards (a
    :class:`~zarrtok.read.source.TokenSource`).

    ``len(a)``, ``a.dtype``, ``a[i]`` and ``a[i:j]`` (a numpy array of exactly those tokens, across
    chunk and shard boundaries; a read-only view where possible). ``read(a, b)``,
    ``read_into(a, b, out)`` and ``read_batch_into(starts, n, out)`` are the unchecked fast paths
    the dataset uses.
    """

    def __init__(self, readers: list, dtype: np.dtype, *, name: str = ""):
        self.readers = [r for r in readers if r.length > 0]
        self.dtype = np.dtype(dtype)
        self.name = name
        self.starts = [0]
        for r in self.readers:
            self.starts.append(self.starts[-1] + r.length)
        self.length = self.starts[-1]
        self.chunk_starts = [0]  # global chunk numbering across shards
        for r in self.readers:
            self.chunk_starts.append(self.chunk_starts[-1] + -(-r.length // r.chunk_size))
        self._starts_np = np.asarray(self.starts, dtype=np.int64)
        self._chunk_starts_np = np.asarray(self.chunk_starts, dtype=np.int64)
        self._chunk_sizes_np = np.asarray([r.chunk_size for r in self.readers], dtype=np.int64)
        self._single = self.readers[0] if len(self.readers) == 1 else None
        if self._single is not None:  # one shard: skip a call level on the hot path
            self.read = self._single.read
            self.read_into = self._single.read_into
            self.read_batch_into = self._single.read_batch_into

    def __getstate__(self) -> dict[str, Any]:
        return {"readers": self.readers, "dtype": self.dtype.str, "name": self.name}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["readers"], np.dtype(state["dtype"]), name=state["name"])

    def __len__(self) -> int:
        return self.length

    @property
    def shape(self) -> tuple[int]:
        return (self.length,)

    @property
    def nbytes(self) -> int:
        return self.length * self.dtype.itemsize

    def __repr__(self) -> str:
        return f"TokenArray(name={self.name!r}, length={self.length}, dtype={self.dtype}, shards={len(self.readers)})"

    # -- TokenSource properties -------------------------------------------------------------------
    @property
    def is_local(self) -> bool:
        """True when every shard is read from memory-mapped local files (or memory)."""
        return all(r.is_local for r in self.readers)

    @property
    def chunk_size(self) -> int:
        return max((r.chunk_size for r in self.readers), default=0)

    @property
    def num_chunks(self) -> int:
        """Chunks across all shards (the range of :meth:`chunk_of`)."""
        return self.chunk_starts[-1]

    @property
    def readahead(self) -> int:
        """Chunks the readers prefetch ahead of an access order (0 for local stores)."""
        return max((r.readahead for r in self.readers), default=0)

    @property
    def shared_cache(self) -> bool:
        return any(r.cache_dir for r in self.readers)

    # -- reads ------------------------------------------------------------------------------------
    def read(self, a: int, b: int) -> np.ndarray:
        """Tokens ``[a, b)``; requires ``0 <= a <= b <= len(self)`` (not checked)."""
        if a == b:
            return np.empty(0, dtype=self.dtype)
        i = bisect.bisect_right(self.starts, a) - 1
        if b <= self.starts[i + 1]:
            base = self.starts[i]
            return self.readers[i].read(a - base, b - base)
        out = np.empty(b - a, dtype=self.dtype)
        self.read_into(a, b, out)
        return out

    def read_into(self, a: int, b: int, out: np.ndarray) -> None:
        """Copy tokens ``[a, b)`` into ``out`` (length ``b - a``, any numeric dtype)."""
        if a == b:
            return
        self.read_batch_into([a], b - a, out.reshape(1, -1))

    def read_batch_into(self, starts: Sequence[int], n: int, out: np.ndarray) -> None:
        """Fill row ``i`` of ``out`` with tokens ``[starts[i], starts[i] + n)``: every shard serves its
        pieces, and all byte ranges no shard holds in memory are fetched in one concurrent round."""
        if n <= 0:
            return
        bounds = self.starts
        pieces: dict[int, list[tuple[int, int, int, int]]] = {}
        for row, a in enumerate(starts):
            a = int(a)
            b = a + n
            i = bisect.bisect_right(bounds, a) - 1
            pos = a
            while pos < b:
                end = min(b, bounds[i + 1])
                pieces.setdefault(i, []).append((row, pos - a, pos - bounds[i], end - bounds[i]))
                pos = end
                i += 1
        pending = []
        for i, shard_pieces in pieces.items():
            pending.extend(self.readers[i].gather(shard_pieces, out))
        if pending:  # only remote readers leave requests; all shards of a split are in one store
            from .remote import fetch_and_fill

            fetch_and_fill(pending, out)

    def chunk_of(self, positions: Any) -> np.ndarray:
        """Global chunk number (counting across shards) of each token position."""
        pos = np.asarray(positions, dtype=np.int64)
        shard = np.searchsorted(self._starts_np[1:], pos, side="right")
        shard = np.minimum(shard, len(self.readers) - 1)
        return self._chunk_starts_np[shard] + (pos - self._starts_np[shard]) // self._chunk_sizes_np[shard]

    def prefetch_chunks(self, chunks: Iterable[int]) -> None:
        """Start fetching these global chunks in the background (no-op for local readers)."""
        for g in chunks:
            i = bisect.bisect_right(self.chunk_starts, int(g)) - 1
            if 0 <= i < len(self.readers):
                self.readers[i].prefetch([int(g) - self.chunk_starts[i]])

    def __getitem__(self, key: Any) -> Any:
        return index_tokens(self, key)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = np.empty(self.length, dtype=dtype or self.dtype)
        if self.length:
            self.read_into(0, self.length, out)
        return out

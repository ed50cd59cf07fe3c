"""Reading token ranges from shards: memory-mapped raw chunk files locally, :mod:`zarrtok.remote`
for raw chunks elsewhere, Zarr itself (whole chunks, LRU-cached) for any other encoding; and
:class:`TokenArray`, one contiguous virtual array over a split's shards.

Every reader pickles as a small descriptor (location + array path + sizes), never as data, and
re-creates file handles lazily in each process, so DataLoader workers (fork, spawn, forkserver)
stay cheap and safe.
"""

from __future__ import annotations

import bisect
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import IncompleteStoreError
from .format import RawChunkLayout
from .location import Location
from . import mapping
from .mapping import MapBudget, map_file

logger = logging.getLogger(__name__)

#: Bytes of whole chunks cached per process by the Zarr reader.
DEFAULT_CACHE_BYTES = 256 << 20


class ChunkCache:
    """A per-process LRU of whole chunks (numpy arrays), bounded in bytes."""

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self.nbytes = 0
        self._items: OrderedDict[Any, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any) -> np.ndarray | None:
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
            return hit

    def clear(self) -> None:
        """Drop everything."""
        with self._lock:
            self._items.clear()
            self.nbytes = 0

    def __contains__(self, key: Any) -> bool:
        return key in self._items

    def put(self, key: Any, value: np.ndarray) -> None:
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.nbytes -= old.nbytes
            self._items[key] = value
            self.nbytes += value.nbytes
            while self.nbytes > self.max_bytes and len(self._items) > 1:
                _, dropped = self._items.popitem(last=False)
                self.nbytes -= dropped.nbytes


@dataclass(frozen=True)
class ShardSpec:
    """What a reader needs to know about one shard's token array."""

    location: Location
    array_path: str  # relative to the store root
    length: int
    chunk_size: int
    dtype: str
    raw: RawChunkLayout | None  # None: read through Zarr


class ChunkedShardReader:
    """Base of the shard readers: ``read`` / ``read_into`` over a ``_chunk(k)`` that returns chunk ``k``'s tokens."""

    chunk_size: int
    dtype: np.dtype

    def _chunk(self, k: int) -> np.ndarray:
        raise NotImplementedError

    def read(self, a: int, b: int) -> np.ndarray:
        """Tokens ``[a, b)`` of this shard (a read-only view when inside one chunk)."""
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


class LocalShardReader(ChunkedShardReader):
    """Reads a local shard by memory-mapping its raw chunk files (a slice costs a few µs).

    Maps hold no file descriptor (see :mod:`zarrtok.mapping`); how many stay mapped is bounded by a
    :class:`~zarrtok.mapping.MapBudget`, the process-wide one unless ``budget`` is given.
    """

    def __init__(self, spec: ShardSpec, *, budget: MapBudget | None = None):
        assert spec.raw is not None and spec.location.is_local
        self.spec = spec
        self.length = spec.length
        self.chunk_size = spec.chunk_size
        self.dtype = np.dtype(spec.dtype)
        self.budget = budget
        self._dir = os.path.join(spec.location.local_path, spec.array_path)
        self._maps: dict[int, np.ndarray] = {}
        self._num_chunks = spec.raw.num_chunks

    def __getstate__(self) -> dict[str, Any]:
        return {"spec": self.spec, "limit": self.budget.limit if self.budget is not None else None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        limit = state.get("limit")
        self.__init__(state["spec"], budget=MapBudget(limit) if limit else None)

    def _forget(self, k: int) -> None:
        self._maps.pop(k, None)

    def _open(self, k: int) -> np.ndarray:
        if not 0 <= k < self._num_chunks:
            raise IndexError(f"chunk {k} out of range")
        path = os.path.join(self._dir, self.spec.raw.chunk_key(k))
        need = self.chunk_size * self.dtype.itemsize
        try:
            arr = map_file(path, need, self.dtype, self.chunk_size)
        except FileNotFoundError as exc:
            raise IncompleteStoreError(f"chunk file {path} is missing") from exc
        except ValueError as exc:
            raise IncompleteStoreError(f"chunk file {exc}") from exc
        self._maps[k] = arr
        (self.budget if self.budget is not None else mapping.GLOBAL_BUDGET).add(self, k, self._forget)
        return arr

    def _chunk(self, k: int) -> np.ndarray:
        m = self._maps.get(k)
        return m if m is not None else self._open(k)

    def read(self, a: int, b: int) -> np.ndarray:
        """Tokens ``[a, b)`` of this shard (a read-only view when inside one chunk). Inlined hot path."""
        c = self.chunk_size
        k = a // c
        if b <= (k + 1) * c:
            m = self._maps.get(k)
            if m is None:
                m = self._open(k)
            off = a - k * c
            return m[off : off + (b - a)]
        out = np.empty(b - a, dtype=self.dtype)
        self.read_into(a, b, out)
        return out


class ZarrShardReader(ChunkedShardReader):
    """Reads a shard through Zarr, fetching whole chunks into a bounded per-process LRU cache.

    Used for arrays whose chunks are not raw bytes (e.g. a store someone rewrote compressed).
    """

    def __init__(self, spec: ShardSpec, *, cache_bytes: int = DEFAULT_CACHE_BYTES):
        self.spec = spec
        self.length = spec.length
        self.chunk_size = spec.chunk_size
        self.dtype = np.dtype(spec.dtype)
        self.cache_bytes = int(cache_bytes)
        self._pid = None
        self._array = None
        self._cache = ChunkCache(self.cache_bytes)

    def __getstate__(self) -> dict[str, Any]:
        return {"spec": self.spec, "cache_bytes": self.cache_bytes}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["spec"], cache_bytes=state["cache_bytes"])

    def _zarr_array(self):
        pid = os.getpid()
        if self._array is None or self._pid != pid:
            import zarr

            location = Location(self.spec.location.url, self.spec.location.storage_options)  # fresh fs per process
            group = zarr.open_group(location.zarr_store(read_only=True), mode="r")
            self._array = group[self.spec.array_path]
            self._pid = pid
            self._cache = ChunkCache(self.cache_bytes)
        return self._array

    def _chunk(self, k: int) -> np.ndarray:
        hit = self._cache.get(k)
        if hit is not None:
            return hit
        arr = self._zarr_array()
        start = k * self.chunk_size
        data = np.asarray(arr[start : min(start + self.chunk_size, self.length)])
        data.flags.writeable = False
        self._cache.put(k, data)
        return data


def make_shard_reader(spec: ShardSpec, **options: Any):
    """The reader for a shard: memory maps for local raw chunks, ranged GETs / chunk cache for raw
    chunks elsewhere (:mod:`zarrtok.remote`), Zarr itself for any other encoding."""
    if spec.raw is not None and spec.location.is_local:
        return LocalShardReader(spec, budget=options.get("budget"))
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
        )
    return ZarrShardReader(spec, cache_bytes=options.get("cache_bytes") or DEFAULT_CACHE_BYTES)


class TokenArray:
    """A split's tokens as one contiguous read-only 1-D array over its shards.

    ``len(a)``, ``a.dtype``, ``a[i]`` and ``a[i:j]`` (a numpy array of exactly those tokens, across
    chunk and shard boundaries; a read-only view where possible). ``read(a, b)`` and
    ``read_into(a, b, out)`` are the unchecked fast paths the dataset uses.
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
        self._single = self.readers[0] if len(self.readers) == 1 else None
        if self._single is not None:  # one shard: skip a call level on the hot path
            self.read = self._single.read
            self.read_into = self._single.read_into

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
        pos = a
        i = bisect.bisect_right(self.starts, a) - 1
        while pos < b:
            base = self.starts[i]
            end = min(b, self.starts[i + 1])
            self.readers[i].read_into(pos - base, end - base, out[pos - a : end - a])
            pos = end
            i += 1

    def read_batch_into(self, starts: Any, n: int, out: np.ndarray) -> None:
        """Fill row ``i`` of ``out`` with tokens ``[starts[i], starts[i] + n)`` (concurrent GETs remotely)."""
        single = self._single
        if single is not None and hasattr(single, "read_batch_into"):
            single.read_batch_into(starts, n, out)
            return
        for row, a in enumerate(starts):
            self.read_into(a, a + n, out[row])

    def chunk_of(self, positions: Any) -> np.ndarray:
        """Global chunk number (counting across shards) of each token position."""
        pos = np.asarray(positions, dtype=np.int64)
        shard = np.searchsorted(np.asarray(self.starts[1:]), pos, side="right")
        shard = np.minimum(shard, len(self.readers) - 1)
        sizes = np.asarray([r.chunk_size for r in self.readers], dtype=np.int64)
        return np.asarray(self.chunk_starts[:-1], dtype=np.int64)[shard] + (pos - np.asarray(self.starts[:-1])[shard]) // sizes[shard]

    @property
    def num_chunks(self) -> int:
        """Chunks across all shards (the range of :meth:`chunk_of`)."""
        return self.chunk_starts[-1]

    @property
    def readahead(self) -> int:
        """Chunks the readers prefetch ahead of an access order (0 for local stores)."""
        return max((getattr(r, "readahead", 0) for r in self.readers), default=0)

    def prefetch_chunks(self, chunks: Any) -> None:
        """Start fetching these global chunks in the background (no-op for local readers)."""
        for g in chunks:
            i = bisect.bisect_right(self.chunk_starts, int(g)) - 1
            if 0 <= i < len(self.readers) and hasattr(self.readers[i], "prefetch"):
                self.readers[i].prefetch([int(g) - self.chunk_starts[i]])

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, slice):
            start, stop, step = key.indices(self.length)
            if step == 1:
                return self.read(start, max(start, stop))
            picks = range(start, stop, step)
            if len(picks) == 0:
                return np.empty(0, dtype=self.dtype)
            lo, hi = min(picks[0], picks[-1]), max(picks[0], picks[-1]) + 1
            return self.read(lo, hi)[np.asarray(picks) - lo]
        try:
            i = int(np.int64(key)) if not isinstance(key, (int, np.integer)) else int(key)
        except (TypeError, ValueError):
            raise TypeError(f"TokenArray indices must be integers or slices, not {type(key).__name__}") from None
        if i < 0:
            i += self.length
        if not 0 <= i < self.length:
            raise IndexError(f"index {key} out of range for {self.length} tokens")
        return self.read(i, i + 1)[0]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = np.empty(self.length, dtype=dtype or self.dtype)
        if self.length:
            self.read_into(0, self.length, out)
        return out

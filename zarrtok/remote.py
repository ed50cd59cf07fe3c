"""Reading token ranges from object storage (any fsspec URL) without Zarr's per-call machinery.

Chunks of a token array are raw little-endian bytes (docs/format.md), so the bytes of tokens
``[a, b)`` inside chunk ``k`` are at a computable offset of object ``<array>/c/<k>``. Three modes:

* ``"range"``: one ranged GET for exactly the bytes a window needs (two when it straddles a chunk
  boundary; a batch's ranges are fetched concurrently). Best for random access (notebooks, eval).
* ``"cache"``: whole chunks fetched into a bounded in-memory LRU (per process, in bytes), optionally
  through an on-disk cache directory shared by processes, with read-ahead of upcoming chunks on a
  small thread pool. Best for training epochs (each chunk fetched about once).
* ``"auto"`` (default): a chunk's first read is a ranged GET; a second read of the same chunk while
  it is still recent fetches the whole chunk into the cache. Random access costs one small GET per
  window; an epoch in chunk-local order transfers each chunk about once.

Whole-chunk fetches verify the chunk's CRC-32C when the array has one. Filesystems, thread pools
and caches are per process (re-created after fork, never pickled), so readers work in DataLoader
workers started with fork, spawn or forkserver, even when first used in the parent.
"""

from __future__ import annotations

import concurrent.futures
import fcntl
import hashlib
import logging
import os
import threading
import uuid
from collections import OrderedDict
from typing import Any, Callable, Iterable

import fsspec
import google_crc32c  # zarr's crc32c codec depends on it
import numpy as np

from .chunks import ChunkCache, ChunkedShardReader, ShardSpec
from .errors import IncompleteStoreError
from .mapping import map_file

logger = logging.getLogger(__name__)

MODES = ("auto", "range", "cache")
DEFAULT_CACHE_BYTES = 512 << 20
DEFAULT_READAHEAD = 2
_RECENT_CHUNKS = 4096  # chunks remembered by "auto" mode as recently touched


# -- per-process state -------------------------------------------------------------------------------
_PROCESS: dict[str, Any] = {"pid": None}
_PROCESS_LOCK = threading.Lock()


def _after_fork_in_child() -> None:
    global _PROCESS_LOCK
    _PROCESS_LOCK = threading.Lock()  # a parent thread may have held it at fork time


os.register_at_fork(after_in_child=_after_fork_in_child)


def _process_state() -> dict[str, Any]:
    """Per-process caches and thread pool; reset in a new process (fork-safe)."""
    pid = os.getpid()
    if _PROCESS["pid"] != pid:
        with _PROCESS_LOCK:
            if _PROCESS["pid"] != pid:
                _PROCESS.clear()
                _PROCESS.update(pid=pid, caches={}, pool=None)
    return _PROCESS


def _thread_pool() -> concurrent.futures.ThreadPoolExecutor:
    state = _process_state()
    if state["pool"] is None:
        state["pool"] = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="zarrtok-fetch")
    return state["pool"]


def shared_chunk_cache(max_bytes: int) -> ChunkCache:
    """The process's chunk cache of a given size (one per size, shared by all remote readers)."""
    caches = _process_state()["caches"]
    cache = caches.get(max_bytes)
    if cache is None:
        cache = caches[max_bytes] = ChunkCache(max_bytes)
    return cache


def clear_memory_caches() -> None:
    """Drop every chunk this process holds in memory (e.g. to measure a cold epoch; ``cache_dir``
    contents are not touched)."""
    for cache in list(_process_state()["caches"].values()):
        cache.clear()


class DiskChunkCache:
    """A directory of fetched chunks shared safely by processes.

    A chunk is written to a temporary file and renamed into place (readers never see a partial
    file); an exclusive ``flock`` per chunk makes a second process wait for the first one's fetch
    instead of fetching again. When ``max_bytes`` is set, the least recently used files are deleted
    after each write (deleting a file another process has mapped is safe on POSIX).
    """

    def __init__(self, directory: str, max_bytes: int | None = None):
        self.directory = os.path.abspath(os.path.expanduser(directory))
        self.max_bytes = max_bytes
        os.makedirs(self.directory, exist_ok=True)

    def path(self, namespace: str, key: str) -> str:
        return os.path.join(self.directory, namespace, key)

    def get_or_fetch(self, namespace: str, key: str, nbytes: int, dtype: np.dtype, count: int,
                     fetch: Callable[[], bytes]) -> tuple[np.ndarray, bool]:
        """Map the cached chunk, fetching it first if absent. Returns ``(array, fetched)``."""
        path = self.path(namespace, key)
        try:
            arr = map_file(path, nbytes, dtype, count)
            os.utime(path)
            return arr, False
        except (FileNotFoundError, ValueError):
            pass
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".lock", "a+b") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                try:  # another process may have fetched it while we waited for the lock
                    return map_file(path, nbytes, dtype, count), False
                except (FileNotFoundError, ValueError):
                    pass
                data = fetch()
                tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
                try:
                    with open(tmp, "wb") as f:
                        f.write(data)
                    os.replace(tmp, path)
                except BaseException:
                    if os.path.exists(tmp):
                        os.remove(tmp)
                    raise
            finally:  # explicit: a forked child's inherited copy of this descriptor must not keep it locked
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
        self._evict(keep=path)
        # Use the bytes in hand: another process may already have evicted the file again.
        return np.frombuffer(data, dtype=dtype, count=count), True

    def _evict(self, keep: str) -> None:
        if not self.max_bytes:
            return
        entries = []
        for root, _, files in os.walk(self.directory):
            for name in files:
                if name.endswith(".lock") or ".tmp-" in name:
                    continue
                p = os.path.join(root, name)
                try:
                    st = os.stat(p)
                except FileNotFoundError:
                    continue
                entries.append((st.st_mtime, st.st_size, p))
        total = sum(e[1] for e in entries)
        for _, size, p in sorted(entries):
            if total <= self.max_bytes:
                break
            if p == keep:
                continue
            try:
                os.remove(p)
                total -= size
            except FileNotFoundError:
                pass


class RemoteShardReader(ChunkedShardReader):
    """Reads a shard on any fsspec filesystem by ranged GETs and/or whole-chunk fetches (see module doc)."""

    def __init__(
        self,
        spec: ShardSpec,
        *,
        mode: str = "auto",
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        cache_dir: str | None = None,
        cache_dir_bytes: int | None = None,
        readahead: int = DEFAULT_READAHEAD,
    ):
        if mode not in MODES:
            raise ValueError(f"unknown read mode {mode!r}: use one of {MODES}")
        if spec.raw is None:
            raise ValueError("RemoteShardReader needs raw (uncompressed) chunks")
        self.spec = spec
        self.mode = mode
        self.length = spec.length
        self.chunk_size = spec.chunk_size
        self.dtype = np.dtype(spec.dtype)
        self.cache_bytes = int(cache_bytes)
        self.cache_dir = cache_dir
        self.cache_dir_bytes = cache_dir_bytes
        self.readahead = int(readahead)
        self._num_chunks = spec.raw.num_chunks
        self._chunk_bytes = self.chunk_size * self.dtype.itemsize
        self._namespace = hashlib.sha256(spec.location.url.encode()).hexdigest()[:16] + "/" + spec.array_path
        self._reset_process_state()
        self._disk = DiskChunkCache(cache_dir, cache_dir_bytes) if cache_dir else None
        self.stats = {"range_requests": 0, "range_bytes": 0, "chunk_fetches": 0, "chunk_bytes": 0}

    def __getstate__(self) -> dict[str, Any]:
        return {"spec": self.spec, "mode": self.mode, "cache_bytes": self.cache_bytes, "cache_dir": self.cache_dir,
                "cache_dir_bytes": self.cache_dir_bytes, "readahead": self.readahead}

    def __setstate__(self, state: dict[str, Any]) -> None:
        spec = state.pop("spec")
        self.__init__(spec, **state)

    def _reset_process_state(self) -> None:
        """Fresh per-process state: a forked child must not wait on its parent's in-flight fetches
        (their threads do not exist in the child) or inherit a lock held at fork time."""
        self._pid = os.getpid()
        self._recent: OrderedDict[int, None] = OrderedDict()
        self._inflight: dict[int, concurrent.futures.Future] = {}
        self._lock = threading.Lock()
        self._chunk_cache = shared_chunk_cache(self.cache_bytes)

    def _check_process(self) -> None:
        if self._pid != os.getpid():
            self._reset_process_state()

    # -- objects -------------------------------------------------------------------------------
    def _fs(self) -> tuple[fsspec.AbstractFileSystem, str]:
        location = self.spec.location
        return location.fs, f"{location.path}/{self.spec.array_path}"

    def _object(self, k: int) -> tuple[fsspec.AbstractFileSystem, str]:
        if not 0 <= k < self._num_chunks:
            raise IndexError(f"chunk {k} out of range")
        fs, base = self._fs()
        return fs, f"{base}/{self.spec.raw.chunk_key(k)}"

    def _cache(self) -> ChunkCache:
        self._check_process()
        return self._chunk_cache

    def _key(self, k: int) -> tuple[str, int]:
        return (self._namespace, k)

    # -- whole chunks --------------------------------------------------------------------------
    def _download(self, k: int) -> memoryview:
        """The used bytes of chunk ``k`` (all of it, except the padding of a shard's last chunk),
        checksum verified when the array has one."""
        fs, path = self._object(k)
        layout = self.spec.raw
        trailer = layout.trailer_bytes
        used = layout.used_items(k) * self.dtype.itemsize
        end = used + trailer  # bytes to read
        try:
            if used == self._chunk_bytes or not trailer:
                # One ranged GET (s3fs sends HEAD + GET for an unranged read).
                raw = fs.cat_file(path, start=0, end=end)
                crc = None
            else:  # a padded last chunk: the used prefix and the checksum, never the padding
                raw, crc = fs.cat_ranges([path, path], [0, self._chunk_bytes], [used, self._chunk_bytes + trailer])
                for part in (raw, crc):
                    if isinstance(part, Exception):
                        raise part
        except FileNotFoundError:
            raise IncompleteStoreError(f"chunk object {path} is missing") from None
        got = len(raw) + (len(crc) if crc is not None else 0)
        self.stats["chunk_fetches"] += 1
        self.stats["chunk_bytes"] += got
        if got != end:
            raise IncompleteStoreError(f"chunk object {path}: read {got} bytes, expected {end}")
        if trailer == 4:
            if crc is None:
                _verify_crc32c(raw, path)
            else:
                pad = np.full(layout.chunk_size - layout.used_items(k), layout.fill_value, dtype=self.dtype)
                _verify_crc32c_parts(raw, pad.tobytes(), crc, path)
        return memoryview(raw)[:used]  # a view: no copy of the chunk

    def _load(self, k: int) -> np.ndarray:
        count = self.spec.raw.used_items(k)
        if self._disk is not None:
            arr, _ = self._disk.get_or_fetch(self._namespace, self.spec.raw.chunk_key(k),
                                             count * self.dtype.itemsize, self.dtype, count,
                                             lambda: self._download(k))
        else:
            arr = np.frombuffer(self._download(k), dtype=self.dtype, count=count)
        self._cache().put(self._key(k), arr)
        return arr

    def _chunk(self, k: int) -> np.ndarray:
        hit = self._cache().get(self._key(k))
        if hit is not None:
            return hit
        self._check_process()
        with self._lock:
            future = self._inflight.get(k)
        if future is not None:
            return future.result()
        return self._load(k)

    def prefetch(self, chunks: Iterable[int]) -> None:
        """Fetch these chunks into the cache in the background (no-op for cached or in-flight ones)."""
        if self.mode == "range":
            return
        self._check_process()
        cache = self._cache()
        pool = None
        for k in chunks:
            if not 0 <= k < self._num_chunks or self._key(k) in cache:
                continue
            with self._lock:
                if k in self._inflight:
                    continue
                pool = pool or _thread_pool()
                future = pool.submit(self._load, k)
                self._inflight[k] = future
            future.add_done_callback(lambda _f, k=k: self._done(k))

    def _done(self, k: int) -> None:
        with self._lock:
            self._inflight.pop(k, None)

    # -- ranged reads --------------------------------------------------------------------------
    def _use_range(self, k: int) -> bool:
        """Whether to serve a read in chunk ``k`` by a ranged GET (else via the whole chunk)."""
        if self.mode == "range":
            return True
        self._check_process()
        if self._key(k) in self._cache():
            return False
        if self.mode == "cache" or k in self._inflight:
            return False
        if k in self._recent:  # auto: second touch of a recent chunk -> fetch it whole
            del self._recent[k]
            return False
        self._recent[k] = None
        if len(self._recent) > _RECENT_CHUNKS:
            self._recent.popitem(last=False)
        return True

    def read_into(self, a: int, b: int, out: np.ndarray) -> None:
        """Copy tokens ``[a, b)`` into ``out``."""
        self.read_batch_into([a], b - a, out[None, :] if out.ndim == 1 else out)

    def read(self, a: int, b: int) -> np.ndarray:
        """Tokens ``[a, b)`` of this shard."""
        c = self.chunk_size
        k = a // c
        out = np.empty((1, b - a), dtype=self.dtype)
        if a < b <= (k + 1) * c:  # inside one chunk: decide range-vs-chunk exactly once
            if not self._use_range(k):
                return self._chunk(k)[a - k * c : b - k * c]
            self._fetch_ranges([(0, k, a, b)], [a], out)
            return out[0]
        self.read_batch_into([a], b - a, out)
        return out[0]

    def read_batch_into(self, starts: Iterable[int], n: int, out: np.ndarray) -> None:
        """Fill row ``i`` of ``out`` with tokens ``[starts[i], starts[i] + n)``; all ranged GETs of
        the batch are issued concurrently."""
        starts = list(starts)
        if n <= 0:
            return
        c = self.chunk_size
        cache = self._cache()  # also resets per-process state in a new process
        namespace = self._namespace
        use_cache = self.mode != "range"  # range mode: exactly one GET per window piece, always
        held: dict[int, np.ndarray] = {}  # chunks this batch already holds (one cache lookup per chunk)
        ranged: list[tuple[int, int, int, int]] = []  # (row, k, lo, hi)
        for row, a in enumerate(starts):
            b = a + n
            k = a // c
            while True:
                hi = min(b, (k + 1) * c)
                chunk = held.get(k)
                if chunk is None and use_cache:
                    chunk = cache.get((namespace, k))
                    if chunk is None and not self._use_range(k):
                        chunk = self._chunk(k)
                    if chunk is not None:
                        held[k] = chunk
                if chunk is None:
                    ranged.append((row, k, max(a, k * c), hi))
                else:
                    lo = max(a, k * c)
                    out[row, lo - a : hi - a] = chunk[lo - k * c : hi - k * c]
                if hi >= b:
                    break
                k += 1
        if ranged:
            self._fetch_ranges(ranged, starts, out)

    def _fetch_ranges(self, ranged: list[tuple[int, int, int, int]], starts: list[int], out: np.ndarray) -> None:
        """Fetch ``(row, chunk, lo, hi)`` token ranges concurrently into ``out[row]`` (row offset ``starts[row]``)."""
        c, itemsize = self.chunk_size, self.dtype.itemsize
        fs, base = self._fs()
        paths = [f"{base}/{self.spec.raw.chunk_key(k)}" for _, k, _, _ in ranged]
        begins = [(lo - k * c) * itemsize for _, k, lo, _ in ranged]
        ends = [(hi - k * c) * itemsize for _, k, _, hi in ranged]
        try:
            blobs = fs.cat_ranges(paths, begins, ends) if len(ranged) > 1 else [fs.cat_file(paths[0], start=begins[0], end=ends[0])]
        except FileNotFoundError as exc:
            raise IncompleteStoreError(f"chunk object missing: {exc}") from None
        for (row, k, lo, hi), blob in zip(ranged, blobs):
            if isinstance(blob, Exception):
                raise blob
            if len(blob) != (hi - lo) * itemsize:
                raise IncompleteStoreError(f"short read from {base}: {len(blob)} bytes for {hi - lo} tokens")
            a = starts[row]
            out[row, lo - a : hi - a] = np.frombuffer(blob, dtype=self.dtype)
            self.stats["range_requests"] += 1
            self.stats["range_bytes"] += len(blob)


#: CRC-32C of (data + its little-endian CRC-32C) is this constant for intact data (the CRC residue).
_CRC32C_RESIDUE = 0x48674BC7


def _verify_crc32c(raw: bytes, path: str) -> None:
    """Check a chunk object (data followed by its 4-byte CRC-32C) without copying the data."""
    if google_crc32c.value(raw) != _CRC32C_RESIDUE:
        raise IncompleteStoreError(f"checksum mismatch in chunk object {path}: the object is corrupted")


def _verify_crc32c_parts(data: bytes, pad: bytes, stored: bytes, path: str) -> None:
    """Check a padded chunk from its used bytes, the padding it must hold (the array's fill value,
    never downloaded) and its stored little-endian CRC-32C."""
    if google_crc32c.extend(google_crc32c.value(data), pad) != int.from_bytes(stored, "little"):
        raise IncompleteStoreError(f"checksum mismatch in chunk object {path}: the object is corrupted")

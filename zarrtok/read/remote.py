"""Reading token ranges from object storage (any fsspec URL) without Zarr's per-call machinery.

Chunks of a token array are raw little-endian bytes (docs/format.md), so the bytes of tokens
``[a, b)`` inside chunk ``k`` are at a computable offset of object ``<array>/c/<k>``. Three modes:

* ``"range"``: one ranged GET for exactly the bytes a window needs (two when it straddles a chunk
  boundary; a batch's ranges, across all shards, are fetched concurrently in one round). Best for
  random access (notebooks, eval).
* ``"cache"``: whole chunks fetched into a bounded in-memory LRU (per process, in bytes, shared by
  all readers of that size), optionally through an on-disk cache directory shared by processes,
  with read-ahead of upcoming chunks on a small thread pool. Best for training epochs (each chunk
  fetched about once).
* ``"auto"`` (default): a chunk's first read is a ranged GET; a second read of the same chunk while
  it is still recent fetches the whole chunk into the cache. Random access costs one small GET per
  window; an epoch in chunk-local order transfers each chunk about once.

Whole-chunk fetches verify the chunk's CRC-32C when the array has one. Caches are keyed by the
shard's id (store content), never by URL. Every request goes through the object I/O layer
(:mod:`zarrtok.storage.objects`: retries, deadline, counters). Thread pools and caches are per
process (:mod:`zarrtok.storage.process`), so readers work in DataLoader workers started with fork,
spawn or forkserver, even when first used in the parent.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import threading
from collections import OrderedDict
from typing import Any, Iterable, Sequence

import numpy as np

from ..errors import ChecksumError, IncompleteStoreError
from ..format import (
    BLOCK_CRCS_DTYPE,
    DOC_ENDS_CHUNK,
    block_crcs,
    blocks_per_chunk,
    check_chunk_crc,
    check_padded_chunk_crc,
)
from ..storage.objects import RetryPolicy
from ..storage.process import thread_pool
from .cache import ChunkCache, shared_chunk_cache
from .disk_cache import DiskChunkCache
from .source import ChunkedShardReader, PendingRange, ShardSpec

logger = logging.getLogger(__name__)

MODES = ("auto", "range", "cache")
DEFAULT_CACHE_BYTES = 512 << 20
DEFAULT_READAHEAD = 2
_RECENT_CHUNKS = 4096  # chunks remembered by "auto" mode as recently touched
#: An overwrite writes a new generation under new shard names and sweeps the old one after its commit,
#: so a reader of the old generation finds its objects either intact or missing, never replaced.
_REPLACED_HINT = " (if the store was rebuilt or overwritten since it was opened, reopen it)"


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
        policy: RetryPolicy | None = None,
        verify: bool = True,
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
        if not spec.key:
            raise ValueError("RemoteShardReader needs the shard's content key (ShardSpec.key) for its caches")
        self._namespace = spec.key  # content identity: a rebuilt store at the same URL has new keys
        self._disk_namespace = f"{spec.key}/{spec.array_path}"
        self.verify = bool(verify)
        self.block_bytes = spec.block_bytes if spec.raw.trailer_bytes == 4 and self.verify else None
        #: ranged reads are verified against block checksums when the shard has them; without them
        #: (format-1 stores) "auto" reads whole, verified chunks and only explicit "range" reads
        #: unverified bytes (with a warning)
        self.verified_ranges = bool(self.block_bytes)
        if mode == "range" and not self.verified_ranges and self.verify:
            logger.warning("%s: ranged reads are NOT verified (the shard has no block checksums: built by an "
                           "older zarrtok or with checksum=None); use mode='cache' for verified reads", spec.where)
        self.policy = policy
        self._io = spec.location.objects(policy)
        self._reset_process_state()
        self._disk = DiskChunkCache(cache_dir, cache_dir_bytes) if cache_dir else None
        self.stats = {"range_requests": 0, "range_bytes": 0, "chunk_fetches": 0, "chunk_bytes": 0}

    def __getstate__(self) -> dict[str, Any]:
        return {"spec": self.spec, "mode": self.mode, "cache_bytes": self.cache_bytes, "cache_dir": self.cache_dir,
                "cache_dir_bytes": self.cache_dir_bytes, "readahead": self.readahead, "policy": self.policy,
                "verify": self.verify}

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
        self._blocks: np.ndarray | None = None

    def _check_process(self) -> None:
        if self._pid != os.getpid():
            self._reset_process_state()

    # -- objects -------------------------------------------------------------------------------
    def _key_of(self, k: int) -> str:
        """Object key (relative to the store root) of chunk ``k``."""
        if not 0 <= k < self._num_chunks:
            raise IndexError(f"chunk {k} out of range")
        return f"{self.spec.array_path}/{self.spec.raw.chunk_key(k)}"

    def _cache(self) -> ChunkCache:
        self._check_process()
        return self._chunk_cache

    def _key(self, k: int) -> tuple[str, int]:
        return (self._namespace, k)

    def block_table_requests(self) -> list[tuple[str, int, int]]:
        """The GETs ``(key, start, end)`` of this shard's block checksums while this process does not
        hold them yet (the token array adds them to a batch's one concurrent round), else ``[]``."""
        if not self.verified_ranges or self._blocks is not None:
            return []
        count = self._num_chunks * blocks_per_chunk(self.chunk_size, self.dtype.itemsize, self.block_bytes)
        chunk = DOC_ENDS_CHUNK if count >= DOC_ENDS_CHUNK else max(1, count)
        base = self.spec.array_path.rsplit("/", 1)[0] + "/block_crc32c/c/"
        size = chunk * BLOCK_CRCS_DTYPE.itemsize + 4
        return [(f"{base}{k}", 0, size) for k in range(-(-count // chunk))]

    def install_block_table(self, requests: Sequence[tuple[str, int, int]], blobs: Sequence[bytes]) -> None:
        """Check and keep the block checksums fetched for :meth:`block_table_requests`."""
        count = self._num_chunks * blocks_per_chunk(self.chunk_size, self.dtype.itemsize, self.block_bytes)
        parts = []
        for (key, _, end), blob in zip(requests, blobs):
            check_chunk_crc(blob, f"{self.spec.where}, block checksums {key}")
            parts.append(np.frombuffer(blob, dtype=BLOCK_CRCS_DTYPE, count=(end - 4) // BLOCK_CRCS_DTYPE.itemsize))
        self._blocks = np.concatenate(parts)[:count]

    def _block_table(self) -> np.ndarray:
        """Every block checksum of this shard (fetched once per process, each chunk of the
        ``block_crc32c`` array CRC-checked itself)."""
        if self._blocks is None:
            requests = self.block_table_requests()
            try:
                blobs = self._io.get_ranges(*zip(*requests))
            except FileNotFoundError:
                raise IncompleteStoreError(f"{self.spec.where}: its block checksums are missing") from None
            self.install_block_table(requests, blobs)
        return self._blocks

    def _pending(self, row: int, col: int, k: int, lo: int, hi: int) -> PendingRange:
        """The ranged GET for shard-local tokens ``[lo, hi)`` in chunk ``k``: exactly those bytes, or
        with block checksums the whole blocks around them."""
        itemsize, base = self.dtype.itemsize, k * self.chunk_size
        start, end = (lo - base) * itemsize, (hi - base) * itemsize
        if self.verified_ranges:
            b = self.block_bytes
            start, end = (start // b) * b, min(self._chunk_bytes, -(-end // b) * b)
        return PendingRange(self, row, col, k, lo, hi, self._key_of(k), start, end)

    def _check_blocks(self, p: PendingRange, blob: bytes) -> None:
        b = self.block_bytes
        first = p.chunk * blocks_per_chunk(self.chunk_size, self.dtype.itemsize, b) + p.start // b
        expected = self._block_table()[first : first + len(range(p.start, p.end, b))]
        if not np.array_equal(block_crcs(blob, b), expected):
            raise ChecksumError(f"checksum mismatch in {self.spec.where}, chunk {p.chunk} "
                                f"({self._io.url(p.key)}) bytes [{p.start}, {p.end}): a ranged read failed its "
                                "block checksum")

    # -- whole chunks --------------------------------------------------------------------------
    def _download(self, k: int) -> memoryview:
        """The used bytes of chunk ``k`` (all of it, except the padding of a shard's last chunk),
        checksum verified when the array has one. A mismatch is fetched once more from the source
        (corruption in transit), then raises :class:`~zarrtok.errors.ChecksumError`."""
        try:
            return self._download_once(k)
        except ChecksumError as exc:
            logger.warning("%s; fetching it again", exc)
            return self._download_once(k)

    def _download_once(self, k: int) -> memoryview:
        key = self._key_of(k)
        layout = self.spec.raw
        trailer = layout.trailer_bytes
        used = layout.used_items(k) * self.dtype.itemsize
        what = f"{self.spec.where}, chunk {k} ({self._io.url(key)})"
        try:
            if used == self._chunk_bytes or not trailer:
                raw = self._io.get(key, 0, used + trailer)  # one ranged GET (an unranged read is HEAD + GET)
                crc = None
            else:  # a padded last chunk: the used prefix and the checksum, never the padding
                raw, crc = self._io.get_ranges([key, key], [0, self._chunk_bytes],
                                               [used, self._chunk_bytes + trailer])
        except FileNotFoundError:
            raise IncompleteStoreError(f"{what}: the chunk object is missing{_REPLACED_HINT}") from None
        self.stats["chunk_fetches"] += 1
        self.stats["chunk_bytes"] += len(raw) + (len(crc) if crc is not None else 0)
        if trailer == 4 and self.verify:
            if crc is None:
                check_chunk_crc(raw, what)
            else:
                pad = np.full(layout.chunk_size - layout.used_items(k), layout.fill_value, dtype=self.dtype)
                check_padded_chunk_crc(raw, pad.tobytes(), crc, what)
        return memoryview(raw)[:used]  # a view: no copy of the chunk

    def _load(self, k: int) -> np.ndarray:
        count = self.spec.raw.used_items(k)
        if self._disk is not None:
            arr, _ = self._disk.get_or_fetch(self._disk_namespace, self.spec.raw.chunk_key(k),
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
                pool = pool or thread_pool("zarrtok-fetch")
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
        if not self.verified_ranges and self.spec.raw.trailer_bytes and self.verify:
            return False  # auto on a shard without block checksums: whole, verified chunks only
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
        if b <= a:
            return np.empty(0, dtype=self.dtype)
        c = self.chunk_size
        k = a // c
        out = np.empty((1, b - a), dtype=self.dtype)
        if a < b <= (k + 1) * c:  # inside one chunk: decide range-vs-chunk exactly once
            if not self._use_range(k):
                return self._chunk(k)[a - k * c : b - k * c]
            fetch_and_fill([self._pending(0, 0, k, a, b)], out)
            return out[0]
        self.read_batch_into([a], b - a, out)
        return out[0]

    def read_batch_into(self, starts: Iterable[int], n: int, out: np.ndarray) -> None:
        """Fill row ``i`` of ``out`` with tokens ``[starts[i], starts[i] + n)``; all ranged GETs of
        the batch are issued concurrently."""
        starts = list(starts)
        if n <= 0:
            return
        pending = self.gather([(row, 0, a, a + n) for row, a in enumerate(starts)], out)
        if pending:
            fetch_and_fill(pending, out)

    def gather(self, pieces: Sequence[tuple[int, int, int, int]], out: np.ndarray) -> list[PendingRange]:
        """Serve pieces ``(row, col, a, b)`` from cached chunks where possible (fetching whole chunks
        that ``auto`` decides to cache); return the ranged GETs still needed."""
        c = self.chunk_size
        cache = self._cache()  # also resets per-process state in a new process
        namespace = self._namespace
        use_cache = self.mode != "range"  # range mode: exactly one GET per window piece, always
        held: dict[int, np.ndarray] = {}  # chunks this batch already holds (one cache lookup per chunk)
        pending: list[PendingRange] = []
        for row, col, a, b in pieces:
            k = a // c
            pos = a
            while pos < b:
                hi = min(b, (k + 1) * c)
                chunk = held.get(k)
                if chunk is None and use_cache:
                    chunk = cache.get((namespace, k))
                    if chunk is None and not self._use_range(k):
                        chunk = self._chunk(k)
                    if chunk is not None:
                        held[k] = chunk
                dst = col + (pos - a)
                if chunk is None:
                    pending.append(self._pending(row, dst, k, pos, hi))
                else:
                    out[row, dst : dst + (hi - pos)] = chunk[pos - k * c : hi - k * c]
                pos = hi
                k += 1
        return pending

    def fill(self, pending: Sequence[PendingRange], blobs: Sequence[bytes], out: np.ndarray) -> None:
        """Write the fetched byte ranges into ``out``, each verified against its block checksums
        (a mismatch is fetched once more, then raises :class:`~zarrtok.errors.ChecksumError`)."""
        itemsize = self.dtype.itemsize
        for p, blob in zip(pending, blobs):
            self.stats["range_requests"] += 1
            self.stats["range_bytes"] += len(blob)
            if self.verified_ranges:
                try:
                    self._check_blocks(p, blob)
                except ChecksumError as exc:
                    logger.warning("%s; fetching it again", exc)
                    blob = self._io.get(p.key, p.start, p.end)
                    self.stats["range_requests"] += 1
                    self._check_blocks(p, blob)
            skip = (p.lo - p.chunk * self.chunk_size) * itemsize - p.start
            out[p.row, p.col : p.col + (p.hi - p.lo)] = np.frombuffer(blob, dtype=self.dtype, count=p.hi - p.lo,
                                                                       offset=skip)


def fetch_and_fill(pending: Sequence[PendingRange], out: np.ndarray) -> None:
    """Fetch every pending range of a batch — from any shards of one store — plus the block
    checksums of shards this process has not read yet, in **one** concurrent round of GETs, then
    verify and write them into ``out``."""
    readers: dict[int, Any] = {}
    for p in pending:
        readers.setdefault(id(p.reader), p.reader)
    tables = [(r, r.block_table_requests()) for r in readers.values()]
    tables = [(r, reqs) for r, reqs in tables if reqs]
    keys = [p.key for p in pending] + [k for _, reqs in tables for k, _, _ in reqs]
    starts = [p.start for p in pending] + [a for _, reqs in tables for _, a, _ in reqs]
    ends = [p.end for p in pending] + [b for _, reqs in tables for _, _, b in reqs]
    first = pending[0].reader
    try:
        blobs = first._io.get_ranges(keys, starts, ends)
    except FileNotFoundError as exc:
        raise IncompleteStoreError(f"{first.spec.location.url}: an object is missing: {exc}{_REPLACED_HINT}") from None
    pos = len(pending)
    for reader, reqs in tables:
        reader.install_block_table(reqs, blobs[pos : pos + len(reqs)])
        pos += len(reqs)
    by_reader: dict[int, tuple[Any, list, list]] = {}
    for p, blob in zip(pending, blobs):
        entry = by_reader.setdefault(id(p.reader), (p.reader, [], []))
        entry[1].append(p)
        entry[2].append(blob)
    for reader, ps, bs in by_reader.values():
        reader.fill(ps, bs, out)

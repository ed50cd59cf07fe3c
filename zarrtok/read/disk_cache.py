"""A directory of fetched chunks shared safely by processes (``reader_options["cache_dir"]``).

Entries are keyed by shard id (store content, never the URL) and chunk number, and every entry is
self-verifying: the chunk's used bytes followed by their CRC-32C, computed after the bytes were
verified against the store's own checksum. A hit is checked before use; a damaged entry is deleted
and fetched again, never served.

A chunk is written to a temporary file and renamed into place (readers never see a partial
file); an exclusive ``flock`` per chunk makes a second process wait for the first one's fetch
instead of fetching again. When ``max_bytes`` is set, the least recently used files are deleted
after each write (deleting a file another process has mapped is safe on POSIX).
"""

from __future__ import annotations

import fcntl
import logging
import os
import uuid
from typing import Any, Callable

import numpy as np

from ..errors import ChecksumError
from ..format import CRC32C_BYTES, check_chunk_crc, crc32c
from ..storage.mapping import map_file

logger = logging.getLogger(__name__)


class DiskChunkCache:
    """Verified whole chunks on local disk, shared by the processes of a node."""

    def __init__(self, directory: str, max_bytes: int | None = None):
        self.directory = os.path.abspath(os.path.expanduser(directory))
        self.max_bytes = max_bytes
        os.makedirs(self.directory, exist_ok=True)

    def path(self, namespace: str, key: str) -> str:
        return os.path.join(self.directory, namespace, key)

    def _map_verified(self, path: str, nbytes: int, dtype: np.dtype, count: int) -> np.ndarray | None:
        """The cached entry as an array, or ``None`` when absent, short or damaged (then removed)."""
        try:
            whole = map_file(path, nbytes + CRC32C_BYTES, np.dtype(np.uint8), nbytes + CRC32C_BYTES)
        except (FileNotFoundError, ValueError):
            return None
        try:
            check_chunk_crc(whole, f"cache entry {path}")
        except ChecksumError:
            logger.warning("damaged chunk cache entry %s: removed, fetching again", path)
            try:
                os.remove(path)
            except FileNotFoundError:
                pass
            return None
        return whole[:nbytes].view(dtype)[:count]

    def get_or_fetch(self, namespace: str, key: str, nbytes: int, dtype: np.dtype, count: int,
                     fetch: Callable[[], Any]) -> tuple[np.ndarray, bool]:
        """Map the cached chunk (verified), fetching it first if absent. Returns ``(array, fetched)``.
        ``fetch()`` returns the chunk's ``nbytes`` used bytes, already verified against the store."""
        path = self.path(namespace, key)
        arr = self._map_verified(path, nbytes, dtype, count)
        if arr is not None:
            try:
                os.utime(path)  # LRU order for eviction
            except FileNotFoundError:
                pass  # another process evicted it after we mapped it: the map stays valid
            return arr, False
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".lock", "a+b") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                arr = self._map_verified(path, nbytes, dtype, count)  # another process may have fetched it
                if arr is not None:
                    return arr, False
                data = fetch()
                tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
                try:
                    with open(tmp, "wb") as f:
                        f.write(data)
                        f.write(crc32c(data).to_bytes(CRC32C_BYTES, "little"))
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

"""In-memory chunk caches, per process, keyed by store content.

Keys are ``(shard key, chunk)`` where the shard key is the shard's id from the manifest (unique per
written shard; see :meth:`zarrtok.format.Manifest.shard_key`), never a URL: a store rebuilt,
appended or recovered at the same URL has new shard ids, so an old cache entry can never be served
for it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import numpy as np

from ..storage.process import process_object, process_objects


class ChunkCache:
    """An LRU of whole chunks (numpy arrays), bounded in bytes."""

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


def shared_chunk_cache(max_bytes: int) -> ChunkCache:
    """This process's chunk cache of a given size (one per size, shared by all readers that ask for it)."""
    return process_object(("chunk-cache", int(max_bytes)), lambda: ChunkCache(max_bytes))


def clear_memory_caches() -> None:
    """Drop every chunk this process holds in memory (e.g. to measure a cold epoch; ``cache_dir``
    contents are not touched)."""
    for cache in process_objects("chunk-cache"):
        cache.clear()

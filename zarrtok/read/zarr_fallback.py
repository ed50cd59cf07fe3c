"""Reading a shard through Zarr itself, for token arrays whose chunks are not raw bytes (e.g. a
store someone rewrote compressed). Whole chunks go into a bounded per-process LRU cache.

Zarr returns the fill value for a chunk object that does not exist; a token store has no missing
chunks, so this reader checks that every chunk it reads exists and raises
:class:`~zarrtok.errors.IncompleteStoreError` naming it otherwise.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..errors import IncompleteStoreError
from ..storage.location import Location
from .cache import ChunkCache
from .source import ChunkedShardReader, ShardSpec

#: Bytes of whole chunks cached per reader by the Zarr fallback (decoded chunks are not shared).
DEFAULT_CACHE_BYTES = 256 << 20


class ZarrShardReader(ChunkedShardReader):
    """Reads a shard through Zarr, fetching whole chunks into a bounded per-reader LRU cache."""

    def __init__(self, spec: ShardSpec, *, cache_bytes: int = DEFAULT_CACHE_BYTES):
        self.spec = spec
        self.length = spec.length
        self.chunk_size = spec.chunk_size
        self.dtype = np.dtype(spec.dtype)
        self.cache_bytes = int(cache_bytes)
        self.is_local = spec.location.is_local
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
        if not 0 <= k < -(-self.length // self.chunk_size):
            raise IndexError(f"chunk {k} out of range")
        key = f"{self.spec.array_path}/{arr.metadata.encode_chunk_key((k,))}"
        if not self.spec.location.objects().exists(key):
            raise IncompleteStoreError(f"{self.spec.where}: chunk object {key} is missing")
        start = k * self.chunk_size
        data = np.asarray(arr[start : min(start + self.chunk_size, self.length)])
        data.flags.writeable = False
        self._cache.put(k, data)
        return data

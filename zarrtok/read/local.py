"""Reading a local shard by memory-mapping its raw chunk files (a slice costs a few µs).

Each chunk's CRC-32C is checked the first time this process maps it (once per chunk: ~1 ms for an
8 MiB chunk with the hardware CRC instruction), so no corrupted local byte reaches a caller; a
mismatch raises :class:`~zarrtok.errors.ChecksumError` naming the store, shard and chunk file, every
time that chunk is asked for. Maps hold no file descriptor (:mod:`zarrtok.storage.mapping`); how
many stay mapped is bounded by a :class:`~zarrtok.storage.mapping.MapBudget`.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import numpy as np

from ..errors import ChecksumError, IncompleteStoreError, StoreChangedError, ZarrtokError
from ..format import CRC32C_BYTES, check_chunk_crc
from ..storage.mapping import MapBudget, map_file, process_budget
from .source import ChunkedShardReader, ShardSpec


class LocalShardReader(ChunkedShardReader):
    """Memory-mapped chunk files of one local shard, CRC-checked on first map (``verify=True``)."""

    is_local = True

    def __init__(self, spec: ShardSpec, *, budget: MapBudget | None = None, verify: bool = True):
        assert spec.raw is not None and spec.location.is_local
        self.spec = spec
        self.length = spec.length
        self.chunk_size = spec.chunk_size
        self.dtype = np.dtype(spec.dtype)
        self.budget = budget
        self.verify = bool(verify) and spec.raw.trailer_bytes == CRC32C_BYTES
        self._dir = os.path.join(spec.location.local_path, spec.array_path)
        # a store is data: never follow a symlink out of its root (directories checked here, chunk
        # files opened with O_NOFOLLOW)
        root = os.path.realpath(spec.location.local_path)
        if os.path.exists(self._dir) and not os.path.realpath(self._dir).startswith(root + os.sep):
            raise IncompleteStoreError(f"{spec.where}: {spec.array_path} leads outside the store (a symlink); refused")
        self._maps: dict[int, np.ndarray] = {}
        self._verified: set[int] = set()
        self._num_chunks = spec.raw.num_chunks
        self._root_json = os.path.join(spec.location.local_path, "zarr.json")
        self._root_sig: tuple | None = None  # the root zarr.json last seen to still list this shard

    def __getstate__(self) -> dict[str, Any]:
        return {"spec": self.spec, "limit": self.budget.limit if self.budget is not None else None,
                "verify": self.verify}

    def __setstate__(self, state: dict[str, Any]) -> None:
        limit = state.get("limit")
        self.__init__(state["spec"], budget=MapBudget(limit) if limit else None, verify=state.get("verify", True))

    def _forget(self, k: int) -> None:
        self._maps.pop(k, None)

    def _check_generation(self) -> None:
        """Before mapping a chunk: the store at this path must still hold this very shard (same id).
        A local overwrite swaps whole directories, so a chunk mapped after it would come from the new
        generation: refuse (:class:`~zarrtok.errors.StoreChangedError`) instead of mixing tokens. One
        ``stat`` per map; the manifest is re-read only when the root ``zarr.json`` changed."""
        try:
            st = os.stat(self._root_json)
        except FileNotFoundError:
            raise StoreChangedError(f"{self.spec.where}: the store is gone since it was opened") from None
        sig = (st.st_ino, st.st_mtime_ns, st.st_size)
        if sig == self._root_sig:
            return
        keys = _manifest_shard_keys(self.spec.location, sig)
        if keys.get(self.spec.name) != self.spec.key:
            raise StoreChangedError(
                f"{self.spec.where}: the store was replaced since it was opened (this shard is no longer in "
                "it); reopen the store — its tokens would otherwise mix two builds")
        self._root_sig = sig

    def _open(self, k: int) -> np.ndarray:
        if not 0 <= k < self._num_chunks:
            raise IndexError(f"chunk {k} out of range")
        self._check_generation()
        path = os.path.join(self._dir, self.spec.raw.chunk_key(k))
        need = self.chunk_size * self.dtype.itemsize
        check = self.verify and k not in self._verified
        try:
            if check:  # map the trailer too, check data + CRC together, keep the data view
                whole = map_file(path, need + CRC32C_BYTES, np.dtype(np.uint8), need + CRC32C_BYTES,
                                 follow_symlinks=False)
                check_chunk_crc(whole, f"{self.spec.where}, chunk file {path}")
                arr = whole[:need].view(self.dtype)
                self._verified.add(k)
            else:
                arr = map_file(path, need, self.dtype, self.chunk_size, follow_symlinks=False)
        except FileNotFoundError as exc:
            raise IncompleteStoreError(f"{self.spec.where}: chunk file {path} is missing") from exc
        except ChecksumError:
            raise
        except ValueError as exc:
            raise IncompleteStoreError(f"{self.spec.where}: chunk file {exc}") from exc
        except OSError:
            if os.path.islink(path):
                raise IncompleteStoreError(f"{self.spec.where}: chunk file {path} is a symlink; refused (a store "
                                           "never reads outside itself)") from None
            raise
        self._maps[k] = arr
        (self.budget if self.budget is not None else process_budget()).add(self, k, self._forget)
        return arr

    def _chunk(self, k: int) -> np.ndarray:
        m = self._maps.get(k)
        return m if m is not None else self._open(k)

    def read(self, a: int, b: int) -> np.ndarray:
        """Tokens ``[a, b)`` of this shard (a read-only view when inside one chunk). Inlined hot path."""
        if b <= a:
            return np.empty(0, dtype=self.dtype)
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

    def read_batch_into(self, starts: Any, n: int, out: np.ndarray) -> None:
        """Fill row ``i`` of ``out`` with tokens ``[starts[i], starts[i] + n)`` (memory copies)."""
        read = self.read
        for row, a in enumerate(starts):
            out[row] = read(a, a + n)


_KEYS_LOCK = threading.Lock()
_KEYS: dict[str, tuple[tuple, dict[str, str]]] = {}  # store root -> (root zarr.json signature, shard keys)


def _manifest_shard_keys(location, sig: tuple) -> dict[str, str]:
    """``{"<split>/<shard>": shard key}`` of the manifest now at ``location`` (parsed once per change)."""
    from ..storage.manifest_io import read_manifest

    root = location.local_path
    with _KEYS_LOCK:
        hit = _KEYS.get(root)
        if hit is not None and hit[0] == sig:
            return hit[1]
    try:
        manifest = read_manifest(location)
    except ZarrtokError as exc:
        raise StoreChangedError(f"store {location.url}: changed since it was opened and is not readable now ({exc})") from None
    keys = {f"{split}/{shard.name}": manifest.shard_key(split, shard)
            for split, info in manifest.splits.items() for shard in info.shards}
    with _KEYS_LOCK:
        _KEYS[root] = (sig, keys)
    return keys

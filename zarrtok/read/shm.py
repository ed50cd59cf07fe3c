"""Shared-memory copies of a split's tokens (``use_shared_memory=True``).

The owning process copies the tokens into one POSIX shared-memory segment; DataLoader workers
(fork, spawn or forkserver) attach to it by name when the dataset is unpickled. The segment is
unlinked when the owner calls :meth:`SharedTokens.close`, when the owner object is garbage
collected, or at interpreter exit; if the owner is killed, Python's resource tracker unlinks it.
"""

from __future__ import annotations

import logging
import os
import secrets
import weakref
from multiprocessing import shared_memory
from typing import Any

import numpy as np

from .source import index_tokens

logger = logging.getLogger(__name__)

SEGMENT_PREFIX = "zarrtok"


def _release(shm: shared_memory.SharedMemory, unlink: bool) -> None:
    try:
        shm.close()
    except BufferError:
        pass  # a view of the buffer is still alive somewhere; unlinking below still frees the name
    except Exception:  # pragma: no cover
        logger.debug("closing shared memory %s failed", shm.name, exc_info=True)
    if unlink:
        try:
            shm.unlink()
        except FileNotFoundError:
            pass


class SharedTokens:
    """A split's tokens in shared memory: a :class:`~zarrtok.read.source.TokenSource` like
    :class:`~zarrtok.read.token_array.TokenArray`."""

    is_local = True  # memory: any access order is cheap
    readahead = 0
    shared_cache = False

    def __init__(self, shm: shared_memory.SharedMemory, length: int, dtype: Any, *, owner: bool, name: str = ""):
        self._shm = shm
        self.segment = shm.name
        self.length = int(length)
        self.dtype = np.dtype(dtype)
        self.owner = owner
        self.name = name
        self._array = np.ndarray((self.length,), dtype=self.dtype, buffer=shm.buf)
        self._finalizer = weakref.finalize(self, _release, shm, owner)

    @classmethod
    def create(cls, tokens: Any, *, name: str = "") -> "SharedTokens":
        """Copy ``tokens`` (a TokenArray) into a new shared-memory segment owned by this process."""
        nbytes = max(1, len(tokens) * np.dtype(tokens.dtype).itemsize)
        segment = f"{SEGMENT_PREFIX}_{os.getpid()}_{secrets.token_hex(6)}"
        shm = shared_memory.SharedMemory(name=segment, create=True, size=nbytes)
        try:
            out = np.ndarray((len(tokens),), dtype=tokens.dtype, buffer=shm.buf)
            step = 1 << 24
            for a in range(0, len(tokens), step):
                b = min(len(tokens), a + step)
                tokens.read_into(a, b, out[a:b])
            del out
        except BaseException:
            _release(shm, True)
            raise
        logger.info("copied %d tokens of %s into shared memory %s", len(tokens), name or "split", segment)
        return cls(shm, len(tokens), tokens.dtype, owner=True, name=name)

    @classmethod
    def attach(cls, segment: str, length: int, dtype: str, name: str = "") -> "SharedTokens":
        """Attach to an existing segment (used when a worker unpickles the dataset)."""
        return cls(shared_memory.SharedMemory(name=segment, create=False), length, dtype, owner=False, name=name)

    def __reduce__(self):
        return (SharedTokens.attach, (self.segment, self.length, self.dtype.name, self.name))

    def __len__(self) -> int:
        return self.length

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def close(self) -> None:
        """Detach; the owner also unlinks the segment (idempotent)."""
        self._array = None
        self._finalizer()

    def _live(self) -> np.ndarray:
        if self._array is None:
            raise ValueError(f"shared-memory tokens {self.name or self.segment!r} are closed "
                             "(the provider or dataset was closed); reopen the store")
        return self._array

    def read(self, a: int, b: int) -> np.ndarray:
        return self._live()[a:b]

    def read_into(self, a: int, b: int, out: np.ndarray) -> None:
        out[...] = self._live()[a:b]

    def read_batch_into(self, starts: Any, n: int, out: np.ndarray) -> None:
        arr = self._live()
        for row, a in enumerate(starts):
            out[row] = arr[a : a + n]

    @property
    def chunk_size(self) -> int:
        return max(1, self.length)

    @property
    def num_chunks(self) -> int:
        return 1 if self.length else 0

    def chunk_of(self, positions: Any) -> np.ndarray:
        return np.zeros(np.shape(positions), dtype=np.int64)

    def prefetch_chunks(self, chunks: Any) -> None:
        """Nothing to fetch: the tokens are in memory."""

    def __getitem__(self, key: Any) -> Any:
        return index_tokens(self, key)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return np.array(self._live(), dtype=dtype or self.dtype)

    def __repr__(self) -> str:
        return f"SharedTokens(segment={self.segment!r}, length={self.length}, dtype={self.dtype}, owner={self.owner})"

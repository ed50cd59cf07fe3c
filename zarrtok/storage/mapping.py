"""Read-only memory maps of chunk files that hold no file descriptor, and a per-process budget.

Python's ``mmap.mmap`` (before 3.13's ``trackfd=False``) keeps a duplicate file descriptor for
every map, so a reader that keeps thousands of chunk files mapped runs into "too many open
files", and one that keeps few re-maps constantly. Here the file is mapped with ``mmap(2)``
through ctypes and its descriptor closed at once; the mapping lives as long as any numpy view of
it and is unmapped by a finalizer. What remains limited is the number of mappings per process
(Linux ``vm.max_map_count``, 65530 by default), which :class:`MapBudget` bounds.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import sys
import threading
import weakref
from collections import OrderedDict
from typing import Callable, Hashable

import numpy as np

from .process import process_object

#: Default number of chunk maps one process keeps (``ZARRTOK_MAX_MAPPED_CHUNKS`` overrides).
DEFAULT_MAX_MAPPED_CHUNKS = int(os.environ.get("ZARRTOK_MAX_MAPPED_CHUNKS", "16384"))

_PROT_READ = 0x1
_MAP_SHARED = 0x1


def _load_libc():
    if sys.platform not in ("linux", "darwin") and not sys.platform.startswith("freebsd"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                              ctypes.c_int64]
        libc.munmap.restype = ctypes.c_int
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        return libc
    except (OSError, AttributeError):  # pragma: no cover - exotic platforms
        return None


_LIBC = _load_libc()
_MAP_FAILED = ctypes.c_void_p(-1).value


def map_file(path: str, nbytes: int, dtype: np.dtype, count: int, *, follow_symlinks: bool = True) -> np.ndarray:
    """Map the first ``nbytes`` of ``path`` read-only and return it as a 1-D array of ``count`` items.

    Raises ``FileNotFoundError`` if the file is missing, ``ValueError`` if it is shorter than
    ``nbytes``, and ``OSError`` (ELOOP) for a symlink when ``follow_symlinks=False``.
    """
    flags = os.O_RDONLY | (0 if follow_symlinks else getattr(os, "O_NOFOLLOW", 0))
    fd = os.open(path, flags)
    try:
        size = os.fstat(fd).st_size
        if size < nbytes:
            raise ValueError(f"{path} has {size} bytes, expected at least {nbytes}")
        if nbytes == 0:
            return np.empty(0, dtype=dtype)
        if _LIBC is None:  # portable fallback: keeps a descriptor per map
            return np.frombuffer(mmap.mmap(fd, nbytes, access=mmap.ACCESS_READ), dtype=dtype, count=count)
        addr = _LIBC.mmap(None, nbytes, _PROT_READ, _MAP_SHARED, fd, 0)
        if addr is None or addr == _MAP_FAILED:
            err = ctypes.get_errno()
            raise OSError(err, f"mmap of {path} failed: {os.strerror(err)}")
    finally:
        os.close(fd)  # the mapping does not need the descriptor
    buf = (ctypes.c_char * nbytes).from_address(addr)
    weakref.finalize(buf, _LIBC.munmap, addr, nbytes)  # unmapped when the last view is gone
    arr = np.frombuffer(buf, dtype=dtype, count=count)
    arr.flags.writeable = False
    return arr


class MapBudget:
    """Bounds the number of chunk maps a process keeps across all its readers (oldest dropped first).

    Readers keep their maps in their own dict (a lookup is one ``dict.get``) and register each new
    map here; when the budget is full, the oldest map's owner is told to forget it.
    """

    def __init__(self, limit: int = DEFAULT_MAX_MAPPED_CHUNKS):
        self.limit = max(1, int(limit))
        self._order: OrderedDict[tuple[int, Hashable], tuple] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._order)

    def add(self, owner: object, key: Hashable, forget: Callable[[Hashable], None]) -> None:
        """Record that ``owner`` mapped ``key``; evict the oldest maps beyond the limit.

        Only weak references are kept (``forget`` is normally a bound method of ``owner``): a reader
        that is dropped releases its maps at once, even while the budget still lists them.
        """
        ref = weakref.ref(owner)
        forget_ref = weakref.WeakMethod(forget) if hasattr(forget, "__self__") else (lambda: forget)
        evicted = []
        with self._lock:
            self._order[(id(owner), key)] = (ref, key, forget_ref)
            while len(self._order) > self.limit:
                _, entry = self._order.popitem(last=False)
                evicted.append(entry)
        for old_ref, old_key, old_forget in evicted:
            fn = old_forget()
            if old_ref() is not None and fn is not None:
                fn(old_key)


def process_budget() -> MapBudget:
    """The process-wide budget shared by every local reader that is not given its own (a forked
    child starts with its parent's maps but a budget of its own)."""
    return process_object(("map-budget",), MapBudget)

"""One fork-safe registry of per-process state: filesystems, thread pools, chunk caches, map budgets.

Objects that hold threads, event loops, locks or sockets must never cross a fork: an s3fs instance
used in a parent is bound to the parent's event-loop thread, a thread pool's workers do not exist in
a forked child, a lock may have been held at fork time. Everything of that kind is created through
:func:`process_object` and is forgotten in a child (``os.register_at_fork`` plus a pid check, so
``spawn``/``forkserver`` children simply start empty). Pickled readers carry descriptors only and
look their per-process state up here.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Callable, Hashable, TypeVar

T = TypeVar("T")

_STATE: dict[str, Any] = {"pid": os.getpid(), "objects": {}}
_LOCK = threading.RLock()
_RESET_HOOKS: list[Callable[[], None]] = []


def _reset_in_child() -> None:
    global _LOCK
    _LOCK = threading.RLock()  # a parent thread may have held it at fork time
    _STATE["pid"] = os.getpid()
    _STATE["objects"] = {}
    for hook in _RESET_HOOKS:
        hook()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_in_child)


def on_fork(hook: Callable[[], None]) -> None:
    """Run ``hook`` in every forked child after the registry has been cleared."""
    _RESET_HOOKS.append(hook)


def process_object(key: Hashable, factory: Callable[[], T]) -> T:
    """This process's object for ``key``, created by ``factory`` on first use (and again after fork)."""
    if _STATE["pid"] != os.getpid():  # e.g. a platform without register_at_fork
        _reset_in_child()
    objects = _STATE["objects"]
    hit = objects.get(key)
    if hit is not None:
        return hit
    with _LOCK:
        hit = objects.get(key)
        if hit is None:
            hit = objects[key] = factory()
        return hit


def process_objects(kind: str) -> list[Any]:
    """Every object of this process registered under a key ``(kind, ...)``."""
    return [v for k, v in list(_STATE["objects"].items()) if isinstance(k, tuple) and k and k[0] == kind]


def thread_pool(name: str = "zarrtok-io", max_workers: int = 4):
    """This process's thread pool ``name`` (4 threads: enough to keep a few whole-chunk fetches
    in flight per process without competing with the DataLoader workers for the 2-8 cores of a node)."""
    import concurrent.futures

    return process_object(("pool", name), lambda: concurrent.futures.ThreadPoolExecutor(
        max_workers=max_workers, thread_name_prefix=name))

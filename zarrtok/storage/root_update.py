"""Changing a complete store in place: a lock around read-modify-write of its root ``zarr.json``,
and the root write itself (atomic locally, one PUT on object stores).

An append (:mod:`zarrtok.ingest.appending`) writes its new shards beside the store's old ones, then
**commits by rewriting only the root** ``zarr.json`` (the manifest): readers that opened the store
before keep their manifest, and every shard it names is untouched, so they keep a consistent view;
readers that open after see the new shards. Two appenders serialise on :class:`StoreLock` only for
that short read-modify-write, so both land:

* local paths: ``fcntl.flock`` on ``<parent>/.<name>.zarrtok-lock`` (exclusive, process-safe on one
  host; on NFS, flock is only as good as the server's lock support — documented in
  docs/reliability.md). The root is written as a temporary file in the store directory, fsynced and
  ``rename``d over ``zarr.json`` through a directory file descriptor, so a reader never sees half a
  manifest, and a directory swapped away by a concurrent overwrite is detected afterwards
  (:class:`~zarrtok.storage.commit.CommitConflictError`), never written into the new store.
* object stores: :class:`~zarrtok.storage.commit.RemoteLock` (``If-None-Match: *``), waited for with
  backoff up to ``timeout``; a single PUT replaces the root (S3 PUTs are atomic per object).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..errors import StoreExistsError
from .location import Location

logger = logging.getLogger(__name__)

#: how long an appender waits for another writer's lock before giving up (seconds); a commit holds
#: it for one manifest read + one write, so a wait this long means a build (which holds the remote
#: lock for its whole run) or a dead writer.
LOCK_TIMEOUT_S = 300.0


def _lock_path(location: Location) -> str:
    path = location.local_path.rstrip(os.sep)
    return os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.zarrtok-lock")


@contextmanager
def store_lock(location: Location, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold the store's exclusive writer lock (see the module docstring) for the ``with`` block."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    if location.is_local:
        import fcntl

        fd = os.open(_lock_path(location), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                    if time.monotonic() > deadline:
                        raise StoreExistsError(f"{location.url}: could not take the writer lock "
                                               f"{_lock_path(location)} within {timeout:.0f} s") from None
                    time.sleep(delay)
                    delay = min(0.5, delay * 2)
            yield
        finally:
            os.close(fd)  # releases the flock
        return
    from .commit import RemoteLock

    while True:
        lock = RemoteLock(location)
        try:
            lock.acquire()
            break
        except StoreExistsError:
            if time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(1.0, delay * 2)
    try:
        yield
    finally:
        lock.release()


def read_root(location: Location) -> dict[str, Any]:
    """The store's root ``zarr.json`` as JSON."""
    if location.is_local:
        with open(os.path.join(location.local_path, "zarr.json"), "rb") as f:
            return json.loads(f.read())
    return json.loads(location.objects().get("zarr.json"))


def write_root(location: Location, root: dict[str, Any]) -> None:
    """Replace the store's root ``zarr.json`` with ``root`` in one step (see the module docstring)."""
    data = json.dumps(root, indent=2).encode()
    if not location.is_local:
        location.objects().put("zarr.json", data)
        return
    path = location.local_path
    dir_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        from .commit import ROOT_TMP_PREFIX

        tmp = f"{ROOT_TMP_PREFIX}{uuid.uuid4().hex[:12]}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=dir_fd)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, "zarr.json", src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=dir_fd)
            except FileNotFoundError:
                pass
            raise
        os.fsync(dir_fd)
        still = os.stat(path)
        mine = os.fstat(dir_fd)
        if (still.st_ino, still.st_dev) != (mine.st_ino, mine.st_dev):
            from .commit import CommitConflictError

            raise CommitConflictError(f"{location.url} was replaced by another writer during this commit; "
                                      "the change went to the replaced store, not the new one")
    finally:
        os.close(dir_fd)

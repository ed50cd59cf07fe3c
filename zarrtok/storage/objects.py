"""The object I/O layer: the one place zarrtok reads and writes store objects through fsspec.

Every ``cat_file`` / ``cat_ranges`` / ``pipe_file`` / listing of a store object goes through
:class:`ObjectIO` (memory-mapped local chunk files are the one exception: they are not "requests").
It adds, for every backend at once:

* **retries with backoff** for transient failures (timeouts, connection resets, 5xx / throttling,
  truncated bodies), bounded by an attempt count *and* a total deadline, then an
  :class:`~zarrtok.errors.ObjectIOError` naming the URL, the object and what was tried;
* **counters** of requests and bytes per process (``io_stats()``), which tests and benchmarks read;
* exact-length checks: a ranged read that returns fewer bytes than asked is a transient failure
  (retried), never data.

Missing objects (``FileNotFoundError``) and permission errors are not retried: they are answers.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Sequence

from ..errors import ObjectIOError

logger = logging.getLogger(__name__)

#: Defaults for remote reads; ``reader_options`` override them per store (see README "Deadlines").
DEFAULT_RETRIES = 5  # attempts after the first, like s3fs's own retry count
DEFAULT_DEADLINE_S = 60.0  # total time one read may take including retries
DEFAULT_BACKOFF_S = 0.05  # first retry delay; doubles per attempt (with jitter), capped at 2 s


@dataclass(frozen=True)
class RetryPolicy:
    """How hard an object read tries: ``retries`` extra attempts within ``deadline`` seconds."""

    retries: int = DEFAULT_RETRIES
    deadline: float = DEFAULT_DEADLINE_S
    backoff: float = DEFAULT_BACKOFF_S

    def delay(self, attempt: int) -> float:
        return min(2.0, self.backoff * (2 ** attempt)) * (0.5 + random.random() / 2)


class ShortReadError(OSError):
    """A ranged read returned fewer bytes than requested (a truncated response)."""


def is_transient(exc: BaseException) -> bool:
    """Whether an I/O error is worth retrying (timeouts, resets, 5xx, throttling, short reads)."""
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, ValueError,
                        TypeError, KeyError)):
        return False
    if isinstance(exc, (TimeoutError, ConnectionError, ShortReadError)):
        return True
    name = type(exc).__name__
    if any(word in name for word in ("Timeout", "Connection", "Disconnected", "Payload", "Throttl", "SlowDown",
                                     "ServerError", "IncompleteRead", "EndpointConnection", "ClientOSError",
                                     "FlexibleChecksum", "ResponseStreamingError", "ReadTimeout")):
        return True
    return isinstance(exc, OSError)  # s3fs maps 5xx/unknown service errors to OSError (e.g. errno 121 EREMOTEIO)


_STATS_LOCK = threading.Lock()
_STATS = {"requests": 0, "bytes": 0, "retries": 0, "failures": 0}


def io_stats() -> dict[str, int]:
    """Requests, bytes read, retries and final failures of this process's object I/O so far."""
    with _STATS_LOCK:
        return dict(_STATS)


def reset_io_stats() -> None:
    """Zero the counters of :func:`io_stats`."""
    with _STATS_LOCK:
        for k in _STATS:
            _STATS[k] = 0


def _count(requests: int, nbytes: int) -> None:
    with _STATS_LOCK:
        _STATS["requests"] += requests
        _STATS["bytes"] += nbytes


def _takes_timeout(fn: Any) -> bool:
    """Whether a retried call accepts the ``timeout=`` of :meth:`ObjectIO._timeout` (``**kwargs``)."""
    import inspect

    try:
        return any(p.kind is p.VAR_KEYWORD or p.name == "timeout" for p in inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False


class ObjectIO:
    """Reads and writes the objects of one store location (any fsspec filesystem) with retries."""

    def __init__(self, location: Any, policy: RetryPolicy | None = None):
        self.location = location
        self.policy = policy or RetryPolicy()

    # -- helpers -------------------------------------------------------------------------------
    def path(self, key: str) -> str:
        """The filesystem path of object ``key`` (relative to the store root)."""
        return f"{self.location.path}/{key}" if key else self.location.path

    def url(self, key: str) -> str:
        return f"{self.location.url.rstrip('/')}/{key}"

    def _timeout(self, start: float) -> dict[str, Any]:
        """``timeout=`` for one call of an async filesystem (s3fs, gcsfs, http): the time left of the
        deadline, so a blackholed endpoint cannot hold a read past it. Sync filesystems take none."""
        from fsspec.asyn import AsyncFileSystem

        if not isinstance(self.location.fs, AsyncFileSystem):
            return {}
        return {"timeout": max(0.5, self.policy.deadline - (time.monotonic() - start))}

    def _retry(self, what: str, fn, *args: Any) -> Any:
        policy = self.policy
        start = time.monotonic()
        attempt = 0
        while True:
            try:
                return fn(*args, **(self._timeout(start) if _takes_timeout(fn) else {}))
            except BaseException as exc:  # noqa: BLE001 - classified below
                if not isinstance(exc, Exception) or not is_transient(exc):
                    raise
                elapsed = time.monotonic() - start
                pause = policy.delay(attempt)
                if attempt >= policy.retries or elapsed + pause > policy.deadline:
                    with _STATS_LOCK:
                        _STATS["failures"] += 1
                    raise ObjectIOError(
                        f"{what}: failed after {attempt + 1} attempt(s) in {elapsed:.1f}s "
                        f"(retries={policy.retries}, deadline={policy.deadline:g}s): {type(exc).__name__}: {exc}"
                    ) from exc
                with _STATS_LOCK:
                    _STATS["retries"] += 1
                logger.debug("%s: retrying after %s: %s", what, type(exc).__name__, exc)
                time.sleep(pause)
                attempt += 1

    # -- reads ---------------------------------------------------------------------------------
    def get(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        """Bytes ``[start, end)`` of object ``key`` (the whole object without a range). A ranged read
        must return exactly ``end - start`` bytes (else it is retried)."""

        def once(**timeout: Any) -> bytes:
            fs = self.location.fs
            data = fs.cat_file(self.path(key), start=0 if start is None else start, end=end, **timeout)
            _count(1, len(data))
            if start is not None and end is not None and len(data) != end - start:
                raise ShortReadError(f"read {len(data)} of {end - start} bytes")
            return data

        return self._retry(f"reading {self.url(key)}" + (f" bytes [{start}, {end})" if end is not None else ""), once)

    def get_ranges(self, keys: Sequence[str], starts: Sequence[int], ends: Sequence[int]) -> list[bytes]:
        """Byte ranges of several objects, fetched concurrently in one round; each exact."""
        if len(keys) == 1:
            return [self.get(keys[0], starts[0], ends[0])]
        results: list[Any] = [None] * len(keys)
        todo = list(range(len(keys)))

        def once(**timeout: Any) -> list[bytes]:
            fs = self.location.fs
            blobs = fs.cat_ranges([self.path(keys[i]) for i in todo], [starts[i] for i in todo],
                                  [ends[i] for i in todo], on_error="return", **timeout)
            _count(len(todo), sum(len(b) for b in blobs if isinstance(b, (bytes, bytearray))))
            failed = []
            error: BaseException | None = None
            for i, blob in zip(todo, blobs):
                if isinstance(blob, BaseException):
                    if not is_transient(blob):
                        raise blob
                    failed.append(i)
                    error = blob
                elif len(blob) != ends[i] - starts[i]:
                    failed.append(i)
                    error = ShortReadError(f"{keys[i]}: read {len(blob)} of {ends[i] - starts[i]} bytes")
                else:
                    results[i] = blob
            todo[:] = failed
            if error is not None:
                raise error
            return results

        return self._retry(f"reading {len(keys)} byte range(s) of {self.location.url} (first: {keys[0]})", once)

    def exists(self, key: str) -> bool:
        return self._retry(f"checking {self.url(key)}", lambda **t: self.location.fs.exists(self.path(key), **t))

    def find(self, key: str = "") -> dict[str, int]:
        """Every object under ``key`` (relative keys) with its size."""

        def once(**timeout: Any) -> dict[str, int]:
            root = self.path(key)
            listing = self.location.fs.find(root, detail=True, **timeout)
            base = self.location.path.rstrip("/")
            return {p[len(base):].lstrip("/"): int(info["size"]) for p, info in listing.items()
                    if info.get("type") != "directory"}

        return self._retry(f"listing {self.url(key)}", once)

    # -- writes --------------------------------------------------------------------------------
    def put(self, key: str, data: bytes) -> None:
        """Write object ``key`` (whole) and check its size."""

        def once(**timeout: Any) -> None:
            fs = self.location.fs
            path = self.path(key)
            if self.location.is_local:
                import os

                os.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
            fs.pipe_file(path, data, **timeout)
            _count(1, 0)
            size = fs.size(path, **timeout)
            if size != len(data):
                raise ShortReadError(f"wrote {len(data)} bytes, the object has {size}")

        self._retry(f"writing {self.url(key)}", once)

    def remove(self, key: str = "", *, recursive: bool = True) -> None:
        """Delete object ``key`` (or everything under it); nothing there is not an error."""

        def once(**timeout: Any) -> None:
            fs = self.location.fs
            path = self.path(key)
            if fs.exists(path, **timeout):
                fs.rm(path, recursive=recursive, **timeout)

        self._retry(f"removing {self.url(key)}", once)

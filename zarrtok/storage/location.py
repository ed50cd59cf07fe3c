"""Where a store lives: a local path or any fsspec URL, turned into a filesystem and a Zarr store.

A :class:`Location` resolves its filesystem lazily, once per process (the registry in
:mod:`zarrtok.storage.process`); object reads and writes go through :mod:`zarrtok.storage.objects`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import fsspec
import fsspec.asyn
import zarr
from fsspec.implementations.local import LocalFileSystem

from .process import on_fork, process_object

def process_filesystem(url: str, storage_options: dict[str, Any]) -> tuple[fsspec.AbstractFileSystem, str]:
    """This process's filesystem for ``url`` and the path inside it.

    Filesystems are created once per process and never shared across a fork: an s3fs instance
    used in a parent is bound to the parent's event loop thread, which a forked child does not have,
    so the child resets fsspec's loop (:func:`_reset_fsspec_in_child`) and builds its own.
    """

    def create() -> tuple[fsspec.AbstractFileSystem, str]:
        fs, path = fsspec.core.url_to_fs(url, skip_instance_cache=True, **storage_options)
        _share_botocore_loader(fs)
        return fs, path.rstrip("/") or path

    return process_object(("filesystem", url, repr(sorted(storage_options.items()))), create)


def _reset_fsspec_in_child() -> None:
    fsspec.asyn.reset_lock()


on_fork(_reset_fsspec_in_child)


#: The botocore data loader (parsed endpoint and service-model JSON) of the first s3fs session this
#: program created. Module state survives fork, so forked DataLoader workers reuse the parsed JSON.
_BOTOCORE_LOADER: list[Any] = []


def _share_botocore_loader(fs: fsspec.AbstractFileSystem) -> None:
    """Give a new s3fs filesystem an aiobotocore session whose data loader is shared process-wide.

    Creating an S3 client parses botocore's endpoint and service models (~0.1-0.2 s of JSON per
    new process); a forked worker that inherits the parent's already-parsed loader skips that. Only
    the loader is shared: the session itself (credentials, HTTP connections, event loop) stays per
    process. Left alone when s3fs is not in use or the user passed their own ``session`` or
    session arguments.
    """
    if getattr(fs, "session", "absent") is not None or getattr(fs, "kwargs", None):
        return
    try:
        import aiobotocore.session
        from s3fs import S3FileSystem
    except ImportError:  # pragma: no cover - only reachable without the [s3] extra
        return
    if not isinstance(fs, S3FileSystem):
        return
    session = aiobotocore.session.AioSession()
    if _BOTOCORE_LOADER:
        session.register_component("data_loader", _BOTOCORE_LOADER[0])
    else:
        _BOTOCORE_LOADER.append(session.get_component("data_loader"))
    fs.session = session
    fs._session_is_owned = True  # s3fs may still replace it on refresh, as with its own session


@dataclass
class Location:
    """A store location: the URL the user gave, its storage options and the resolved filesystem."""

    url: str
    storage_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.url = os.fspath(self.url)
        if "://" not in self.url and "::" not in self.url:
            # A plain local path: fix it now, so a pickled reader finds it from any working directory.
            self.url = os.path.abspath(os.path.expanduser(self.url))
        self.storage_options = dict(self.storage_options or {})
        self._fs = None
        self._path = None
        self._pid = None

    def _resolve(self) -> None:
        self._fs, self._path = process_filesystem(self.url, self.storage_options)
        self._pid = os.getpid()

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        """This process's fsspec filesystem (created lazily; re-created in a forked child)."""
        if self._fs is None or self._pid != os.getpid():
            self._resolve()
        return self._fs

    @property
    def path(self) -> str:
        """The path inside :attr:`fs`."""
        if self._path is None:
            self._resolve()
        return self._path

    @property
    def is_local(self) -> bool:
        """True when the store is a plain directory on this machine (memory-mappable)."""
        return isinstance(self.fs, LocalFileSystem)

    @property
    def local_path(self) -> str:
        """Absolute local directory of the store (only for local locations)."""
        if not self.is_local:
            raise ValueError(f"{self.url} is not a local path")
        return os.path.abspath(self.path)

    def child(self, name: str) -> "Location":
        """A location next to this one's path, e.g. a staging directory for a build."""
        if self.is_local:
            return Location(os.path.join(self.local_path, name), self.storage_options)
        protocol = self.fs.protocol[0] if isinstance(self.fs.protocol, (tuple, list)) else self.fs.protocol
        return Location(f"{protocol}://{self.path}/{name}", self.storage_options)

    def sibling(self, name: str) -> "Location":
        """A location in the same parent directory as this one."""
        if self.is_local:
            return Location(os.path.join(os.path.dirname(self.local_path), name), self.storage_options)
        protocol = self.fs.protocol[0] if isinstance(self.fs.protocol, (tuple, list)) else self.fs.protocol
        parent = self.path.rsplit("/", 1)[0] if "/" in self.path else ""
        return Location(f"{protocol}://{parent}/{name}" if parent else f"{protocol}://{name}", self.storage_options)

    def zarr_store(self, *, read_only: bool) -> zarr.abc.store.Store:
        """A Zarr store for this location (LocalStore on disk, FsspecStore elsewhere)."""
        if self.is_local:
            return zarr.storage.LocalStore(self.local_path, read_only=read_only)
        return zarr.storage.FsspecStore.from_url(
            self.url, storage_options=self.storage_options or None, read_only=read_only
        )

    def exists(self) -> bool:
        """Whether anything exists at this location."""
        return self.fs.exists(self.path)

    def is_empty_or_missing(self) -> bool:
        """True when nothing, or an empty directory, exists here."""
        if not self.fs.exists(self.path):
            return True
        try:
            return self.fs.isdir(self.path) and len(self.fs.ls(self.path, detail=False)) == 0
        except FileNotFoundError:
            return True

    def objects(self, policy=None):
        """The :class:`~zarrtok.storage.objects.ObjectIO` of this location (retries, counters)."""
        from .objects import ObjectIO

        return ObjectIO(self, policy)

    def remove(self) -> None:
        """Delete everything at this location (no error when nothing is there)."""
        if self.fs.exists(self.path):
            self.fs.rm(self.path, recursive=True)

    def __str__(self) -> str:
        return self.url

    def __getstate__(self) -> dict[str, Any]:
        # Filesystems are re-created in each process (fork/spawn safety), never pickled.
        return {"url": self.url, "storage_options": self.storage_options}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.url = state["url"]
        self.storage_options = state["storage_options"]
        self._fs = None
        self._path = None
        self._pid = None


def as_location(where: "str | os.PathLike[str] | Location", storage_options: dict[str, Any] | None = None) -> Location:
    """Coerce a path, URL or Location into a Location."""
    if isinstance(where, Location):
        if storage_options:
            return Location(where.url, {**where.storage_options, **storage_options})
        return where
    return Location(os.fspath(where), storage_options or {})


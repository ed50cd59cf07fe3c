"""Committing a store: what may be replaced, where a writer stages its objects, the switch that makes
them visible, and the sweeping of what crashed writers left behind.

**What may be replaced** (:func:`inspect`). Only a zarrtok store: a directory (or prefix) whose
``zarr.json`` is a Zarr v3 group carrying a ``zarrtok`` manifest, with nothing at its top level but
``zarr.json``, ``tokenizer/`` and ``splits/``. A complete store, or an incomplete one (status
``building``: our own crashed build), may be replaced with ``overwrite``; anything else — a plain
Zarr group of user data, a ``zarr.json`` that is not JSON, a directory of other files, a zarrtok
store with foreign files beside it, a file, a symbolic link — raises :class:`ForeignDataError`
(a :class:`~zarrtok.errors.StoreExistsError`) naming what is there, and is never deleted. An empty
directory counts as empty.

**Local paths: one atomic switch** (:func:`commit_staging`). A writer builds in a hidden sibling
directory ``.<name>.zarrtok-staging-<id>`` and records itself in ``.<name>.zarrtok-writer-<id>.json``
(pid, host, boot id, process start time). On Linux the commit is a single ``renameat2`` (via
ctypes):

* replacing (``overwrite``): ``RENAME_EXCHANGE`` swaps staging and store atomically, so there is no
  instant at which the path is empty or half written; what came back is inspected, and if it is not
  replaceable after all (user data appeared meanwhile) it is swapped back and the build fails;
  otherwise it is deleted;
* not replacing (``overwrite=False``): ``RENAME_NOREPLACE`` fails if anything appeared at the path
  since the build checked it — the conditional commit: of two concurrent builds into one empty
  output exactly one commits; the other raises :class:`CommitConflictError` (the builder then
  reuses the winner's store when the fingerprints match).

Where ``renameat2`` is unavailable (not Linux, or a filesystem without it) the commit falls back to
two renames (store aside to ``.<name>.zarrtok-old-<id>``, staging in). A crash between them leaves
nothing at the path; :func:`recover` — run by every build and copy before it looks at the path —
renames the newest complete ``-old-`` copy back. The fallback's ``overwrite=False`` commit checks
the path just before renaming (a narrow race, documented).

**Object stores: the switch is the last write.** There is no rename; a writer takes an exclusive
lock object next to the store (``<parent>/.<name>.zarrtok-lock``, written with ``If-None-Match:
*``; a lock whose writer is provably dead — same host, pid gone — or older than
:data:`STALE_SECONDS` is taken over), and inspects the location again under the lock. Into an
empty location (or over our own incomplete build, cleared first) it writes in place with
``status: "building"`` and flips the status last. Over a complete store it leaves the old root
``zarr.json`` untouched, writes its shards under names that cannot collide with the old ones
(``<ordinal>-<8 hex of a fresh id>``, :func:`shard_suffix`; readers follow the manifest's shard
names), and the new root ``zarr.json`` is its last write: until then the old store opens intact.
After the switch the old generation's objects (shards, splits and tokenizer files the new manifest
does not name) are swept; a failed or killed writer's objects are swept the same way by the next
writer. Caveat: the tokenizer group has a fixed path, so an overwrite with a *different* tokenizer
rewrites ``tokenizer/`` before the switch (the old store's tokens stay right; its tokenizer fails the
manifest's digest check until the switch).

**Orphans** (:func:`sweep_orphans`): staging, old and writer files of writers that are dead (same
host and boot, pid gone or reused) or older than :data:`STALE_SECONDS` (other hosts, or no writer
file) are deleted by the next build or copy into that output. Never an ``-old-`` copy while the
path itself is missing (that is :func:`recover`'s).

Build (:mod:`zarrtok.ingest.builder`) and copy (:mod:`zarrtok.storage.copying`) both use this module.
"""

from __future__ import annotations

import ctypes
import errno
import json
import logging
import os
import platform
import re
import shutil
import socket
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from ..errors import StoreExistsError, ZarrtokError
from ..format import ATTRIBUTE_KEY, FORMAT_NAME, SPLITS_GROUP, STATUS_BUILDING, TOKENIZER_GROUP, Manifest, shard_path
from .location import Location

logger = logging.getLogger(__name__)

#: A writer not provably alive (another host, or no record of it) is presumed dead after this long.
STALE_SECONDS = 24 * 3600
#: The top-level entries a zarrtok store may have.
#: a root zarr.json being replaced in place (storage.root_update): ours, not foreign data
ROOT_TMP_PREFIX = ".zarr.json.tmp-"
STORE_ENTRIES = frozenset({"zarr.json", TOKENIZER_GROUP, SPLITS_GROUP, "indices"})  # indices/: derived data keyed by generation

EMPTY, COMPLETE, INCOMPLETE = "empty", "complete", "incomplete"


class ForeignDataError(StoreExistsError):
    """The location holds data that is not a zarrtok store: it is never replaced or deleted."""


class CommitConflictError(StoreExistsError):
    """Another writer committed at the location after this one checked it (conditional commit)."""


# -- what is at a location --------------------------------------------------------------------------
@dataclass
class Existing:
    """What :func:`inspect` found: ``empty``, a ``complete`` store (with its manifest) or an
    ``incomplete`` / unusable zarrtok store (with the reason it cannot be opened)."""

    kind: str
    manifest: Manifest | None = None
    error: Exception | None = None
    generation: str = ""

    def same_as(self, other: "Existing") -> bool:
        return self.kind == other.kind and self.generation == other.generation and (
            self.manifest is None) == (other.manifest is None) and (
            self.manifest is None or self.manifest.fingerprint == other.manifest.fingerprint)


def _foreign(url: str, what: str) -> ForeignDataError:
    return ForeignDataError(
        f"{url} {what}; refusing to overwrite or delete it: choose another output, or remove it yourself")


def inspect(location: Location) -> Existing:
    """Classify what is at ``location``; raise :class:`ForeignDataError` for anything not ours."""
    url = location.url
    raw: bytes | None = None
    if location.is_local:
        path = location.local_path
        if not os.path.lexists(path):
            return Existing(EMPTY)
        if os.path.islink(path):
            raise _foreign(url, "is a symbolic link, not a zarrtok store (build into its target instead)")
        if not os.path.isdir(path):
            raise _foreign(url, "exists and is not a zarrtok store (it is a file)")
        entries = os.listdir(path)
        if not entries:
            return Existing(EMPTY)
        if "zarr.json" in entries:
            try:
                with open(os.path.join(path, "zarr.json"), "rb") as f:
                    raw = f.read()
            except IsADirectoryError:
                raw = None
    else:
        io = location.objects()
        try:
            files = io.find()
        except FileNotFoundError:
            files = {}
        if not files:
            return Existing(EMPTY)
        entries = sorted({k.split("/", 1)[0] for k in files})
        if "zarr.json" in files:
            raw = io.get("zarr.json")
    foreign = sorted(e for e in set(entries) - STORE_ENTRIES if not e.startswith(ROOT_TMP_PREFIX))
    shown = ", ".join(sorted(entries)[:5]) + (", ..." if len(entries) > 5 else "")
    if raw is None:
        raise _foreign(url, f"exists and is not a zarrtok store (no zarr.json; it holds {shown})")
    try:
        meta = json.loads(raw)
    except ValueError:
        raise _foreign(url, "is not a zarrtok store: its zarr.json is not JSON") from None
    if not isinstance(meta, dict) or meta.get("node_type") != "group" or meta.get("zarr_format") != 3:
        raise _foreign(url, "is not a zarrtok store: its zarr.json is not a Zarr v3 group")
    attrs = meta.get("attributes")
    d = attrs.get(ATTRIBUTE_KEY) if isinstance(attrs, dict) else None
    if not isinstance(d, dict) or d.get("format") != FORMAT_NAME:
        raise _foreign(url, "is a Zarr group without a zarrtok manifest, not a zarrtok store (user data?)")
    if foreign:
        raise _foreign(url, f"is a zarrtok store but also holds {', '.join(foreign[:5])}, which are not part of it")
    generation = str(d.get("generation", ""))
    if d.get("status") == STATUS_BUILDING:
        return Existing(INCOMPLETE, error=ZarrtokError(f"{url} is an incomplete zarrtok store (status 'building')"),
                        generation=generation)
    try:
        manifest = Manifest.from_attributes(attrs, url)
    except ZarrtokError as exc:
        return Existing(INCOMPLETE, error=exc, generation=generation)
    return Existing(COMPLETE, manifest=manifest, generation=manifest.generation)


# -- writers: who they are and whether they are alive -----------------------------------------------
def _read_text(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def _boot_id() -> str:
    return _read_text("/proc/sys/kernel/random/boot_id")


def _start_time(pid: int) -> str:
    stat = _read_text(f"/proc/{pid}/stat")
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else ""


def writer_info(**extra: Any) -> dict[str, Any]:
    """This process as a writer: enough for another process to tell later whether it is alive."""
    pid = os.getpid()
    return {"pid": pid, "host": socket.gethostname(), "boot_id": _boot_id(), "start_time": _start_time(pid),
            "created": time.time(), **extra}


def writer_alive(info: dict[str, Any] | None, age_s: float) -> bool:
    """Whether the writer ``info`` describes may still be running (``age_s``: how old its record is)."""
    if not isinstance(info, dict) or info.get("host") != socket.gethostname():
        return age_s < STALE_SECONDS
    boot = _boot_id()
    if info.get("boot_id") and boot and info["boot_id"] != boot:
        return False  # the machine rebooted since
    try:
        pid = int(info["pid"])
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, another user's
    except (KeyError, TypeError, ValueError):
        return age_s < STALE_SECONDS
    started = info.get("start_time")
    return not (started and _start_time(pid) and _start_time(pid) != started)  # a reused pid is another process


# -- local renames ------------------------------------------------------------------------------------
_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
_SYSCALL_RENAMEAT2 = {"x86_64": 316, "aarch64": 276, "ppc64le": 357, "s390x": 347}
_renameat2_fn: list[Any] = []


def _renameat2():
    if not _renameat2_fn:
        fn = None
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                if hasattr(libc, "renameat2"):
                    raw = libc.renameat2
                    raw.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]

                    def fn(a, b, flags, raw=raw):
                        return raw(_AT_FDCWD, a, _AT_FDCWD, b, flags)
                elif platform.machine() in _SYSCALL_RENAMEAT2:
                    number = _SYSCALL_RENAMEAT2[platform.machine()]
                    syscall = libc.syscall

                    def fn(a, b, flags, syscall=syscall, number=number):
                        return syscall(ctypes.c_long(number), ctypes.c_int(_AT_FDCWD), ctypes.c_char_p(a),
                                       ctypes.c_int(_AT_FDCWD), ctypes.c_char_p(b), ctypes.c_uint(flags))
            except OSError:  # pragma: no cover
                fn = None
        _renameat2_fn.append(fn)
    return _renameat2_fn[0]


def _rename2(src: str, dst: str, flags: int) -> bool:
    """``renameat2(src, dst, flags)``; False when this system or filesystem does not support it."""
    fn = _renameat2()
    if fn is None:
        return False
    if fn(os.fsencode(src), os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), src, None, dst)


def exchange(src: str, dst: str) -> bool:
    """Atomically swap two existing paths; False when unsupported here (then nothing happened)."""
    return _rename2(src, dst, _RENAME_EXCHANGE)


def rename_noreplace(src: str, dst: str) -> None:
    """Rename ``src`` to ``dst``, failing with ``FileExistsError`` if ``dst`` exists (atomically where
    ``renameat2`` exists; elsewhere a check right before ``os.rename``)."""
    if _rename2(src, dst, _RENAME_NOREPLACE):
        return
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), dst)
    os.rename(src, dst)


# -- local hidden siblings ----------------------------------------------------------------------------
def _sibling_pattern(name: str) -> re.Pattern:
    return re.compile(rf"^\.{re.escape(name)}\.zarrtok-(staging|old|writer)-([0-9a-f]{{12}})(\.json)?$")


def _hidden(target: str, kind: str, token: str) -> str:
    name = os.path.basename(target.rstrip(os.sep)) or "store"
    suffix = ".json" if kind == "writer" else ""
    return os.path.join(os.path.dirname(target), f".{name}.zarrtok-{kind}-{token}{suffix}")


def recover(location: Location) -> str | None:
    """If a crash between the two renames of a fallback overwrite left nothing at the local path
    ``location``, rename the newest complete hidden old copy back; return its former path."""
    if not location.is_local:
        return None
    target = location.local_path
    parent = os.path.dirname(target)
    if os.path.lexists(target) or not os.path.isdir(parent):
        return None
    pattern = _sibling_pattern(os.path.basename(target))
    candidates = []
    for entry in os.listdir(parent):
        m = pattern.match(entry)
        path = os.path.join(parent, entry)
        if m and m.group(1) == "old" and os.path.isdir(path) and not os.path.islink(path):
            try:
                if inspect(Location(path)).kind == COMPLETE:
                    candidates.append((os.path.getmtime(path), path))
            except (ZarrtokError, OSError):
                continue
    for _, path in sorted(candidates, reverse=True):
        try:
            rename_noreplace(path, target)
        except FileExistsError:
            return None
        except FileNotFoundError:
            continue  # another process recovered or swept it
        logger.warning("recovered %s from %s (an overwrite was interrupted between its two renames)", target, path)
        return path
    return None


def sweep_orphans(location: Location) -> list[str]:
    """Delete staging, old and writer files left next to the local path ``location`` by dead writers;
    return what was deleted."""
    if not location.is_local:
        return []
    target = location.local_path
    parent = os.path.dirname(target)
    if not os.path.isdir(parent):
        return []
    pattern = _sibling_pattern(os.path.basename(target))
    groups: dict[str, dict[str, str]] = {}
    for entry in os.listdir(parent):
        m = pattern.match(entry)
        if m:
            groups.setdefault(m.group(2), {})[m.group(1)] = os.path.join(parent, entry)
    now = time.time()
    removed = []
    for token, paths in groups.items():
        info = None
        record = paths.get("writer") or paths.get("staging") or paths.get("old")
        try:
            age = now - os.lstat(record).st_mtime
        except OSError:
            continue
        if "writer" in paths:
            try:
                with open(paths["writer"]) as f:
                    info = json.load(f)
            except (OSError, ValueError):
                info = None
        if writer_alive(info, age):
            continue
        if "old" in paths and not os.path.lexists(target):
            continue  # recover()'s to restore, never to sweep
        for kind in ("staging", "old"):
            if kind in paths:
                _remove_tree(paths[kind])
                removed.append(paths[kind])
        if "writer" in paths:
            _unlink(paths["writer"])
            removed.append(paths["writer"])
    if removed:
        logger.info("swept %d leftover(s) of dead writers next to %s: %s", len(removed), target, removed)
    return removed


def _remove_tree(path: str) -> None:
    if os.path.islink(path) or not os.path.isdir(path):
        _unlink(path)
    else:
        shutil.rmtree(path, ignore_errors=True)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def put_exclusive(location: Location, key: str, data: bytes) -> bool:
    """Write object ``key`` only if it does not exist (``If-None-Match: *`` on S3; a check before the
    write on backends without exclusive writes); False when it existed. A retried request whose first
    attempt succeeded reads back as ours (same bytes)."""
    io = location.objects()
    fs, path = location.fs, io.path(key)

    def once() -> bool:
        try:
            fs.pipe_file(path, data, mode="create")
        except FileExistsError:
            return False
        except (TypeError, NotImplementedError):  # pragma: no cover - no exclusive writes: best effort
            if fs.exists(path):
                return False
            fs.pipe_file(path, data)
        return True

    if io._retry(f"creating {io.url(key)}", once):
        return True
    try:
        return io.get(key) == data
    except FileNotFoundError:
        return False


# -- remote lock --------------------------------------------------------------------------------------
class RemoteLock:
    """An exclusive lock object next to a remote store (``If-None-Match: *`` where supported)."""

    def __init__(self, location: Location):
        self.location = location
        name = location.path.rstrip("/").rsplit("/", 1)[-1]
        self.where = location.sibling(f".{name}.zarrtok-lock") if "/" in location.path.strip("/") else \
            location.child(".zarrtok-lock")
        self.token = uuid.uuid4().hex
        self.held = False

    def _io(self):
        return self.where.objects()

    def _read(self) -> dict[str, Any] | None:
        io = self._io()
        try:
            return json.loads(io.get(""))
        except FileNotFoundError:
            return None
        except ValueError:
            return {}

    def _create(self, data: bytes) -> bool:
        """Write the lock object only if absent; False when it exists."""
        put_exclusive(self.where, "", data)
        held = self._read()  # also right when a retried create's first attempt had succeeded
        return bool(held) and held.get("token") == self.token

    def acquire(self) -> "RemoteLock":
        data = json.dumps(writer_info(token=self.token, store=self.location.url)).encode()
        for _ in range(3):
            if self._create(data):
                self.held = True
                return self
            held = self._read()
            if held is None:
                continue  # released meanwhile
            age = time.time() - float(held.get("created", 0) or 0) if held else STALE_SECONDS
            if held and writer_alive(held, age):
                when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(held.get("created", 0))))
                raise StoreExistsError(
                    f"{self.location.url} is being written by another build or copy (pid {held.get('pid')} on "
                    f"{held.get('host')}, since {when}); wait for it, or delete {self.where.url} if it is dead")
            logger.warning("taking over the stale lock %s of a dead writer (%s)", self.where.url, held)
            self._io().remove("")
        raise StoreExistsError(f"could not lock {self.location.url} ({self.where.url} keeps reappearing)")

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        try:
            held = self._read()
            if held and held.get("token") == self.token:
                self._io().remove("")
        except Exception:  # pragma: no cover - best effort; a stale lock is taken over later
            logger.exception("could not release %s", self.where.url)


# -- staging ------------------------------------------------------------------------------------------
@dataclass(eq=False)
class Staging(Location):
    """Where a writer writes before the commit: a hidden sibling directory locally (``separate``), the
    store's own location on object stores. Carries what the commit needs."""

    target: Location | None = None
    separate: bool = False
    replace: bool = False
    token: str = ""
    suffix: str = ""  # shard-name suffix when writing beside a complete remote store
    lock: RemoteLock | None = None
    owns: bool = False  # remote: whether the objects at the location are this writer's to clean up
    existing: Existing = field(default_factory=lambda: Existing(EMPTY))
    keep_tokenizer: set[str] | None = None  # tokenizer files the new store has (the rest are swept)


def shard_suffix(staging: Location) -> str:
    """What a writer appends to shard names: ``""``, or ``-<8 hex>`` when writing beside a complete
    remote store (names the old generation cannot have)."""
    return getattr(staging, "suffix", "")


def staging_location(location: Location, *, replace: bool = False, expected: Existing | None = None) -> Staging:
    """Start a write to ``location``: recover and sweep local leftovers and make a staging directory,
    or take the remote lock and re-check the location under it.

    ``replace``: whether a zarrtok store found at commit time may be replaced (``overwrite``);
    ``expected``: what the caller saw at ``location`` (remote: a different store under the lock, when
    not replacing, raises :class:`CommitConflictError`).
    """
    token = uuid.uuid4().hex[:12]
    if location.is_local:
        target = location.local_path
        os.makedirs(os.path.dirname(target), exist_ok=True)
        recover(location)
        sweep_orphans(location)
        writer = _hidden(target, "writer", token)
        fd = os.open(writer, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "w") as f:
            json.dump(writer_info(store=target), f)
        path = _hidden(target, "staging", token)
        os.mkdir(path)
        return Staging(path, location.storage_options, target=location, separate=True, replace=replace, token=token)
    if expected is not None and expected.kind == EMPTY:
        # Into an empty location: the exclusive create of the root zarr.json (begin_root) decides between
        # concurrent writers; the lock is taken right after it.
        return Staging(location.url, location.storage_options, target=location, replace=replace, token=token)
    lock = RemoteLock(location).acquire()
    try:
        existing = inspect(location)
        if existing.kind == COMPLETE and not replace:
            raise CommitConflictError(
                f"{location.url} now holds a store (fingerprint {existing.manifest.fingerprint[:12]}) that another "
                "writer committed meanwhile; pass overwrite=True to replace it")
        if existing.kind == INCOMPLETE and not replace:
            raise StoreExistsError(f"{location.url} holds an unusable store ({existing.error}); pass overwrite=True")
        if expected is not None and not replace and not existing.same_as(expected):  # pragma: no cover - defensive
            raise CommitConflictError(f"{location.url} changed while this build was preparing")
        suffix = ""
        if existing.kind == COMPLETE:
            suffix = "-" + token[:8]
        elif existing.kind == INCOMPLETE:  # a crashed build (checked by inspect; no live lock): nothing to keep
            logger.warning("clearing the incomplete store at %s (%s)", location.url, existing.error)
            location.objects().remove("")
        return Staging(location.url, location.storage_options, target=location, replace=replace, token=token,
                       suffix=suffix, lock=lock, existing=existing, owns=True)
    except BaseException:
        lock.release()
        raise


def begin_root(staging: Location, root_json: bytes) -> None:
    """Write the ``building`` root ``zarr.json`` of a remote write into an empty location: exclusively
    (a concurrent writer that got there first makes this one raise :class:`CommitConflictError`), then
    take the lock (a live overwrite that took it first makes this one raise)."""
    if getattr(staging, "separate", True) or shard_suffix(staging):
        staging.objects().put("zarr.json", root_json)
        return
    if not put_exclusive(staging, "zarr.json", root_json):
        raise CommitConflictError(f"{staging.url}: another writer created a store there meanwhile")
    if staging.lock is None:
        staging.lock = RemoteLock(staging.target).acquire()
    staging.owns = True


def open_staging_root(staging: Location, attributes: dict[str, Any]):
    """The root Zarr group a writer writes under. Beside a complete remote store the old root is left
    as it is (its ``zarr.json`` is rewritten only by the commit); otherwise a new root group is
    created with ``attributes`` (the ``building`` manifest)."""
    import zarr

    store = staging.zarr_store(read_only=False)
    if shard_suffix(staging):
        return _BesideGroup(zarr.open_group(store, mode="r+"))
    if getattr(staging, "separate", True):
        return zarr.open_group(store, mode="w", attributes=attributes)
    root = {"zarr_format": 3, "node_type": "group", "attributes": attributes}
    begin_root(staging, json.dumps(root, indent=2).encode())
    return zarr.open_group(store, mode="r+")


class _BesideGroup:
    """The old root group of a complete remote store, for a writer writing beside it: new children
    (shards, under new names) are created as usual; an existing child group (``tokenizer``) is
    reused, and an existing array in it is rewritten in place when its shape, dtype and codecs match
    (same-size objects replaced one PUT each: an identical tokenizer never disappears), else
    replaced."""

    def __init__(self, group):
        self._group = group

    def __getattr__(self, name: str):
        return getattr(self._group, name)

    def create_group(self, name: str, **kwargs):
        from zarr.errors import ContainsGroupError

        try:
            return self._group.create_group(name, **kwargs)
        except ContainsGroupError:
            return _BesideGroup(self._group[name])

    def create_array(self, name: str, **kwargs):
        import numpy as np
        from zarr.errors import ContainsArrayError

        try:
            return self._group.create_array(name, **kwargs)
        except ContainsArrayError:
            old = self._group[name]
            same = (tuple(old.shape) == tuple(kwargs.get("shape", ())) and old.dtype == np.dtype(kwargs.get("dtype"))
                    and tuple(old.chunks) == tuple(kwargs.get("chunks") or old.chunks)
                    and [type(c) for c in old.compressors] == [type(c) for c in (kwargs.get("compressors") or [])])
            if same:
                return old
            return self._group.create_array(name, overwrite=True, **kwargs)


def commit_staging(staging: Location, location: Location | None = None) -> None:
    """Make a complete staging directory the store (local), or finish an in-place write whose root
    ``zarr.json`` was its last write (remote: sweep the previous generation, release the lock)."""
    if not isinstance(staging, Staging):  # pragma: no cover - a plain location: written in place
        return
    if staging.separate:
        try:
            _commit_local(staging)
        finally:
            _unlink(_hidden(staging.target.local_path, "writer", staging.token))
        return
    try:
        from .manifest_io import read_manifest

        manifest = read_manifest(staging.target)
        sweep_unreferenced(staging.target, manifest, keep_tokenizer=staging.keep_tokenizer)
    finally:
        if staging.lock is not None:
            staging.lock.release()


def _commit_local(staging: Staging) -> None:
    src, target = staging.local_path, staging.target.local_path
    url = staging.target.url
    if not staging.replace:
        if os.path.isdir(target) and not os.path.islink(target):
            try:
                os.rmdir(target)  # the empty directory the build saw
            except FileNotFoundError:
                pass
            except OSError as exc:
                if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                    raise CommitConflictError(f"{url} was filled by another writer during this build") from None
                raise
        try:
            rename_noreplace(src, target)
        except FileExistsError:
            raise CommitConflictError(f"{url} was created by another writer during this build") from None
        return
    if not os.path.lexists(target):
        try:
            rename_noreplace(src, target)
            return
        except FileExistsError:
            pass  # appeared meanwhile: replace it below, if it may be replaced
    if exchange(src, target):
        try:
            inspect(Location(src))  # what was at the path a moment ago
        except ForeignDataError as exc:
            exchange(src, target)  # put it back
            raise ForeignDataError(f"{url} changed during the build and is not a zarrtok store any more "
                                   f"({exc}); left in place") from None
        _remove_tree(src)
        return
    # Fallback without renameat2: two renames; recover() repairs a crash between them.
    inspect(staging.target)
    old = _hidden(target, "old", staging.token)
    os.rename(target, old)
    os.rename(src, target)
    _remove_tree(old)


def discard_staging(staging: Location) -> None:
    """Undo a failed write: remove the staging directory (putting back an old store the fallback
    commit had moved aside), or on object stores remove what the write added, then unlock."""
    if not isinstance(staging, Staging):  # pragma: no cover
        staging.remove()
        return
    if staging.separate:
        target = staging.target.local_path
        _remove_tree(staging.local_path)
        old = _hidden(target, "old", staging.token)
        if os.path.isdir(old):
            if not os.path.lexists(target):
                try:
                    rename_noreplace(old, target)
                    logger.warning("put the previous store back at %s", target)
                except OSError:
                    logger.exception("could not put %s back at %s", old, target)
            else:
                _remove_tree(old)
        if not os.path.lexists(old):
            _unlink(_hidden(target, "writer", staging.token))
        return
    try:
        if not staging.owns:
            return  # nothing written, or the location is another writer's
        existing = inspect(staging.target)
        if existing.kind == COMPLETE:
            sweep_unreferenced(staging.target, existing.manifest)
        elif existing.kind == INCOMPLETE:
            staging.target.objects().remove("")
    except ForeignDataError:  # pragma: no cover - someone wrote other data meanwhile: leave it
        logger.warning("not cleaning %s: it holds other data now", staging.target.url)
    finally:
        if staging.lock is not None:
            staging.lock.release()


def sweep_unreferenced(location: Location, manifest: Manifest, *, keep_tokenizer: set[str] | None = None) -> list[str]:
    """Delete the objects of a remote store that its committed ``manifest`` does not name: shards and
    splits of other generations, and (given ``keep_tokenizer``) other tokenizer files. Only run by the
    lock holder."""
    io = location.objects()
    try:
        files = io.find()
    except FileNotFoundError:
        return []
    shards = {shard_path(split, s.name) for split, info in manifest.splits.items() for s in info.shards}
    doomed: set[str] = set()
    for key in files:
        parts = key.split("/")
        if parts[0] == SPLITS_GROUP and len(parts) > 2:
            if parts[1] not in manifest.splits:
                doomed.add("/".join(parts[:2]))
            elif len(parts) > 4 and parts[2] == "shards" and "/".join(parts[:4]) not in shards:
                doomed.add("/".join(parts[:4]))
        elif parts[0] == TOKENIZER_GROUP and keep_tokenizer is not None and len(parts) > 2:
            if parts[1] not in keep_tokenizer:
                doomed.add("/".join(parts[:2]))
    for unit in sorted(doomed):
        io.remove(unit)
    if doomed:
        logger.info("swept %d object group(s) of other generations from %s", len(doomed), location.url)
    return sorted(doomed)

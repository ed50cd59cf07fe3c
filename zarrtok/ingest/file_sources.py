"""Source files for the direct readers: local paths or fsspec URLs, globs, compression, identity.

The direct readers (:mod:`zarrtok.ingest.jsonl`, :mod:`zarrtok.ingest.parquet`) take ``data_files``
entries that are local paths or fsspec URLs (``s3://bucket/dir/*.jsonl.gz``, ``gs://...``,
``hf://datasets/owner/name/data/*.parquet`` through ``huggingface_hub``'s filesystem,
``memory://``, ``file://``), each possibly a glob. Options for the *source* filesystem are
``load_dataset_kwargs={"storage_options": {...}}`` — the same key ``datasets.load_dataset``
takes, so one call means the same thing on both paths; the build's own ``storage_options`` are the
output store's.

* **Globs** are expanded at plan time, each pattern's matches in sorted order (as
  ``datasets`` does), patterns in the order given; the resolved list is what the plan, the
  provenance and the fingerprint record. A pattern matching nothing is an error.
* **Identity** (for the fingerprint): per file its URL (local: absolute path), size, and what the
  filesystem gives to tell versions apart — local ``mtime_ns``; object stores' ``ETag`` / version
  id / last-modified time / checksums; the Hub's ``blob_id`` / LFS ``sha256``.
* **Compression** comes from the name (``.gz``, ``.zst``/``.zstd``, also ``.bz2``/``.xz``), as
  fsspec's ``compression="infer"`` does.
* **Credentials** are never written to the plan: :func:`plan_options` drops secret-looking keys
  (``key``, ``secret``, ``token``, ``password``, ...). The driver and processes forked from it read
  with the full options; remote workers (Dask, spawned processes, ``zarrtok build-task``) get the
  rest (endpoint, region, ...) and take credentials from their environment (``AWS_*`` variables,
  instance roles, ``HF_TOKEN``), as cluster jobs normally do.
"""

from __future__ import annotations

import glob as _glob
import logging
import os
from collections.abc import Sequence
from typing import Any

logger = logging.getLogger(__name__)

COMPRESSIONS = {".gz": "gzip", ".gzip": "gzip", ".zst": "zstd", ".zstd": "zstd", ".bz2": "bz2", ".xz": "xz"}
_SECRET_WORDS = ("secret", "token", "password", "passwd", "credential", "private")
_SECRET_KEYS = {"key", "access_key", "aws_access_key_id", "account_key", "sas_token", "anon_key"}
_GLOB = "*?["


def is_url(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def _local(path: str) -> str:
    return path.removeprefix("file://")


def compression_of(path: str) -> str | None:
    """The compression a file name says (``None``: plain)."""
    lower = path.lower()
    for suffix, name in COMPRESSIONS.items():
        if lower.endswith(suffix):
            return name
    return None


def base_name(path: str) -> str:
    """The name without a compression suffix (``a.jsonl.gz`` -> ``a.jsonl``), lower case."""
    lower = path.lower()
    for suffix in COMPRESSIONS:
        if lower.endswith(suffix):
            return lower[: -len(suffix)]
    return lower


def filesystem(url: str, storage_options: dict[str, Any] | None):
    """``(fs, path)`` for a URL."""
    import fsspec

    return fsspec.core.url_to_fs(url, **dict(storage_options or {}))


def _unstrip(fs: Any, url: str, path: str) -> str:
    """A full URL for ``path`` of ``fs`` (glob results come without the protocol)."""
    if "://" in path:
        return path
    return fs.unstrip_protocol(path)


def resolve(entries: Sequence[str], storage_options: dict[str, Any] | None) -> list[str] | None:
    """The files named by ``entries`` (paths / URLs, globs expanded in sorted order); ``None`` when an
    entry is a directory or does not exist (the build then leaves the call to ``datasets``, whose
    error or directory rules apply)."""
    files: list[str] = []
    for entry in entries:
        entry = os.fspath(entry)
        if not is_url(entry):
            path = _local(entry)
            if any(ch in path for ch in _GLOB):
                matches = sorted(m for m in _glob.glob(path, recursive=True) if os.path.isfile(m))
                if not matches:
                    raise FileNotFoundError(f"no file matches {entry!r}")
                files += [os.path.abspath(m) for m in matches]
            elif os.path.isfile(path):
                files.append(os.path.abspath(path))
            else:
                return None
            continue
        fs, path = filesystem(entry, storage_options)
        if any(ch in path for ch in _GLOB):
            matches = sorted(p for p in fs.glob(path) if fs.isfile(p))
            if not matches:
                raise FileNotFoundError(f"no file matches {entry!r}")
            files += [_unstrip(fs, entry, m) for m in matches]
        elif fs.isfile(path):
            files.append(entry)
        else:
            return None
    return files


_VERSION_KEYS = ("ETag", "etag", "VersionId", "version_id", "LastModified", "last_modified", "mtime", "updated",
                 "generation", "md5Hash", "crc32c", "checksum", "content_md5", "blob_id", "last_commit")


def identity(files: Sequence[str], storage_options: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Per file: path/URL, size and the version markers the filesystem gives (see the module docstring)."""
    out = []
    for f in files:
        if not is_url(f):
            st = os.stat(_local(f))
            out.append({"path": os.path.abspath(_local(f)), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
            continue
        fs, path = filesystem(f, storage_options)
        info = fs.info(path)
        entry: dict[str, Any] = {"path": f, "size": int(info.get("size") or 0)}
        for key in _VERSION_KEYS:
            value = info.get(key)
            if value is not None:
                entry[key] = value if isinstance(value, (int, float, bool, str)) else str(value)
        lfs = info.get("lfs")
        if isinstance(lfs, dict) and lfs.get("sha256"):
            entry["lfs_sha256"] = lfs["sha256"]
        if len(entry) == 2:
            logger.warning("%s: the filesystem gives no version marker (ETag, mtime, checksum); the fingerprint "
                           "identifies it by URL and size only", f)
        out.append(entry)
    return out


def plan_options(storage_options: dict[str, Any] | None) -> dict[str, Any]:
    """``storage_options`` without credentials, for the plan (see the module docstring)."""

    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            kept = {}
            for k, v in value.items():
                name = str(k).lower()
                if name in _SECRET_KEYS or any(w in name for w in _SECRET_WORDS):
                    continue
                kept[str(k)] = clean(v)
            return kept
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value if isinstance(value, (str, int, float, bool)) or value is None else str(value)

    return clean(dict(storage_options or {}))


def open_raw(path: str, storage_options: dict[str, Any] | None, block_size: int = 8 << 20):
    """A binary file object (local: ``open``; URL: the filesystem's, with ``block_size`` read-ahead)."""
    if not is_url(path):
        return open(_local(path), "rb")
    fs, p = filesystem(path, storage_options)
    return fs.open(p, "rb", block_size=block_size)


def open_stream(path: str, storage_options: dict[str, Any] | None, compression: str | None):
    """A binary stream of the file's (decompressed) bytes, read front to back."""
    raw = open_raw(path, storage_options)
    if compression is None:
        return raw
    from fsspec.compression import compr

    try:
        return _Closing(compr[compression](raw, mode="rb"), raw)
    except KeyError:  # pragma: no cover - fsspec without that codec
        raw.close()
        raise ValueError(f"{path}: compression {compression!r} is not available in fsspec") from None


class _Closing:
    """A decompressing stream that closes the raw file with it."""

    def __init__(self, stream: Any, raw: Any):
        self._stream, self._raw = stream, raw
        if hasattr(stream, "readinto"):  # the scan fills one reused buffer (zarrtok.ingest.jsonl._fill)
            self.readinto = stream.readinto

    def read(self, n: int = -1) -> bytes:
        return self._stream.read(n)

    def close(self) -> None:
        try:
            self._stream.close()
        finally:
            self._raw.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_range(path: str, storage_options: dict[str, Any] | None, start: int, end: int) -> bytes:
    """Bytes ``[start, end)`` of an uncompressed file (a URL: one ranged request)."""
    if not is_url(path):
        with open(_local(path), "rb") as f:
            f.seek(start)
            return f.read(end - start)
    fs, p = filesystem(path, storage_options)
    return fs.cat_file(p, start=start, end=end)


def size_of(path: str, storage_options: dict[str, Any] | None) -> int:
    if not is_url(path):
        return os.path.getsize(_local(path))
    fs, p = filesystem(path, storage_options)
    return int(fs.info(p)["size"])

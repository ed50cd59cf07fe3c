"""Copying a store between any two locations (local ↔ bucket ↔ bucket), verified and crash-safe.

The copy follows the build's commit protocol: the destination's root ``zarr.json`` is first
written with ``status: "building"``, every other object is copied (concurrently) and its size
checked against the source, and the source's root ``zarr.json`` (``status: "complete"``) is
written last. Locally the copy is staged in a hidden sibling directory and renamed into place.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
from typing import Any

from tqdm.auto import tqdm

from .errors import IncompleteStoreError, StoreExistsError, StoreNotFoundError, ZarrtokError
from .format import ATTRIBUTE_KEY, STATUS_BUILDING
from .location import Location, as_location, commit_staging, staging_location
from .store import TokenStore, read_manifest

logger = logging.getLogger(__name__)


def _check_destination(target: Location, overwrite: bool) -> None:
    if target.is_empty_or_missing():
        return
    try:
        existing = read_manifest(target)
    except StoreNotFoundError:
        raise StoreExistsError(f"{target.url} exists and is not a zarrtok store; refusing to overwrite it") from None
    except (IncompleteStoreError, ZarrtokError) as exc:
        if not overwrite:
            raise StoreExistsError(f"{target.url} holds an unusable store ({exc}); pass overwrite=True") from exc
        return
    if not overwrite:
        raise StoreExistsError(
            f"{target.url} already holds a store (fingerprint {existing.fingerprint[:12]}); pass overwrite=True to replace it"
        )


def copy(
    src: str | os.PathLike | Location,
    dst: str | os.PathLike | Location,
    *,
    src_storage_options: dict[str, Any] | None = None,
    dst_storage_options: dict[str, Any] | None = None,
    overwrite: bool = False,
    max_workers: int = 8,
    progress: bool = True,
) -> TokenStore:
    """Copy the complete store at ``src`` to ``dst`` (paths or fsspec URLs); return it opened at ``dst``."""
    source = as_location(src, src_storage_options)
    manifest = read_manifest(source)  # refuses incomplete sources
    target = as_location(dst, dst_storage_options)
    _check_destination(target, overwrite)
    staging = staging_location(target)
    if not staging.is_local:
        staging.remove()

    src_fs, src_root = source.fs, source.path
    files = {p: info["size"] for p, info in src_fs.find(src_root, detail=True).items() if info.get("type") != "directory"}
    root_meta_path = f"{src_root}/zarr.json"
    root_meta = src_fs.cat_file(root_meta_path, start=0)
    building = json.loads(root_meta)
    building["attributes"][ATTRIBUTE_KEY]["status"] = STATUS_BUILDING

    def relative(path: str) -> str:
        return path[len(src_root) :].lstrip("/")

    def copy_one(path: str) -> int:
        data = src_fs.cat_file(path, start=0)
        if len(data) != files[path]:
            raise IncompleteStoreError(f"{path}: read {len(data)} bytes, listed as {files[path]}")
        dst_path = f"{staging.path}/{relative(path)}"
        dst_fs = staging.fs
        parent = dst_path.rsplit("/", 1)[0]
        if staging.is_local:
            os.makedirs(parent, exist_ok=True)
        dst_fs.pipe_file(dst_path, data)
        size = dst_fs.size(dst_path)
        if size != len(data):
            raise IncompleteStoreError(f"{dst_path}: wrote {len(data)} bytes, destination has {size}")
        return len(data)

    try:
        if staging.is_local:
            os.makedirs(staging.path, exist_ok=True)
        staging.fs.pipe_file(f"{staging.path}/zarr.json", json.dumps(building, indent=2).encode())
        others = sorted(p for p in files if p != root_meta_path)
        total = sum(files[p] for p in others)
        with tqdm(total=total, unit="B", unit_scale=True, desc=f"copying to {target.url}", disable=not progress) as bar:
            with concurrent.futures.ThreadPoolExecutor(max_workers=max_workers) as pool:
                for n in pool.map(copy_one, others):
                    bar.update(n)
        staging.fs.pipe_file(f"{staging.path}/zarr.json", root_meta)  # the commit: written last
        commit_staging(staging, target)
    except BaseException:
        logger.info("copy failed; removing %s", staging.url)
        try:
            staging.remove()
        except Exception:  # pragma: no cover - best effort
            logger.exception("could not remove %s", staging.url)
        raise
    copied = TokenStore(target, read_manifest(target))
    if copied.fingerprint != manifest.fingerprint:  # pragma: no cover - defensive
        raise IncompleteStoreError(f"copy at {target.url} has a different fingerprint than {source.url}")
    logger.info("copied %s -> %s (%d objects, %d bytes)", source.url, target.url, len(files), sum(files.values()))
    return copied

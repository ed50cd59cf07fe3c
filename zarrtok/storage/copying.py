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

from ..errors import IncompleteStoreError, StoreExistsError, StoreNotFoundError, ZarrtokError
from ..format import ATTRIBUTE_KEY, STATUS_BUILDING, Manifest
from .commit import commit_staging, staging_location
from .location import Location, as_location
from .manifest_io import read_manifest

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


def copy_store(
    src: str | os.PathLike | Location,
    dst: str | os.PathLike | Location,
    *,
    src_storage_options: dict[str, Any] | None = None,
    dst_storage_options: dict[str, Any] | None = None,
    overwrite: bool = False,
    max_workers: int = 8,
    progress: bool = True,
) -> Manifest:
    """Copy the complete store at ``src`` to ``dst`` (paths or fsspec URLs); return the copy's manifest
    (``zarrtok.copy`` opens it)."""
    source = as_location(src, src_storage_options)
    manifest = read_manifest(source)  # refuses incomplete sources
    target = as_location(dst, dst_storage_options)
    _check_destination(target, overwrite)
    staging = staging_location(target)
    if not staging.is_local:
        staging.remove()

    src_io, dst_io = source.objects(), staging.objects()
    files = src_io.find()
    root_meta = src_io.get("zarr.json")
    building = json.loads(root_meta)
    building["attributes"][ATTRIBUTE_KEY]["status"] = STATUS_BUILDING

    def copy_one(key: str) -> int:
        data = src_io.get(key)
        if len(data) != files[key]:
            raise IncompleteStoreError(f"{source.url}/{key}: read {len(data)} bytes, listed as {files[key]}")
        dst_io.put(key, data)  # checks the written size
        return len(data)

    try:
        dst_io.put("zarr.json", json.dumps(building, indent=2).encode())
        others = sorted(k for k in files if k != "zarr.json")
        total = sum(files[p] for p in others)
        with tqdm(total=total, unit="B", unit_scale=True, desc=f"copying to {target.url}", disable=not progress) as bar:
            with concurrent.futures.ThreadPoolExecutor(max_workers=max_workers) as pool:
                for n in pool.map(copy_one, others):
                    bar.update(n)
        dst_io.put("zarr.json", root_meta)  # the commit: written last
        commit_staging(staging, target)
    except BaseException:
        logger.info("copy failed; removing %s", staging.url)
        try:
            staging.remove()
        except Exception:  # pragma: no cover - best effort
            logger.exception("could not remove %s", staging.url)
        raise
    copied = read_manifest(target)
    if copied.fingerprint != manifest.fingerprint:  # pragma: no cover - defensive
        raise IncompleteStoreError(f"copy at {target.url} has a different fingerprint than {source.url}")
    logger.info("copied %s -> %s (%d objects, %d bytes)", source.url, target.url, len(files), sum(files.values()))
    return copied

"""Copying a store between any two locations (local ↔ bucket ↔ bucket), verified and crash-safe.

The copy follows the build's commit protocol (:mod:`zarrtok.storage.commit`): locally it is staged in
a hidden sibling directory and switched into place atomically; on an object store it holds the
location's lock, and into an empty location writes the root ``zarr.json`` first with ``status:
"building"``. Every other object is copied (concurrently) and its size checked against the source,
and the source's root ``zarr.json`` (``status: "complete"``) is written last. Over a complete remote
store the old root is left alone until that last write: the shards are copied under new names
(``<ordinal>-<8 hex>``, recorded in the copy's manifest; shard ids, the fingerprint and everything
else are the source's), and the old generation is swept after the switch. Only a zarrtok store is
ever replaced (``overwrite=True``), never user data.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
from typing import Any

from tqdm.auto import tqdm

from ..errors import IncompleteStoreError, StoreExistsError
from ..format import ATTRIBUTE_KEY, SPLITS_GROUP, STATUS_BUILDING, TOKENIZER_GROUP, Manifest, shard_name
from .commit import (
    begin_root,
    COMPLETE,
    EMPTY,
    Existing,
    commit_staging,
    discard_staging,
    inspect,
    recover,
    shard_suffix,
    staging_location,
)
from .location import Location, as_location
from .manifest_io import read_manifest

logger = logging.getLogger(__name__)


def _check_destination(target: Location, overwrite: bool) -> Existing:
    """What is at ``target``, if the copy may write there (else ``StoreExistsError``; user data always)."""
    recover(target)
    existing = inspect(target)  # ForeignDataError (a StoreExistsError) for anything not a zarrtok store
    if existing.kind == EMPTY:
        return existing
    if not overwrite:
        if existing.kind == COMPLETE:
            raise StoreExistsError(
                f"{target.url} already holds a store (fingerprint {existing.manifest.fingerprint[:12]}); "
                "pass overwrite=True to replace it")
        raise StoreExistsError(f"{target.url} holds an unusable store ({existing.error}); pass overwrite=True")
    return existing


def _renamed_shards(root: dict, suffix: str) -> dict[str, str]:
    """Rename every shard in the root metadata ``root`` (in place) to ``<ordinal><suffix>``; return the
    map of old to new shard group paths."""
    moves = {}
    for split, info in root["attributes"][ATTRIBUTE_KEY]["splits"].items():
        for i, shard in enumerate(info["shards"]):
            new = shard_name(i) + suffix
            moves[f"{SPLITS_GROUP}/{split}/shards/{shard['name']}/"] = f"{SPLITS_GROUP}/{split}/shards/{new}/"
            shard["name"] = new
    return moves


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
    existing = _check_destination(target, overwrite)
    staging = staging_location(target, replace=bool(overwrite), expected=existing)

    try:
        src_io, dst_io = source.objects(), staging.objects()
        files = src_io.find()
        root_meta = src_io.get("zarr.json")
        suffix = shard_suffix(staging)
        moves: dict[str, str] = {}
        if suffix:  # beside a complete remote store: new shard names, the root written last
            root = json.loads(root_meta)
            moves = _renamed_shards(root, suffix)
            root_meta = json.dumps(root, indent=2).encode()
        building = json.loads(root_meta)
        building["attributes"][ATTRIBUTE_KEY]["status"] = STATUS_BUILDING

        def dest(key: str) -> str:
            for old, new in moves.items():
                if key.startswith(old):
                    return new + key[len(old):]
            return key

        def copy_one(key: str) -> int:
            data = src_io.get(key)
            if len(data) != files[key]:
                raise IncompleteStoreError(f"{source.url}/{key}: read {len(data)} bytes, listed as {files[key]}")
            dst_io.put(dest(key), data)  # checks the written size
            return len(data)

        if not suffix:
            begin_root(staging, json.dumps(building, indent=2).encode())
        others = [k for k in files if k != "zarr.json"]
        # shard objects first (new names when beside an old store), then the shared groups and tokenizer
        others.sort(key=lambda k: (not k.startswith(f"{SPLITS_GROUP}/") or k.count("/") < 4, k))
        total = sum(files[p] for p in others)
        with tqdm(total=total, unit="B", unit_scale=True, desc=f"copying to {target.url}", disable=not progress) as bar:
            with concurrent.futures.ThreadPoolExecutor(max_workers=max_workers) as pool:
                for n in pool.map(copy_one, others):
                    bar.update(n)
        dst_io.put("zarr.json", root_meta)  # the commit: written last
        staging.keep_tokenizer = {k.split("/")[1] for k in files if k.startswith(f"{TOKENIZER_GROUP}/") and k.count("/") >= 2}
        commit_staging(staging, target)
    except BaseException:
        logger.info("copy failed; removing %s", staging.url)
        try:
            discard_staging(staging)
        except Exception:  # pragma: no cover - best effort
            logger.exception("could not remove %s", staging.url)
        raise
    copied = read_manifest(target)
    if copied.fingerprint != manifest.fingerprint:  # pragma: no cover - defensive
        raise IncompleteStoreError(f"copy at {target.url} has a different fingerprint than {source.url}")
    logger.info("copied %s -> %s (%d objects, %d bytes)", source.url, target.url, len(files), sum(files.values()))
    return copied

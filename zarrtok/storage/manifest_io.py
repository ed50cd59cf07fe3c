"""Reading a store's manifest (its root ``zarr.json``) through the object I/O layer."""

from __future__ import annotations

import json

from ..errors import IncompleteStoreError, StoreNotFoundError
from ..format import Manifest
from .location import Location


def read_root_metadata(location: Location, policy=None) -> dict:
    """The parsed root ``zarr.json`` of the Zarr v3 group at ``location``."""
    try:
        raw = location.objects(policy).get("zarr.json")
    except FileNotFoundError:
        raise StoreNotFoundError(f"no zarrtok store at {location.url} (no zarr.json)") from None
    try:
        meta = json.loads(raw)
    except ValueError as exc:
        raise IncompleteStoreError(f"{location.url}/zarr.json is not valid JSON: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("node_type") != "group" or meta.get("zarr_format") != 3:
        raise IncompleteStoreError(f"{location.url} is not a Zarr v3 group")
    return meta


def read_manifest(location: Location, policy=None) -> Manifest:
    """Read and validate the manifest of the store at ``location`` (raises if absent or incomplete)."""
    meta = read_root_metadata(location, policy)
    return Manifest.from_attributes(meta.get("attributes") or {}, location.url)

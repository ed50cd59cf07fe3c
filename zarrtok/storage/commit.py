"""Committing a store: where a writer stages its objects, and the step that makes them visible.

Locally a build or copy writes into a hidden sibling directory and renames it into place when
complete. Object stores cannot rename: the writer writes in place with the manifest's ``status``
set to ``building`` and rewrites it to ``complete`` as its last write (readers refuse anything
else). Build (:mod:`zarrtok.ingest.builder`) and copy (:mod:`zarrtok.storage.copying`) both use
this module.
"""

from __future__ import annotations

import os
import shutil
import uuid

from .location import Location


def staging_location(location: Location) -> Location:
    """Where a writer builds before committing: a hidden sibling directory locally, in place elsewhere."""
    if location.is_local:
        name = os.path.basename(location.local_path.rstrip(os.sep)) or "store"
        os.makedirs(os.path.dirname(location.local_path), exist_ok=True)
        return location.sibling(f".{name}.zarrtok-staging-{uuid.uuid4().hex[:12]}")
    return location  # object stores: in place, committed by the manifest status


def commit_staging(staging: Location, location: Location) -> None:
    """Move a complete staging directory into place (local); nothing to do for in-place writes."""
    if staging is location:
        return
    target = location.local_path
    old = None
    if os.path.isdir(target) and not os.listdir(target):
        os.rmdir(target)
    elif os.path.exists(target):
        old = os.path.join(os.path.dirname(target), f".{os.path.basename(target)}.zarrtok-old-{uuid.uuid4().hex[:12]}")
        os.rename(target, old)
    os.rename(staging.local_path, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)

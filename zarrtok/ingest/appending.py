"""Appending documents to a store: new shards beside the old ones, then one manifest write.

``zarrtok.append(store, ...)`` / ``TokenStore.append(...)`` / ``build(..., mode="append")`` /
``zarrtok append STORE ...`` run the same plan → tasks → commit path as a build
(:mod:`zarrtok.ingest.plan`, any executor, the CLI task array), with these differences:

* **What may change.** The tokenizer (checked by digest; by default the store's own is used), the
  EOS and special-token rules, the dtype and the chunk layout are the store's: an append that
  would encode differently is refused with the reason. Text columns may differ (each history
  entry records its source). Split rules apply to the appended source as to a build's
  (``validation_split=0`` by default): its documents go to the splits they name, new splits
  included.
* **Nothing existing is rewritten.** The tasks write new shards straight into the store (named
  ``s<ordinal>-<8 hex of the append's generation>``, so concurrent appends never collide) and
  their ledger next to it (``.<name>.zarrtok-build-<key>/``, also locally). No chunk of an old
  shard is touched; caches stay valid (they key on shard ids).
* **The commit** takes the store's writer lock (:mod:`zarrtok.storage.root_update`), re-reads the
  current manifest, and appends this plan's shards after whatever is there *now* — so two
  concurrent appends both land, in commit order — then replaces the root ``zarr.json`` in one
  step. The store gets a new ``generation``, a fingerprint derived from the previous one and the
  appended source's (``sha256({"base": ..., "append": ...})``), the new provenance ``sources``, and
  a ``history`` entry ``{"action": "append", "fingerprint": <source>, "store_fingerprint": ...,
  "base_generation": ...}``. If the store was *replaced* meanwhile (an overwrite: the generation
  this append started from is not in its history), the commit refuses
  (:class:`~zarrtok.storage.commit.CommitConflictError`) instead of grafting shards onto another
  store.
* **Readers that opened before** keep their manifest; every shard it names is untouched, so their
  view stays the old one, consistently (local readers re-check the manifest when the root changes
  and find their shards still there).
* **Reruns.** An append whose source is already in the store (its fingerprint is in the history)
  does nothing and returns the store (``allow_duplicate=True`` appends it again). An append killed
  before its commit is resumed by the same call (the plan key names the base generation); a failed
  one removes its shards and ledger.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import time
from typing import Any

from ..errors import StoreExistsError
from ..format import (
    ATTRIBUTE_KEY,
    SPLITS_GROUP,
    STATUS_COMPLETE,
    Manifest,
    ShardInfo,
    SplitInfo,
    new_id,
    shard_path,
)
from ..format.fingerprint import appended_fingerprint
from ..storage.commit import COMPLETE, CommitConflictError, Staging, inspect, writer_alive, writer_info
from ..storage.location import Location
from ..storage.manifest_io import read_manifest
from ..storage.root_update import LOCK_TIMEOUT_S, read_root, store_lock, write_root
from . import plan as _plan

logger = logging.getLogger(__name__)

WRITER = "writer.json"  # in the build area: who runs this append (a live one is never resumed twice)


def append(store: Any, dataset_name: Any = None, **kwargs: Any):
    """Append the documents of ``dataset_name`` (same source arguments as :func:`zarrtok.build`) to
    the complete store at ``store`` (a path, URL, :class:`~zarrtok.storage.location.Location` or
    :class:`~zarrtok.read.store.TokenStore`); return the store opened at its new generation.

    Store-defined options (tokenizer, EOS and special-token rules, chunk layout) follow the store;
    see the module docstring for what an append guarantees. ``allow_duplicate=True`` appends a
    source that is already in the store again.
    """
    from .builder import build

    if hasattr(store, "location") and hasattr(store, "manifest"):
        kwargs.setdefault("storage_options", dict(store.location.storage_options))
        store = store.location
    if "output" in kwargs:
        raise TypeError("append() takes the store as its first argument, not output=")
    for name in ("overwrite", "mode"):
        if name in kwargs:
            raise TypeError(f"append() does not take {name}=")
    return build(dataset_name, output=store, mode="append", **kwargs)


def open_base(location: Location, tokenizer: Any, tokenizer_name: Any):
    """The complete store an append extends and the tokenizer to encode with (the store's own, or
    the caller's when its digest matches the store's)."""
    from ..read.store import TokenStore

    existing = inspect(location)
    if existing.kind != COMPLETE:
        raise StoreExistsError(
            f"{location.url}: nothing to append to — "
            f"{'no store there' if existing.error is None else existing.error}; build it first")
    store = TokenStore(location, existing.manifest)
    sweep_stale(location, existing.manifest)
    if tokenizer is None and tokenizer_name is None:
        return store, store.tokenizer
    from .tokenization import load_tokenizer, tokenizer_digest

    tok = load_tokenizer(tokenizer, tokenizer_name)
    want = existing.manifest.tokenizer.get("sha256")
    if want and tokenizer_digest(tok) != want:
        raise ValueError(
            f"{location.url} was tokenized with a different tokenizer (sha256 {str(want)[:12]}, this one "
            f"{tokenizer_digest(tok)[:12]}): appending would mix two vocabularies; omit the tokenizer to use the store's")
    return store, tok


def check_rules(base: Manifest, *, use_eos_token: bool, eos_token_id: int | None, add_special_tokens: bool) -> None:
    """Refuse an append whose encoding rules differ from the store's."""
    cfg = base.config
    have = {"use_eos_token": bool(cfg.get("use_eos_token", base.eos_token_id is not None)),
            "eos_token_id": base.eos_token_id, "add_special_tokens": bool(cfg.get("add_special_tokens", True))}
    want = {"use_eos_token": bool(use_eos_token), "eos_token_id": eos_token_id if use_eos_token else None,
            "add_special_tokens": bool(add_special_tokens)}
    diff = [f"{k}={want[k]!r} (the store has {have[k]!r})" for k in have if have[k] != want[k]]
    if diff:
        raise ValueError(f"{base.config.get('dataset', 'the store')}: cannot append with {', '.join(diff)}: "
                         "every document of a store is encoded by the same rules")


def layout_from_base(base: Manifest, *, chunk_size: Any, checksum: Any, block_bytes: Any,
                     defaults: dict[str, Any]) -> tuple[int, Any, Any]:
    """The store's chunk layout; an explicit, different request is an error (defaults follow the store)."""
    have = {"chunk_size": int(base.chunk_size), "checksum": base.checksum, "block_bytes": base.config.get("block_bytes")}
    asked = {"chunk_size": chunk_size, "checksum": checksum, "block_bytes": block_bytes}
    for name, value in asked.items():
        if value is not None and value != defaults.get(name) and value != have[name]:
            raise ValueError(f"cannot append with {name}={value!r}: the store has {name}={have[name]!r}")
    return have["chunk_size"], have["checksum"], have["block_bytes"]


def already_in(base: Manifest, source_fingerprint: str) -> dict[str, Any] | None:
    """The history entry that added this very source (same fingerprint), if any."""
    if base.fingerprint == source_fingerprint:
        return {"action": "build", "generation": base.generation, "created": base.created}
    for entry in base.history:
        if entry.get("fingerprint") == source_fingerprint:
            return entry
    return None


def _copy(manifest: Manifest) -> Manifest:
    """An independent copy of a complete manifest (through its JSON, validated again)."""
    return Manifest.from_attributes({ATTRIBUTE_KEY: {**manifest.to_json(), "status": STATUS_COMPLETE}},
                                    manifest.generation or "manifest")


def plan_manifest(base: Manifest) -> Manifest:
    """The manifest an append plan carries: the store's, with a fresh generation."""
    m = _copy(base)
    m.generation = new_id()
    m.created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    return m


def staging_for(location: Location, generation: str) -> Staging:
    """Appends write in place (new shard names), locally too."""
    return Staging(location.url, dict(location.storage_options), target=location, separate=False,
                   replace=False, suffix="-" + generation[:8], owns=False)


def first_ordinals(base: Manifest) -> dict[str, int]:
    return {name: len(info.shards) for name, info in base.splits.items()}


def finish_plan(data: dict[str, Any], base: Manifest, source_fingerprint: str, identity: Any,
                encoder_name: str) -> None:
    """Mark plan ``data`` as an append onto ``base``."""
    data["mode"] = "append"
    data["base_generation"] = base.generation
    data["append_fingerprint"] = source_fingerprint
    entry = data["history_entry"]
    entry.update(action="append", fingerprint=source_fingerprint, source=identity, encoder=encoder_name)


def prepare_area(plan: _plan.BuildPlan) -> None:
    """Create the split groups the append adds, save the plan, and claim the build area."""
    import zarr

    root = zarr.open_group(plan.staging.zarr_store(read_only=False), mode="r+")
    for split in plan.splits:
        root.require_group(f"{SPLITS_GROUP}/{split}/shards")
    _plan.save_plan(plan)
    claim(plan.area)


def claim(area: Location) -> None:
    """Record this process as the append's writer (refused while a live one runs it)."""
    import json

    try:
        info = json.loads(_plan.get_object(area, WRITER))
        age = time.time() - float(info.get("created", 0) or 0)
    except FileNotFoundError:
        info, age = None, 0.0
    except ValueError:
        info, age = {}, 0.0
    if info and info.get("pid") != os.getpid() and writer_alive(info, age):
        raise StoreExistsError(f"{area.url}: this append is being run by pid {info.get('pid')} on "
                               f"{info.get('host')}; wait for it")
    _plan.put_object(area, WRITER, json.dumps(writer_info()).encode())


def resume(location: Location, key: str) -> _plan.BuildPlan | None:
    """The plan of an unfinished append with this key (its writer gone), claimed; or ``None``."""
    area = _plan.build_area(location, location.url, key, location.storage_options)
    try:
        plan = _plan.load_plan(area, Location(location.url, dict(location.storage_options)),
                               location.storage_options)
    except FileNotFoundError:
        return None
    plan.staging = staging_for(location, plan.data["manifest"]["generation"])
    claim(plan.area)
    logger.info("resuming the append %s into %s (%d of %d task(s) left)", key, location.url, len(plan.pending()),
                len(plan.tasks))
    return plan


def sweep_stale(location: Location, current: Manifest) -> list[str]:
    """Remove the shards and build areas of appends that can never commit: their writer is dead and
    either the store was replaced since they started (their base is not in its history) or they
    are older than :data:`~zarrtok.storage.commit.STALE_SECONDS` (a rerun would have resumed them).
    Run by every append before it plans; returns the keys swept."""
    import json

    from ..storage.commit import STALE_SECONDS

    lineage = {current.generation} | {str(h.get("generation")) for h in current.history}
    swept = []
    for key, area in _plan.sibling_areas(location):
        try:
            plan = _plan.load_plan(area, Location(location.url, dict(location.storage_options)),
                                   location.storage_options)
        except (FileNotFoundError, ValueError):
            continue
        if plan.data.get("mode") != "append":
            continue
        try:
            info = json.loads(_plan.get_object(area, WRITER))
        except (FileNotFoundError, ValueError):
            info = {}
        age = time.time() - float(info.get("created", 0) or 0)
        if writer_alive(info or None, age):
            continue
        if plan.data.get("base_generation") in lineage and age < STALE_SECONDS:
            continue  # resumable by a rerun of the same append
        logger.warning("removing the unfinished append %s into %s (writer gone%s)", key, location.url,
                       "" if plan.data.get("base_generation") in lineage else ", store replaced since")
        discard(plan)
        swept.append(key)
    return swept


def commit(plan: _plan.BuildPlan, *, lock_timeout: float = LOCK_TIMEOUT_S, records: Any = None):
    """Commit a finished append (see the module docstring); return the store opened. ``records``:
    ledger records the executor already returned."""
    from ..read.store import TokenStore

    location = Location(plan.data["target"], dict(plan.storage_options))
    records = _plan.ledger_records(plan, records)
    missing = [t["index"] for t in plan.tasks if t["index"] not in records]
    if missing:
        raise RuntimeError(f"{len(missing)} task(s) of append {plan.key} are not finished: {missing[:10]}")
    with store_lock(location, lock_timeout):
        root = read_root(location)
        current = Manifest.from_attributes(root.get("attributes") or {}, location.url)
        lineage = {current.generation} | {str(h.get("generation")) for h in current.history}
        if plan.data["base_generation"] not in lineage:
            raise CommitConflictError(
                f"{location.url} was replaced by another build since this append started (generation "
                f"{plan.data['base_generation'][:12]} is not in its history): nothing appended")
        _check_shards_present(location, plan)
        manifest = appended_manifest(current, plan, records)
        root.setdefault("attributes", {})[ATTRIBUTE_KEY] = manifest.to_json()
        write_root(location, root)
    _plan.remove_area(plan.area)
    store = TokenStore(location, read_manifest(location))
    logger.info("appended %d shard(s) to %r", len(plan.tasks), store)
    return store


def appended_manifest(current: Manifest, plan: _plan.BuildPlan, records: dict[int, dict[str, Any]]) -> Manifest:
    """``current`` with the plan's shards after its own (provenance re-indexed onto its sources)."""
    m = _copy(current)
    offset = len(m.sources)
    for split in plan.splits:
        info = m.splits.setdefault(split, SplitInfo())
        for task in plan.tasks_of(split):
            record = dict(records[task["index"]])
            record["provenance"] = [[int(s) + offset, int(r), int(c)] for s, r, c in record.get("provenance") or []]
            info.shards.append(ShardInfo.from_json(record))
    m.sources = list(m.sources) + list(plan.data["sources"])
    previous = m.fingerprint
    m.fingerprint = appended_fingerprint(previous, plan.data["append_fingerprint"])
    m.generation = plan.data["manifest"]["generation"]
    m.created = plan.data["manifest"]["created"]
    m.history = list(m.history) + [{**plan.data["history_entry"], "store_fingerprint": m.fingerprint,
                                    "base_generation": current.generation, "base_fingerprint": previous,
                                    "committed": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}]
    m.status = STATUS_COMPLETE
    return m


def _check_shards_present(location: Location, plan: _plan.BuildPlan) -> None:
    """Every shard the append wrote is still there (one listing per split)."""
    for split in plan.splits:
        prefix = f"{SPLITS_GROUP}/{split}/shards"
        if location.is_local:
            try:
                present = set(os.listdir(os.path.join(location.local_path, prefix)))
            except FileNotFoundError:
                present = set()
        else:
            try:
                present = {k.split("/", 1)[0] for k in location.child(prefix).objects().find()}
            except FileNotFoundError:
                present = set()
        lost = [t["name"] for t in plan.tasks_of(split) if t["name"] not in present]
        if lost:
            raise CommitConflictError(f"{location.url}: shard(s) {lost[:5]} of this append disappeared before its "
                                      "commit (swept by another writer?): nothing appended")


def discard(plan: _plan.BuildPlan) -> None:
    """Undo a failed append: remove its shards (never one the manifest names) and its build area."""
    location = Location(plan.data["target"], dict(plan.storage_options))
    try:
        named = {(s, sh.name) for s, info in read_manifest(location).splits.items() for sh in info.shards}
    except Exception:  # the store is unreadable now: touch nothing of it
        logger.warning("not cleaning the append's shards in %s: its manifest cannot be read", location.url)
        return
    for task in plan.tasks:
        if (task["split"], task["name"]) in named:
            continue
        path = shard_path(task["split"], task["name"])
        try:
            _plan._remove_partial(location, path)
        except Exception:  # pragma: no cover - best effort
            logger.exception("could not remove %s of a failed append", path)
    _plan.remove_area(plan.area)

"""The build as a plan of shard tasks: plan once, run the tasks anywhere, commit once.

A :class:`BuildPlan` is plain JSON (no pickle): the ``building`` manifest (fingerprint, dtype,
config, generation), the tokenizer as ``tokenizer.json`` text, which encoder to use, how to read
the documents, the provenance sources, and an ordered list of **shard tasks** per split. Task ``k``
says "shard ``name`` of split ``s`` = these documents": JSON Lines byte ranges aligned to line
starts (the direct reader's blocks, :mod:`zarrtok.ingest.jsonl`, optionally narrowed to some of
their rows) or row ranges of a ``datasets`` split. Shard boundaries are decided here, from the
plan alone (estimated tokens per row, measured on the head of every split), never from worker
count or timing, so every executor writes the same bytes.

**The build area** holds the plan and the **ledger**: ``plan.json`` and one small object per
finished task, ``done/<k>.json`` (the task's shard record), never a file two writers update.
Locally it is ``<staging>/.zarrtok-build/`` (inside the hidden staging directory of
:mod:`zarrtok.storage.commit`, removed just before the commit's rename); on object stores, where
the build writes in place, it is the sibling prefix ``<parent>/.<name>.zarrtok-build-<key>/``.

**Tasks** (:func:`run_task`) encode their documents and write their own shard straight into the
staging store, then write their ledger record; a task whose record exists returns it (idempotent);
a task that finds a partial shard of an earlier attempt deletes it first. **The commit**
(:func:`commit_plan`) reads the ledger and writes the manifest once: no data is copied or renamed
per shard.

**Resume**: the plan key is a digest of the fingerprint, the output and the layout options. A
rerun of the same build finds the staging directory of a dead driver holding a plan with that key
(:func:`adopt_staging`), claims it, and runs only the tasks without a ledger record.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import socket
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..format import ATTRIBUTE_KEY, STATUS_COMPLETE, Manifest, ShardInfo, SplitInfo, shard_name, shard_path
from ..storage.location import Location, as_location

logger = logging.getLogger(__name__)

PLAN_VERSION = 1
BUILD_AREA = ".zarrtok-build"
PLAN_FILE = "plan.json"
LEDGER = "done"


# -- the plan -----------------------------------------------------------------------------------------
@dataclass
class BuildPlan:
    """A build as data: everything a worker needs, plus where to write. ``data`` is the JSON."""

    data: dict[str, Any]
    staging: Location  # where shards are written (local staging directory, or the remote target)
    storage_options: dict[str, Any]

    @property
    def key(self) -> str:
        return self.data["key"]

    @property
    def tasks(self) -> list[dict[str, Any]]:
        return self.data["tasks"]

    @property
    def splits(self) -> list[str]:
        return self.data["splits"]

    @property
    def fingerprint(self) -> str:
        return self.data["manifest"]["fingerprint"]

    def tasks_of(self, split: str) -> list[dict[str, Any]]:
        return [t for t in self.tasks if t["split"] == split]

    @property
    def area(self) -> Location:
        return build_area(self.staging, self.data["target"], self.key, self.storage_options)

    def pending(self) -> list[int]:
        """Indices of the tasks without a ledger record."""
        done = set(ledger_indices(self.area))
        return [t["index"] for t in self.tasks if t["index"] not in done]

    def to_json(self) -> str:
        return json.dumps(self.data, sort_keys=True)

    def __repr__(self) -> str:
        return (f"BuildPlan(key={self.key}, fingerprint={self.fingerprint[:12]}, tasks={len(self.tasks)}, "
                f"splits={self.splits}, staging={self.staging.url})")


def plan_key(fingerprint: str, target: str, layout: dict[str, Any]) -> str:
    """12 hex digits naming a build (resume finds its staging by this)."""
    blob = json.dumps({"fingerprint": fingerprint, "target": target, "layout": layout}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def shard_id(generation: str, index: int) -> str:
    """A shard's id: unique per plan (its generation is random), the same on every retry."""
    return hashlib.sha256(f"{generation}:{index}".encode()).hexdigest()[:32]


def build_area(staging: Location, target_url: str, key: str, storage_options: dict[str, Any] | None = None) -> Location:
    """Where the plan and the ledger live (see the module docstring): inside a local staging
    directory; next to the store when the tasks write into the store itself (object stores, appends)."""
    target = as_location(target_url, storage_options)
    if staging.is_local and not (target.is_local and os.path.abspath(staging.local_path) == os.path.abspath(target.local_path)):
        return Location(os.path.join(staging.local_path, BUILD_AREA), storage_options or {})
    name = target.path.rstrip("/").rsplit("/", 1)[-1]
    return target.sibling(f".{name}.zarrtok-build-{key}")


# -- small objects: local atomic files or object PUTs ------------------------------------------------
def put_object(area: Location, key: str, data: bytes) -> None:
    if area.is_local:
        path = os.path.join(area.local_path, key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}-{time.monotonic_ns()}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return
    area.objects().put(key, data)


def get_object(area: Location, key: str) -> bytes:
    if area.is_local:
        with open(os.path.join(area.local_path, key), "rb") as f:
            return f.read()
    return area.objects().get(key)


def _listed_ledger(area: Location) -> dict[int, tuple[str, int]]:
    """Object stores: task index -> (key, size) of every ledger record, from one listing."""
    try:
        listing = area.objects().find(LEDGER)
    except FileNotFoundError:
        return {}
    return {int(k.rsplit("/", 1)[-1][:-5]): (k, size) for k, size in listing.items()
            if re.fullmatch(rf"{LEDGER}/\d+\.json", k)}


def ledger_indices(area: Location) -> list[int]:
    """Indices of the finished tasks (one ``done/<k>.json`` object each)."""
    if not area.is_local:
        return sorted(_listed_ledger(area))
    try:
        names = os.listdir(os.path.join(area.local_path, LEDGER))
    except FileNotFoundError:
        return []
    return sorted(int(n[:-5]) for n in names if re.fullmatch(r"\d+\.json", n))


def read_ledger(area: Location) -> dict[int, dict[str, Any]]:
    """Every finished task's record, by task index. On object stores: one listing, then every record
    in one concurrent round (one GET at a time took 19.6 s for 940 records on the loopback S3,
    benchmarks/build_scale.py)."""
    if area.is_local:
        return {k: json.loads(get_object(area, f"{LEDGER}/{k}.json")) for k in ledger_indices(area)}
    listed = _listed_ledger(area)
    indices = sorted(listed)
    if not indices:
        return {}
    keys = [listed[k][0] for k in indices]
    blobs = area.objects().get_ranges(keys, [0] * len(keys), [listed[k][1] for k in indices])
    return {k: json.loads(b) for k, b in zip(indices, blobs)}


def ledger_records(plan: BuildPlan, known: Iterable[dict[str, Any]] | None = None) -> dict[int, dict[str, Any]]:
    """The records of the plan's finished tasks: the ones the executor returned to this driver
    (``known``: no request at all when they cover every task — the commit of a driver-run build),
    the rest read from the ledger (a resumed build, the CLI's ``commit``)."""
    records = {int(r["index"]): r for r in known or ()}
    if all(t["index"] in records for t in plan.tasks):
        return records
    return {**read_ledger(plan.area), **records}


def save_plan(plan: BuildPlan) -> None:
    put_object(plan.area, PLAN_FILE, plan.to_json().encode())


def load_plan(area: Location, staging: Location, storage_options: dict[str, Any] | None = None) -> BuildPlan:
    data = json.loads(get_object(area, PLAN_FILE))
    if data.get("plan_version") != PLAN_VERSION:
        raise ValueError(f"{area.url}: plan version {data.get('plan_version')} is not {PLAN_VERSION}")
    return BuildPlan(data, staging, dict(storage_options or {}))


def remove_area(area: Location) -> None:
    if area.is_local:
        import shutil

        shutil.rmtree(area.local_path, ignore_errors=True)
    else:
        try:
            area.objects().remove("")
        except FileNotFoundError:
            pass


# -- finding a plan by its store ---------------------------------------------------------------------
_STAGING = re.compile(r"^\.(?P<name>.+)\.zarrtok-staging-(?P<token>[0-9a-f]{12})$")


def local_stagings(target: Location) -> list[tuple[str, str]]:
    """``(path, token)`` of every staging directory next to the local path ``target`` holding a plan."""
    path = target.local_path
    parent, name = os.path.dirname(path), os.path.basename(path.rstrip(os.sep))
    out = []
    try:
        entries = os.listdir(parent)
    except FileNotFoundError:
        return []
    for entry in sorted(entries):
        m = _STAGING.match(entry)
        if m and m.group("name") == name and os.path.isfile(os.path.join(parent, entry, BUILD_AREA, PLAN_FILE)):
            out.append((os.path.join(parent, entry), m.group("token")))
    return out


def sibling_areas(target: Location) -> list[tuple[str, Location]]:
    """``(key, area)`` of every build area next to the store (remote builds, and appends, which
    write into the store itself): ``<parent>/.<name>.zarrtok-build-<key>``."""
    name = target.path.rstrip("/").rsplit("/", 1)[-1]
    parent = target.sibling("")
    try:
        listing = parent.fs.ls(parent.path.rstrip("/"), detail=False)
    except FileNotFoundError:
        return []
    out = []
    for entry in sorted(listing):
        base = entry.rstrip("/").rsplit("/", 1)[-1]
        m = re.fullmatch(rf"\.{re.escape(name)}\.zarrtok-build-([0-9a-f]{{12}})", base)
        if m:
            out.append((m.group(1), target.sibling(base)))
    return out


def find_plan(store: str | os.PathLike | Location, storage_options: dict[str, Any] | None = None,
              key: str | None = None) -> BuildPlan:
    """The plan of the (unique, or ``key``) unfinished build into ``store``."""
    target = as_location(store, storage_options)
    plans = []
    if target.is_local:
        for path, _token in local_stagings(target):
            area = Location(os.path.join(path, BUILD_AREA))
            plan = load_plan(area, Location(path, target.storage_options), target.storage_options)
            if key is None or plan.key == key:
                plans.append(plan)
    for area_key, area in sibling_areas(target):
        if key is None or area_key == key:
            try:
                plans.append(load_plan(area, Location(target.url, target.storage_options), target.storage_options))
            except FileNotFoundError:
                continue
    if not plans:
        raise FileNotFoundError(f"no unfinished build plan for {target.url} (run `zarrtok build ... --plan-only`)")
    if len(plans) > 1:
        raise ValueError(f"several build plans for {target.url}: {[p.key for p in plans]}; pass the plan key")
    return plans[0]


def adopt_staging(target: Location, key: str, replace: bool):
    """A resumable local staging directory of this build (plan ``key``) whose writer is gone, claimed
    for this process: a :class:`~zarrtok.storage.commit.Staging`, or ``None``."""
    from ..storage import commit

    if not target.is_local:
        return None
    for path, token in local_stagings(target):
        try:
            with open(os.path.join(path, BUILD_AREA, PLAN_FILE)) as f:
                if json.load(f).get("key") != key:
                    continue
        except (OSError, ValueError):
            continue
        writer = commit._hidden(target.local_path, "writer", token)
        info = None
        try:
            with open(writer) as f:
                info = json.load(f)
            age = time.time() - os.lstat(writer).st_mtime
        except (OSError, ValueError):
            age = 0.0
        if info is not None and info.get("pid") is not None and commit.writer_alive(info, age):
            continue  # a live build is running this plan: leave it alone
        try:
            os.unlink(writer)
        except FileNotFoundError:
            pass
        try:
            fd = os.open(writer, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            continue  # another process claimed it first
        with os.fdopen(fd, "w") as f:
            json.dump(commit.writer_info(store=target.local_path, resumed=key), f)
        logger.info("resuming the build %s in %s", key, path)
        return commit.Staging(path, target.storage_options, target=target, separate=True, replace=replace, token=token)
    return None


def adopt_remote(target: Location, key: str):
    """The object-store counterpart of :func:`adopt_staging`: the build area of this plan next to
    ``target`` whose build died before its commit, with the store's lock taken (a dead writer's lock
    on this host is taken over; another host's only after
    :data:`~zarrtok.storage.commit.STALE_SECONDS`): a
    :class:`~zarrtok.storage.commit.Staging` writing in place, or ``None``. A plan whose store was
    changed since by another writer can never commit: its area is removed."""
    from ..storage import commit

    if target.is_local:
        return None
    area = build_area(target, target.url, key, target.storage_options)
    try:
        data = json.loads(get_object(area, PLAN_FILE))
    except (FileNotFoundError, ValueError):
        return None
    if data.get("mode") == "append" or data.get("key") != key:
        return None
    lock = commit.RemoteLock(target).acquire()
    try:
        existing = commit.inspect(target)
        ours = data["manifest"]["generation"]
        beside = bool(data.get("suffix"))
        if not ((existing.kind == commit.INCOMPLETE and existing.generation == ours)
                or (beside and existing.kind == commit.COMPLETE)):
            logger.warning("the unfinished build %s into %s cannot be resumed (the store changed since): "
                           "removing its build area", key, target.url)
            remove_area(area)
            lock.release()
            return None
    except BaseException:
        lock.release()
        raise
    logger.info("resuming the build %s into %s", key, target.url)
    return commit.Staging(target.url, target.storage_options, target=target, replace=bool(data.get("replace")),
                          suffix=data.get("suffix", ""), lock=lock, owns=True, existing=existing,
                          token=lock.token[:12])


def sweep_dead_areas(target: Location, keep: str | None = None) -> list[str]:
    """Remove the build areas next to an object-store ``target`` whose plan can never commit: the
    store's root is no longer that build's own ``building`` root (another build replaced or cleared
    it), and the plan did not write beside a complete store. Their shards were cleared or are swept
    by the next commit; appends are swept by :func:`zarrtok.ingest.appending.sweep_stale`. Returns
    the keys removed."""
    from ..storage import commit

    if target.is_local:
        return []  # local areas live inside staging directories: commit.sweep_orphans removes those
    areas = [(k, a) for k, a in sibling_areas(target) if k != keep]
    if not areas:
        return []
    try:
        existing = commit.inspect(target)
    except commit.ForeignDataError:
        return []
    removed = []
    for key, area in areas:
        try:
            data = json.loads(get_object(area, PLAN_FILE))
        except (FileNotFoundError, ValueError):
            data = {}
        if data.get("mode") == "append":
            continue
        ours = (data.get("manifest") or {}).get("generation")
        if (existing.kind == commit.INCOMPLETE and existing.generation == ours) or \
                (data.get("suffix") and existing.kind == commit.COMPLETE):
            continue  # resumable (or running)
        logger.info("removing the build area %s of a build into %s that can no longer commit", area.url, target.url)
        remove_area(area)
        removed.append(key)
    return removed


def release_writer(staging: Any) -> None:
    """Mark a local staging directory as resumable by anyone: its writer record says no pid (kept for
    :data:`~zarrtok.storage.commit.STALE_SECONDS`, then swept like any orphan)."""
    from ..storage import commit

    if getattr(staging, "separate", False):
        writer = commit._hidden(staging.target.local_path, "writer", staging.token)
        with open(writer, "w") as f:
            json.dump({"host": socket.gethostname(), "created": time.time(), "plan_only": True}, f)


# -- cutting splits into shard tasks ---------------------------------------------------------------------
_ROW_UNITS = ("jsonl", "parquet")  # units of a file's rows: a count and an optional row selection


def unit_rows(unit: dict[str, Any]) -> int:
    if unit["kind"] in _ROW_UNITS:
        return len(unit["rows"]) if unit["rows"] is not None else unit["num_rows"]
    return unit["stop"] - unit["start"]


def slice_unit(unit: dict[str, Any], a: int, b: int) -> dict[str, Any]:
    """Rows ``[a, b)`` of a unit (positions among its rows)."""
    if unit["kind"] in _ROW_UNITS:
        rows = unit["rows"] if unit["rows"] is not None else list(range(unit["num_rows"]))
        part = rows[a:b]
        return {**unit, "rows": None if (a == 0 and b >= unit_rows(unit) and unit["rows"] is None) else part}
    return {**unit, "start": unit["start"] + a, "stop": unit["start"] + b}


def cut_shards(units: list[dict[str, Any]], estimates: list[float], shard_size: int | None) -> list[list[dict[str, Any]]]:
    """Group consecutive units into shards of about ``shard_size`` estimated tokens (a shard closes
    once it reaches it, as the sequential build did); units are split by rows where needed."""
    if shard_size is None:
        return [units]
    shards: list[list[dict[str, Any]]] = []
    current: list[dict[str, Any]] = []
    filled = 0.0
    for unit, est in zip(units, estimates):
        rows = unit_rows(unit)
        per_row = est / rows if rows else 0.0
        start = 0
        while start < rows:
            need = shard_size - filled
            take = rows - start if per_row <= 0 else min(rows - start, max(1, math.ceil(need / per_row)))
            current.append(slice_unit(unit, start, start + take) if (start, take) != (0, rows) else unit)
            filled += take * per_row
            start += take
            if filled >= shard_size:
                shards.append(current)
                current, filled = [], 0.0
    if current or not shards:
        shards.append(current)
    return shards


def provenance_runs(table: np.ndarray) -> list[list[int]]:
    """Runs ``[source, first_row, count]`` of consecutive ``(source, row)`` rows of ``table`` (shape
    ``(n, 2)``): a run breaks where the source changes or the row is not the previous row + 1.
    Vectorised: the plan computes one per shard over every document of the split."""
    table = np.asarray(table, dtype=np.int64).reshape(-1, 2)
    if not len(table):
        return []
    src, row = table[:, 0], table[:, 1]
    breaks = np.flatnonzero((src[1:] != src[:-1]) | (row[1:] != row[:-1] + 1)) + 1
    starts = np.concatenate(([0], breaks))
    counts = np.diff(np.concatenate((starts, [len(table)])))
    return [[int(s), int(r), int(c)] for s, r, c in zip(src[starts], row[starts], counts)]


# -- workers: reading, encoding, writing one shard -----------------------------------------------------
#: per process: plan key -> (plan data, reader, encoder); the driver seeds it for in-process / fork runs.
#: Long-lived workers (Dask) run build after build: only the newest CONTEXT_PLANS plans are kept (one
#: cached plan per build grew a worker's private memory 174 -> 198 -> 221 MB over three builds).
_CONTEXT: dict[str, tuple[dict[str, Any], Any, Any]] = {}
CONTEXT_PLANS = 2


def _remember(key: str, ctx: tuple[dict[str, Any], Any, Any]) -> None:
    _CONTEXT.pop(key, None)
    _CONTEXT[key] = ctx
    while len(_CONTEXT) > CONTEXT_PLANS:
        _CONTEXT.pop(next(iter(_CONTEXT)))


def make_encoder(data: dict[str, Any]):
    """The document encoder a plan names (no verification: the driver verified it)."""
    spec = data["encoder"]
    kwargs = dict(eos_token_id=spec["eos_token_id"], add_special_tokens=spec["add_special_tokens"], dtype=spec["dtype"])
    if spec["kind"] == "tiktoken":
        from .fast_encoding import TiktokenDocumentEncoder

        return TiktokenDocumentEncoder(data["tokenizer_json"], **kwargs)
    if spec["kind"] == "gigatoken":
        from .gigatoken_encoding import GigatokenDocumentEncoder

        return GigatokenDocumentEncoder(data["tokenizer_json"], **kwargs)
    from .tokenization import DocumentEncoder

    return DocumentEncoder(data["tokenizer_json"], **kwargs)


def encoder_kind(encoder: Any) -> str:
    try:
        from .gigatoken_encoding import GigatokenDocumentEncoder

        if isinstance(encoder, GigatokenDocumentEncoder):
            return "gigatoken"
    except Exception:  # pragma: no cover - gigatoken not importable
        pass
    from .fast_encoding import TiktokenDocumentEncoder

    return "tiktoken" if isinstance(encoder, TiktokenDocumentEncoder) else "hf"


class UnitReader:
    """Reads the documents of a plan's units: JSON Lines blocks and Parquet row groups directly (with
    the driver's reader when this process has it, which holds the source's full storage options;
    else one built from the plan, whose options carry no credentials: see
    :mod:`zarrtok.ingest.file_sources`), ``datasets`` rows from the driver's documents (in-process /
    forked pool) or from ``load_dataset`` run again on the worker."""

    def __init__(self, data: dict[str, Any], documents: Any = None):
        self.spec = data["reader"]
        self.documents = documents
        self._direct = None

    def _reader(self, kind: str):
        if self._direct is None:
            if getattr(self.documents, "reader", None) == f"zarrtok-{kind}":  # the driver's reader (fork)
                self._direct = self.documents
            elif kind == "parquet":
                from .parquet import ParquetDocuments

                self._direct = ParquetDocuments({}, {}, list(self.spec["columns"]), self.spec["separator"],
                                                self.spec.get("storage_options"))
            else:
                from .jsonl import JsonLinesDocuments

                self._direct = JsonLinesDocuments({}, {}, list(self.spec["columns"]), self.spec["separator"],
                                                  self.spec.get("storage_options"))
        return self._direct

    def texts(self, unit: dict[str, Any]) -> list[str]:
        rows = None if unit.get("rows") is None else np.asarray(unit["rows"], dtype=np.int64)
        if unit["kind"] == "jsonl":
            from .jsonl import Block

            block = Block(unit["path"], unit["start"], unit["end"], unit["first_line"], unit["first_row"],
                          unit["num_rows"], unit.get("compression"))
            return self._reader("jsonl").texts((block, rows))
        if unit["kind"] == "parquet":
            from .parquet import RowGroup

            group = RowGroup(unit["path"], unit["row_group"], unit["first_row"], unit["num_rows"], unit["bytes"])
            return self._reader("parquet").texts((group, rows))
        if unit["kind"] == "iterable":
            from .iterable import IterableDocuments, from_spec

            if not isinstance(self.documents, IterableDocuments):
                self.documents = from_spec(self.spec)
            return self.documents.texts((unit["split"], unit["shard"], unit["start"], unit["stop"]))
        if self.documents is None:
            self.documents = _load_dataset_documents(self.spec)
        return self.documents.texts((unit["split"], unit["start"], unit["stop"]))


def _load_dataset_documents(spec: dict[str, Any]):
    from .sources import DatasetDocuments, apply_split_rules, load_source

    load = spec.get("load")
    if load is None:
        raise RuntimeError(
            "this plan reads an in-memory datasets.Dataset: run it in-process or on the local process pool "
            "(other executors need a load_dataset source they can load themselves)")
    source = load_source(load["path"], dataset_config_name=load["name"], data_dir=load["data_dir"],
                         data_files=load["data_files"], revision=load["revision"],
                         load_dataset_kwargs=load["kwargs"])
    split_datasets = apply_split_rules(source, **spec["rules"])
    return DatasetDocuments(split_datasets, list(spec["columns"]), spec["separator"])


def _context(data: dict[str, Any]) -> tuple[dict[str, Any], Any, Any]:
    ctx = _CONTEXT.get(data["key"])
    if ctx is None:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        ctx = (data, UnitReader(data), make_encoder(data))
        _remember(data["key"], ctx)
    return ctx


def seed_context(data: dict[str, Any], documents: Any, encoder: Any) -> None:
    """Let this process (and processes forked from it) run the plan's tasks with these objects."""
    _remember(data["key"], (data, UnitReader(data, documents), encoder))


def encode_unit(key: str, unit: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Encode one unit with this process's context for plan ``key`` (pool workers)."""
    data, reader, encoder = _CONTEXT[key]
    return encoder.encode(reader.texts(unit))


def run_task(data: dict[str, Any], index: int, staging: Location, *, encoded: Iterable | None = None) -> dict[str, Any]:
    """Encode task ``index`` of plan ``data``, write its shard into ``staging`` and its ledger record;
    return the record. Idempotent: a task already in the ledger returns its record."""
    from . import builder  # the shard-closing hook lives there
    from .writer import ShardWriter

    area = build_area(staging, data["target"], data["key"], staging.storage_options)
    try:
        return json.loads(get_object(area, f"{LEDGER}/{index}.json"))
    except FileNotFoundError:
        pass
    task = data["tasks"][index]
    _, reader, encoder = _context(data)
    m = data["manifest"]
    import zarr

    root = zarr.open_group(staging.zarr_store(read_only=False), mode="r+")
    path = shard_path(task["split"], task["name"])
    _remove_partial(staging, path)
    group = root.create_group(path)
    writer = ShardWriter(group, dtype=np.dtype(m["dtype"]), chunk_size=m["chunk_size"], checksum=m["checksum"],
                         block_bytes=m["config"].get("block_bytes"))
    if encoded is None:
        encoded = (encoder.encode(reader.texts(u)) for u in task["units"])
    for tokens, lengths in encoded:
        writer.add(tokens, lengths)
    shard = ShardInfo(task["name"], 0, 0, id=task["id"], checksum=m["checksum"])
    builder._close_shard(shard, writer)
    if shard.num_documents != task["num_documents"]:
        raise RuntimeError(f"task {index}: wrote {shard.num_documents} documents, the plan says {task['num_documents']}")
    record = {**shard.to_json(), "index": index, "split": task["split"], "provenance": task["provenance"],
              "finished": time.time(), "host": socket.gethostname(), "pid": os.getpid()}
    put_object(area, f"{LEDGER}/{index}.json", json.dumps(record).encode())
    return record


def _remove_partial(staging: Location, path: str) -> None:
    if staging.is_local:
        import shutil

        full = os.path.join(staging.local_path, path)
        if os.path.exists(full):
            shutil.rmtree(full)
    else:
        io = staging.objects()
        try:
            if io.find(path):
                io.remove(path)
        except FileNotFoundError:
            pass


def run_task_from_area(area_url: str, staging_url: str, index: int,
                       storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The pickle-free task entry point for remote executors (Dask, any ``concurrent.futures``
    executor, the CLI): plain strings in, a plain dict out; the plan is read from the build area."""
    area = Location(area_url, dict(storage_options or {}))
    staging = Location(staging_url, dict(storage_options or {}))
    key = area_url.rstrip("/").rsplit("-", 1)[-1]
    data = _CONTEXT[key][0] if key in _CONTEXT else json.loads(get_object(area, PLAN_FILE))
    return run_task(data, index, staging)


# -- commit --------------------------------------------------------------------------------------------
def assemble_manifest(plan: BuildPlan, records: dict[int, dict[str, Any]]) -> Manifest:
    """The complete manifest from the plan and the ledger (every task must be finished)."""
    missing = [t["index"] for t in plan.tasks if t["index"] not in records]
    if missing:
        raise RuntimeError(f"{len(missing)} task(s) of plan {plan.key} are not finished: {missing[:10]}")
    attrs = {ATTRIBUTE_KEY: {**plan.data["manifest"], "status": STATUS_COMPLETE}}
    manifest = Manifest.from_attributes(attrs, plan.data["target"]) if plan.data["manifest"].get("splits") \
        else _manifest_from(plan.data["manifest"])
    base = {name: SplitInfo(list(info.shards)) for name, info in manifest.splits.items()}
    for split in plan.splits:
        info = base.setdefault(split, SplitInfo())
        for task in plan.tasks_of(split):
            info.shards.append(ShardInfo.from_json(records[task["index"]]))
    manifest.splits = base
    manifest.sources = list(plan.data["sources"])
    manifest.history = list(plan.data["manifest"].get("history") or []) + [plan.data["history_entry"]]
    manifest.status = STATUS_COMPLETE
    return manifest


def _manifest_from(d: dict[str, Any]) -> Manifest:
    return Manifest(fingerprint=d["fingerprint"], dtype=d["dtype"], chunk_size=d["chunk_size"], checksum=d["checksum"],
                    splits={}, tokenizer=d["tokenizer"], config=d["config"], encoder=d["encoder"],
                    eos_token_id=d["eos_token_id"], format_version=d["format_version"],
                    zarrtok_version=d["zarrtok_version"], created=d["created"], generation=d["generation"])


def write_root_manifest(staging: Location, manifest: Manifest) -> None:
    """The commit point's write: the root ``zarr.json`` with the complete manifest (one object)."""
    import zarr

    root = zarr.open_group(staging.zarr_store(read_only=False), mode="r+")
    root.attrs[ATTRIBUTE_KEY] = manifest.to_json()


def task_units_summary(tasks: Iterator[dict[str, Any]]) -> int:
    return sum(len(t["units"]) for t in tasks)


__all__ = ["BuildPlan", "find_plan", "run_task", "run_task_from_area", "shard_name"]

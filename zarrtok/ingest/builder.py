"""Building a store: source → parallel tokenization → shard writers → commit.

``build`` is crash-safe: locally it writes into a hidden staging directory next to ``output`` and
renames it into place only when complete; elsewhere (object stores, which cannot rename) it writes
in place with the manifest's ``status`` set to ``building`` and flips it to ``complete`` as the last
write. ``open`` refuses anything not complete, so a failed or interrupted build is never mistaken
for a store.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import __version__
from ..errors import StoreExistsError, ZarrtokError
from ..format import (
    ATTRIBUTE_KEY,
    DEFAULT_BLOCK_BYTES,
    DEFAULT_CHUNK_BYTES,
    FORMAT_VERSION,
    SPLITS_GROUP,
    TOKENIZER_GROUP,
    Manifest,
    ShardInfo,
    check_node_name,
    compute_fingerprint,
    new_id,
    shard_name,
)
from ..read.store import TokenStore
from ..storage.commit import (
    COMPLETE,
    EMPTY,
    CommitConflictError,
    Existing,
    commit_staging,
    discard_staging,
    inspect,
    open_staging_root,
    recover,
    shard_suffix,
    staging_location,
    sweep_orphans,
)
from ..storage.location import Location, as_location
from ..storage.manifest_io import read_manifest
from . import appending
from . import plan as _plan
from .executors import run_plan
from .jsonl import JsonLinesDocuments, plan_json_lines
from .plan import BuildPlan
from .sources import (
    DatasetDocuments,
    _jsonable,
    apply_split_rules,
    load_source,
    resolve_columns,
    source_identity,
    split_rules,
)
from .tokenization import (
    DocumentEncoder,
    backend_json,
    choose_dtype,
    load_tokenizer,
    tokenizer_digest,
    tokenizer_files,
    tokenizer_summary,
)
from .writer import ShardWriter, compressors_for

logger = logging.getLogger(__name__)

ENCODER_NAME = "hf-tokenizers"


def build(
    dataset_name: Any = None,
    *,
    output: str | os.PathLike | Location,
    dataset_config_name: str | None = None,
    data_dir: str | None = None,
    data_files: Any = None,
    revision: str | None = None,
    tokenizer: Any = None,
    tokenizer_name: str | os.PathLike | None = None,
    mapping_column_name: str | Sequence[str] | None = None,
    columns: str | Sequence[str] | None = None,
    column_separator: str = "\n\n",
    validation_split: float | None = 0.0,
    test_split: float | None = 0.0,
    seed: int = 42,
    shuffle: bool = False,
    splits: Sequence[str] | None = None,
    num_workers: int = 1,
    use_eos_token: bool = True,
    add_special_tokens: bool = True,
    chunk_size: int | None = None,
    shard_size: int | None = None,
    checksum: str | None = "crc32c",
    block_bytes: int | None = DEFAULT_BLOCK_BYTES,
    overwrite: bool | str = False,
    storage_options: dict[str, Any] | None = None,
    batch_size: int = 1000,
    progress: bool = True,
    start_method: str | None = None,
    load_dataset_kwargs: dict[str, Any] | None = None,
    encoder: str = "auto",
    executor: Any = None,
    scheduler: Any = None,
    mode: str = "create",
    allow_duplicate: bool = False,
) -> TokenStore:
    """Tokenize a dataset into a zarrtok store at ``output`` and return it opened.

    Args:
        dataset_name: a ``datasets.load_dataset`` path/name (``"json"``, ``"text"``, ``"parquet"``,
            ``"csv"``, a hub name, a local directory) or a ``Dataset`` / ``DatasetDict`` object.
        output: store location, a local path or an fsspec URL (with ``storage_options``).
        dataset_config_name, data_dir, data_files, revision: passed to ``load_dataset``. JSON Lines
            (plain, ``.gz``, ``.zst``...) and Parquet ``data_files`` — local paths or fsspec URLs,
            globs — are read directly instead (:mod:`zarrtok.ingest.jsonl`, :mod:`zarrtok.ingest.parquet`).
        load_dataset_kwargs: more ``load_dataset`` arguments. ``storage_options`` here are the
            *source* filesystem's (the direct readers use them too; credentials are never written to
            the plan); ``streaming=True`` (or an ``IterableDataset``) builds in bounded memory
            (:mod:`zarrtok.ingest.iterable`).
        tokenizer / tokenizer_name: a tokenizer instance, or a name/path for ``AutoTokenizer``.
        mapping_column_name / columns: text column(s); several are joined with ``column_separator``
            into one document per row. Default: ``"text"`` (or the only string column).
        validation_split, test_split, seed, shuffle, splits: the split rules of :mod:`zarrtok.sources`.
        num_workers: tokenizer processes (1: in-process, using the tokenizer's own threads).
        use_eos_token: append the tokenizer's EOS id after every non-empty document.
        add_special_tokens: as in ``tokenizer(doc)`` (e.g. a BOS added by the post-processor).
        chunk_size: tokens per chunk (default: 8 MiB worth, see docs/format.md).
        shard_size: start a new shard once a shard holds this many tokens (default: one shard per split).
        checksum: ``"crc32c"`` (per-chunk checksum after the raw bytes) or ``None``.
        block_bytes: bytes per checksummed block of a chunk (default 16 KiB), so remote ranged reads
            are verified too; ``None``: no block checksums (remote ``auto`` then reads whole chunks).
        overwrite: ``False``: reuse a store with the same fingerprint, refuse a different one;
            ``True``: always rebuild; ``"changed"``: rebuild only when the fingerprint differs.
        batch_size: documents per tokenization task (local JSON Lines files read directly, see
            :mod:`zarrtok.jsonl`: at most this many and at most 4 MiB of lines).
        progress: show tqdm progress bars.
        start_method: multiprocessing start method for workers (default ``fork`` on Linux).
        encoder: ``"auto"`` (the first fast path, gigatoken then tiktoken, that
            :mod:`zarrtok.ingest.fast_encoding` proves gives the tokenizer's ids — shape check plus
            a verification on the corpus — else Hugging Face ``tokenizers``), ``"hf"`` (always
            Hugging Face), ``"gigatoken"`` or ``"tiktoken"`` (that fast path, or an error naming
            why it cannot be used). The manifest records which one ran, with its version.
        executor, scheduler: where the shard tasks run (:mod:`zarrtok.ingest.executors`).
        mode: ``"create"`` (a new store, or see ``overwrite``) or ``"append"``: add the documents to
            the complete store at ``output`` as new shards (:mod:`zarrtok.ingest.appending`; the
            tokenizer and encoding rules are the store's).
        allow_duplicate: with ``mode="append"``, append a source that is already in the store again
            (by default such an append does nothing and returns the store).
    """
    args = dict(locals())
    prepared = _prepare(args)
    if prepared.reused is not None:
        return prepared.reused
    return _execute(prepared, executor=executor, scheduler=scheduler)


def plan_build(*args: Any, **kwargs: Any) -> BuildPlan:
    """Plan a build without running it (same arguments as :func:`build`): the returned
    :class:`~zarrtok.ingest.plan.BuildPlan` is stored in the staging area, where ``zarrtok
    build-task`` / :func:`run_plan_task` and ``zarrtok commit`` / :func:`commit_build` find it.
    A store that already matches the fingerprint needs no plan: ``None`` is returned then."""
    import inspect as _inspect

    bound = _inspect.signature(build).bind(*args, **kwargs)
    bound.apply_defaults()
    prepared = _prepare(dict(bound.arguments))
    if prepared.reused is not None:
        return None
    _plan.release_writer(prepared.staging)
    if prepared.staging.lock is not None:  # remote: the commit takes the lock again
        prepared.staging.lock.release()
    return prepared.plan


@dataclass
class _Prepared:
    location: Location
    reused: TokenStore | None = None
    plan: Any = None
    staging: Any = None
    documents: Any = None
    encoder: Any = None
    num_workers: int = 1
    start_method: str | None = None
    progress: bool = False
    fingerprint: str = ""


def _prepare(a: dict[str, Any]) -> _Prepared:
    """Everything up to running the tasks: validate, fingerprint, reuse, plan, stage."""
    location = as_location(a["output"], a["storage_options"])
    overwrite, num_workers, batch_size = a["overwrite"], a["num_workers"], a["batch_size"]
    if overwrite not in (False, True, "changed"):
        raise ValueError(f"overwrite must be False, True or 'changed', got {overwrite!r}")
    if a["mapping_column_name"] is not None and a["columns"] is not None:
        raise ValueError("pass either `mapping_column_name` or `columns`, not both")
    if num_workers is None or int(num_workers) < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if a["dataset_name"] is None:
        raise ValueError("dataset_name is required: a load_dataset name/path or a datasets.Dataset/DatasetDict")
    if a["encoder"] not in ENCODERS:
        raise ValueError(f"encoder must be one of {ENCODERS}, got {a['encoder']!r}")
    mode = a.get("mode", "create")
    if mode not in ("create", "append"):
        raise ValueError(f"mode must be 'create' or 'append', got {mode!r}")
    use_eos_token, add_special_tokens = a["use_eos_token"], a["add_special_tokens"]
    checksum, block_bytes, shard_size = a["checksum"], a["block_bytes"], a["shard_size"]
    if shard_size is not None and int(shard_size) < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")

    base = None  # the manifest an append extends
    if mode == "append":
        if overwrite is not False:
            raise ValueError("mode='append' adds to a store and never replaces it: overwrite does not apply")
        base_store, tok = appending.open_base(location, a["tokenizer"], a["tokenizer_name"])
        base = base_store.manifest
    else:
        tok = load_tokenizer(a["tokenizer"], a["tokenizer_name"])
    eos_id = tok.eos_token_id
    if use_eos_token and eos_id is None:
        raise ValueError(
            f"use_eos_token=True but the tokenizer ({type(tok).__name__}, {tok.name_or_path!r}) has no EOS token: "
            "set tokenizer.eos_token, or pass use_eos_token=False"
        )
    dtype = choose_dtype(tok)
    chunk_size = a["chunk_size"]
    if base is not None:
        appending.check_rules(base, use_eos_token=use_eos_token, eos_token_id=eos_id,
                              add_special_tokens=add_special_tokens)
        dtype = np.dtype(base.dtype)
        chunk_size, checksum, block_bytes = appending.layout_from_base(
            base, chunk_size=chunk_size, checksum=checksum, block_bytes=block_bytes,
            defaults={"checksum": "crc32c", "block_bytes": DEFAULT_BLOCK_BYTES})
    if chunk_size is None:
        chunk_size = DEFAULT_CHUNK_BYTES // dtype.itemsize
    chunk_size = int(chunk_size)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    compressors_for(checksum)  # validates the name
    if block_bytes is not None and (int(block_bytes) < 1 or int(block_bytes) % np.dtype(dtype).itemsize):
        raise ValueError(f"block_bytes must be a positive multiple of the token size, got {block_bytes}")

    dataset_name = a["dataset_name"]
    column_separator = a["column_separator"]
    documents, text_columns, identity, origin = _open_documents(
        dataset_name, columns=a["columns"] if a["columns"] is not None else a["mapping_column_name"],
        separator=column_separator, dataset_config_name=a["dataset_config_name"], data_dir=a["data_dir"],
        data_files=a["data_files"], revision=a["revision"], load_dataset_kwargs=a["load_dataset_kwargs"],
        validation_split=a["validation_split"], test_split=a["test_split"], seed=a["seed"], shuffle=a["shuffle"],
        splits=a["splits"], batch_size=int(batch_size),
    )
    for name in documents.splits:
        check_node_name(name, "split")
    if sum(documents.num_documents(name) for name in documents.splits) == 0:
        raise ValueError("the dataset is empty: no documents in any split")

    token_rules = {
        "columns": text_columns,
        "column_separator": column_separator,
        "use_eos_token": bool(use_eos_token),
        "eos_token_id": eos_id if use_eos_token else None,
        "add_special_tokens": bool(add_special_tokens),
        "validation_split": float(a["validation_split"] or 0.0),
        "test_split": float(a["test_split"] or 0.0),
        "seed": int(a["seed"]),
        "shuffle": bool(a["shuffle"]),
        "splits": documents.splits,
    }
    fingerprint = compute_fingerprint(
        {"format_version": FORMAT_VERSION, "source": identity, "tokenizer_sha256": tokenizer_digest(tok),
         "dtype": dtype.name, **token_rules}
    )
    if base is not None and not a.get("allow_duplicate"):
        seen = appending.already_in(base, fingerprint)
        if seen is not None:
            logger.info("%s already holds this source (%s of generation %s, %s): nothing to append "
                        "(allow_duplicate=True appends it again)", location.url, seen.get("action"),
                        str(seen.get("generation"))[:12], seen.get("created"))
            return _Prepared(location, reused=TokenStore(location, base))
    layout = {"chunk_size": chunk_size, "shard_size": shard_size, "checksum": checksum,
              "block_bytes": int(block_bytes) if block_bytes else None, "batch_size": int(batch_size),
              "replace": overwrite is not False, "mode": "append" if base is not None else "create",
              "base": base.generation if base is not None else None}
    key = _plan.plan_key(fingerprint, location.url, layout)
    replace = overwrite is not False
    adopted = None  # the staging of this very build, killed before its commit: resumed
    if base is None:
        adopted = _plan.adopt_staging(location, key, replace) if location.is_local else _plan.adopt_remote(location, key)
    prepared = _Prepared(location, num_workers=int(num_workers), start_method=a["start_method"],
                         progress=bool(a["progress"]), fingerprint=fingerprint, documents=documents)
    if base is not None:
        return _prepare_append(prepared, a, base, tok, key, fingerprint, identity, origin)
    if adopted is not None and not location.is_local:
        existing = adopted.existing  # our own crashed build (checked under the lock): resumed, not cleared
    else:
        try:
            reused, existing = _reuse_or_clear(location, fingerprint, overwrite)
        except BaseException:
            if adopted is not None:
                _plan.release_writer(adopted)
            raise
        if reused is not None:
            if adopted is not None:
                discard_staging(adopted)
            prepared.reused = reused
            return prepared

    config = {
        "dataset": dataset_name if isinstance(dataset_name, str) else type(dataset_name).__name__,
        "dataset_config_name": a["dataset_config_name"],
        "data_dir": a["data_dir"],
        "data_files": identity.get("data_files"),
        "revision": a["revision"],
        "tokenizer": str(tok.name_or_path or ""),
        **token_rules,
        "chunk_size": chunk_size,
        "shard_size": shard_size,
        "checksum": checksum,
        "block_bytes": int(block_bytes) if block_bytes else None,
        "num_workers": int(num_workers),
        "source": identity,
    }
    manifest = Manifest(
        fingerprint=fingerprint,
        dtype=dtype.name,
        chunk_size=chunk_size,
        checksum=checksum,
        splits={},
        tokenizer=tokenizer_summary(tok),
        config=config,
        encoder="",
        eos_token_id=eos_id if use_eos_token else None,
        zarrtok_version=__version__,
        generation=new_id(),
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )
    chosen, manifest.encoder = _choose_encoder(
        a["encoder"], backend_json(tok), eos_token_id=eos_id if use_eos_token else None,
        add_special_tokens=add_special_tokens, dtype=dtype.name,
        sample=[t for name in documents.splits for t in documents.head(name, VERIFY_DOCUMENTS)],
    )
    prepared.encoder = chosen
    if adopted is not None:
        try:
            prepared.plan = _plan.load_plan(_plan.build_area(adopted, location.url, key, location.storage_options),
                                            adopted, location.storage_options)
        except BaseException:
            _plan.release_writer(adopted)
            if adopted.lock is not None:
                adopted.lock.release()
            raise
        prepared.staging = adopted
        return prepared
    # Staging, commit and cleanup: zarrtok.storage.commit (atomic local switch, remote lock + last-write
    # switch, conditional commit when not overwriting, sweeping of dead writers' leftovers).
    try:
        staging = staging_location(location, replace=replace, expected=existing)
    except CommitConflictError:
        reused = _reuse_after_conflict(location, fingerprint)
        if reused is not None:
            prepared.reused = reused
            return prepared
        raise
    logger.info("planning %s (fingerprint %s) into %s", location.url, fingerprint[:12], staging.url)
    try:
        data = _plan_data(key, location, manifest, tok, chosen, documents, origin, shard_size=shard_size,
                          suffix=shard_suffix(staging), first_ordinal={}, replace=replace)
        root = open_staging_root(staging, {ATTRIBUTE_KEY: manifest.to_json()})  # never clears an old store
        _write_tokenizer(root, tok, manifest.checksum)
        for split in documents.splits:
            root.create_group(f"{SPLITS_GROUP}/{split}/shards")
        prepared.plan = BuildPlan(data, staging, dict(location.storage_options))
        _plan.save_plan(prepared.plan)
        _plan.sweep_dead_areas(location, keep=key)  # object stores: areas of builds that can never commit now
    except BaseException as exc:
        _discard(staging)
        if isinstance(exc, CommitConflictError):
            reused = _reuse_after_conflict(location, fingerprint)
            if reused is not None:
                prepared.reused = reused
                return prepared
        raise
    prepared.staging = staging
    return prepared


def _prepare_append(prepared: _Prepared, a: dict[str, Any], base: Manifest, tok: Any, key: str, fingerprint: str,
                    identity: Any, origin: dict[str, Any]) -> _Prepared:
    """The append counterpart of the planning half of :func:`_prepare` (see :mod:`.appending`)."""
    location, documents = prepared.location, prepared.documents
    chosen, encoder_name = _choose_encoder(
        a["encoder"], backend_json(tok), eos_token_id=base.eos_token_id, add_special_tokens=a["add_special_tokens"],
        dtype=base.dtype, sample=[t for name in documents.splits for t in documents.head(name, VERIFY_DOCUMENTS)],
    )
    prepared.encoder = chosen
    resumed = appending.resume(location, key)
    if resumed is not None:
        prepared.plan, prepared.staging = resumed, resumed.staging
        return prepared
    manifest = appending.plan_manifest(base)
    staging = appending.staging_for(location, manifest.generation)
    data = _plan_data(key, location, manifest, tok, chosen, documents, origin, shard_size=a["shard_size"],
                      suffix=shard_suffix(staging), first_ordinal=appending.first_ordinals(base), replace=False,
                      history="append")
    appending.finish_plan(data, base, fingerprint, identity, encoder_name)
    plan = BuildPlan(data, staging, dict(location.storage_options))
    logger.info("planning an append of %d shard(s) to %s (generation %s)", len(plan.tasks), location.url,
                base.generation[:12])
    appending.prepare_area(plan)
    prepared.plan, prepared.staging = plan, staging
    return prepared


def _write_tokenizer(root: Any, tok: Any, checksum: str | None) -> None:
    tok_group = root.create_group(TOKENIZER_GROUP)
    for name, data in tokenizer_files(tok).items():
        arr = tok_group.create_array(
            name, shape=(len(data),), chunks=(max(1, len(data)),), dtype="uint8",
            compressors=compressors_for(checksum), filters=None, fill_value=0,
            config={"write_empty_chunks": True},
        )
        arr[:] = np.frombuffer(data, dtype=np.uint8)


def _discard(staging: Any) -> None:
    logger.info("build failed; removing %s", staging.url)
    try:
        discard_staging(staging)
    except Exception:  # pragma: no cover - best effort cleanup
        logger.exception("could not remove %s", staging.url)


def _plan_data(key: str, location: Location, manifest: Manifest, tok: Any, encoder: Any, documents: Any,
               origin: dict[str, Any], *, shard_size: int | None, suffix: str, first_ordinal: dict[str, int],
               replace: bool, history: str = "build") -> dict[str, Any]:
    """The plan's JSON: shard tasks of every split (see :mod:`zarrtok.ingest.plan`)."""
    tasks: list[dict[str, Any]] = []
    for split in documents.splits:
        units, origins = _units(documents, split, origin)
        estimates = _estimates(documents, split, units, encoder) if shard_size is not None else [0.0] * len(units)
        groups = _plan.cut_shards(units, estimates, int(shard_size) if shard_size is not None else None)
        row = 0
        for ordinal, group in enumerate(groups, start=first_ordinal.get(split, 0)):
            n = sum(_plan.unit_rows(u) for u in group)
            index = len(tasks)
            tasks.append({
                "index": index, "split": split, "name": shard_name(ordinal) + suffix,
                "id": _plan.shard_id(manifest.generation, index), "units": group, "num_documents": n,
                "provenance": _plan.provenance_runs(origins[row:row + n]),
            })
            row += n
    history_entry = {"action": history, "generation": manifest.generation, "created": manifest.created,
                     "fingerprint": manifest.fingerprint, "source": manifest.config.get("source"),
                     "shards": len(tasks), "documents": sum(t["num_documents"] for t in tasks)}
    return {
        "plan_version": _plan.PLAN_VERSION, "key": key, "target": location.url, "replace": replace,
        "suffix": suffix, "manifest": manifest.to_json(), "tokenizer_json": backend_json(tok),
        "tokenizer_files": sorted(tokenizer_files(tok)),
        "encoder": {"kind": _plan.encoder_kind(encoder), "eos_token_id": manifest.eos_token_id,
                    "add_special_tokens": bool(manifest.config["add_special_tokens"]), "dtype": manifest.dtype},
        "reader": origin["reader"], "sources": origin["sources"], "splits": list(documents.splits),
        "tasks": tasks, "history_entry": history_entry,
    }


def _units(documents: Any, split: str, origin: dict[str, Any]):
    """The split's read units (plain dicts, in order) and the ``(n, 2)`` table of the ``(source, row)``
    of each of its documents."""
    bs = origin["batch_size"]
    if origin["reader"]["kind"] in ("jsonl", "parquet"):
        units, src_rows = [], []
        files = origin["file_index"]
        for block, rows in documents.tasks(split, bs):
            if origin["reader"]["kind"] == "parquet":
                unit = {"kind": "parquet", "path": block.path, "row_group": block.row_group, "bytes": block.bytes,
                        "first_row": block.first_row, "num_rows": block.num_rows}
            else:
                unit = {"kind": "jsonl", "path": block.path, "start": block.start, "end": block.end,
                        "first_line": block.first_line, "first_row": block.first_row, "num_rows": block.num_rows}
                if block.compression is not None:
                    unit["compression"] = block.compression
            unit["rows"] = None if rows is None else [int(r) for r in rows]
            units.append(unit)
            src, first = files[block.path]
            positions = np.arange(block.num_rows) if rows is None else np.asarray(rows)
            src_rows.append(np.stack([np.full(len(positions), src), block.first_row - first + positions], axis=1))
        table = np.concatenate(src_rows) if src_rows else np.zeros((0, 2), dtype=np.int64)
    elif origin["reader"]["kind"] == "iterable":
        units = [{"kind": "iterable", "split": s, "shard": i, "start": a, "stop": b}
                 for s, i, a, b in documents.tasks(split, bs)]
        n = documents.num_documents(split)  # units cover the split's rows in order
        table = np.stack([np.full(n, documents.splits.index(split)), np.arange(n)], axis=1)
    else:
        units = [{"kind": "datasets", "split": s, "start": a, "stop": b} for s, a, b in documents.tasks(split, bs)]
        src, rows = origin["row_maps"][split]
        n = documents.num_documents(split)
        table = np.stack([np.full(n, src), np.arange(n) if rows is None else np.asarray(rows)], axis=1)
    return units, table


def _estimates(documents: Any, split: str, units: list[dict[str, Any]], encoder: Any) -> list[float]:
    """Estimated tokens per unit: tokens per document of the split's head, weighted by each JSON
    Lines block's (decompressed) bytes per row, or each Parquet row group's uncompressed text-column
    bytes per row (the plan's only look at the data besides the block scan / the footers)."""
    head = documents.head(split, VERIFY_DOCUMENTS)
    per_doc = float(encoder.encode(head)[0].size) / len(head) if head else 0.0
    if not units or units[0]["kind"] not in ("jsonl", "parquet"):
        return [per_doc * _plan.unit_rows(u) for u in units]
    density = [(u["bytes"] if u["kind"] == "parquet" else u["end"] - u["start"]) / max(1, u["num_rows"])
               for u in units]
    rows = [_plan.unit_rows(u) for u in units]
    mean = sum(d * r for d, r in zip(density, rows)) / max(1, sum(rows))
    return [per_doc * r * (d / mean if mean else 1.0) for d, r in zip(density, rows)]


def _execute(prepared: _Prepared, *, executor: Any = None, scheduler: Any = None) -> TokenStore:
    """Run the plan's pending tasks and commit; a failed build removes its staging."""
    plan, staging = prepared.plan, prepared.staging
    try:
        pending = plan.pending()
        logger.info("%d of %d shard task(s) to run (plan %s)", len(pending), len(plan.tasks), plan.key)
        done = run_plan(plan, pending, executor=executor, scheduler=scheduler, num_workers=prepared.num_workers,
                        start_method=prepared.start_method, progress=prepared.progress,
                        documents=prepared.documents, encoder=prepared.encoder)
        return commit_build(plan, staging=staging, records=done)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):  # interrupted: keep what is done for a rerun
            _plan.release_writer(staging)
            raise
        if plan.data.get("mode") == "append":
            appending.discard(plan)
            raise
        _discard(staging)
        if isinstance(exc, CommitConflictError):
            reused = _reuse_after_conflict(prepared.location, prepared.fingerprint)
            if reused is not None:
                return reused
        raise


def commit_build(plan: BuildPlan | str | os.PathLike | Location, *, staging: Any = None,
                 storage_options: dict[str, Any] | None = None, records: Any = None) -> TokenStore:
    """Commit a plan whose tasks are all finished: read the ledger, write the manifest (one write),
    make the store visible. ``plan`` may be the store (its unfinished plan is found); ``records``:
    ledger records the executor already returned (those are not read again)."""
    if not isinstance(plan, BuildPlan):
        plan = _plan.find_plan(plan, storage_options)
    if plan.data.get("mode") == "append":
        return appending.commit(plan, records=records)
    location = as_location(plan.data["target"], plan.storage_options)
    if staging is None:
        staging = _staging_for(plan, location)
    area = plan.area
    records = _plan.ledger_records(plan, records)
    manifest = _plan.assemble_manifest(plan, records)
    if sum(info.num_tokens for info in manifest.splits.values()) == 0:
        raise ValueError("the dataset produced no tokens: every document is empty")
    if not location.is_local:
        _check_remote_root(plan, location)
    _plan.write_root_manifest(staging, manifest)  # remote: the commit point
    staging.keep_tokenizer = set(plan.data.get("tokenizer_files") or []) or None
    if staging.separate:
        _plan.remove_area(area)  # before the rename: the store holds nothing but the store
    commit_staging(staging, location)
    if not staging.separate:
        _plan.remove_area(area)
    store = TokenStore(location, read_manifest(location))
    logger.info("built %r", store)
    return store


def _staging_for(plan: BuildPlan, location: Location) -> Any:
    """The commit's :class:`~zarrtok.storage.commit.Staging` for a plan found on disk / in the bucket."""
    from ..storage.commit import RemoteLock, Staging, _hidden

    if location.is_local:
        token = os.path.basename(plan.staging.local_path).rsplit("-", 1)[-1]
        writer = _hidden(location.local_path, "writer", token)
        with open(writer, "w") as f:
            import json as _json

            from ..storage.commit import writer_info

            _json.dump(writer_info(store=location.local_path), f)
        return Staging(plan.staging.local_path, location.storage_options, target=location, separate=True,
                       replace=bool(plan.data["replace"]), token=token)
    lock = RemoteLock(location).acquire()
    return Staging(location.url, location.storage_options, target=location, replace=bool(plan.data["replace"]),
                   suffix=plan.data.get("suffix", ""), lock=lock, owns=True)


def _check_remote_root(plan: BuildPlan, location: Location) -> None:
    """Remote commits: the root must still be this plan's ``building`` root (or, beside a complete
    store, the store the plan was made next to / appends to)."""
    import json as _json

    try:
        root = _json.loads(location.objects().get("zarr.json"))
    except FileNotFoundError:
        raise CommitConflictError(f"{location.url}: the store's root disappeared during the build") from None
    d = (root.get("attributes") or {}).get(ATTRIBUTE_KEY) or {}
    ours = plan.data["manifest"]["generation"]
    expected = plan.data.get("base_generation")
    if d.get("generation") not in (ours, expected) and not (plan.data.get("suffix") and not expected):
        raise CommitConflictError(f"{location.url} was changed by another writer during this build")


def run_plan_task(store: str | os.PathLike | Location, index: int, *, storage_options: dict[str, Any] | None = None,
                  key: str | None = None) -> dict[str, Any]:
    """Run task ``index`` of the unfinished build into ``store`` (idempotent; the CLI's ``build-task``)."""
    plan = _plan.find_plan(store, storage_options, key)
    if not 0 <= int(index) < len(plan.tasks):
        raise IndexError(f"task {index} out of range: the plan has {len(plan.tasks)} task(s)")
    return _plan.run_task(plan.data, int(index), plan.staging)


ENCODERS = ("auto", "hf", "gigatoken", "tiktoken")
VERIFY_DOCUMENTS = 1000  # documents per split the fast path is checked on before a build uses it


def _open_documents(dataset_name: Any, *, columns: Any, separator: str, dataset_config_name: str | None,
                    data_dir: str | None, data_files: Any, revision: str | None,
                    load_dataset_kwargs: dict[str, Any] | None, validation_split: float | None,
                    test_split: float | None, seed: int, shuffle: bool, splits: Sequence[str] | None,
                    batch_size: int) -> tuple[Any, list[str], dict[str, Any], dict[str, Any]]:
    """The build's documents (split rules applied), its text columns, the source identity for the
    fingerprint, and where the documents come from (the plan's reader spec, provenance sources and
    row maps): JSON Lines and Parquet files (local or fsspec URLs, see
    :mod:`zarrtok.ingest.file_sources`) read directly when :func:`plan_json_lines` /
    :func:`~zarrtok.ingest.parquet.plan_parquet` take them, ``datasets.load_dataset`` otherwise.
    The source filesystem's options are ``load_dataset_kwargs["storage_options"]``."""
    from . import file_sources
    from .jsonl import source_options
    from .parquet import ParquetDocuments, plan_parquet

    call = dict(data_files=data_files, columns=columns, dataset_config_name=dataset_config_name, data_dir=data_dir,
                revision=revision, load_dataset_kwargs=load_dataset_kwargs, shuffle=shuffle)
    rules = dict(validation_split=validation_split, test_split=test_split, seed=seed, splits=splits)
    direct = None
    jsonl_files = plan_json_lines(dataset_name, **call)
    if jsonl_files is not None:
        text_columns = ["text"] if columns is None else [columns] if isinstance(columns, str) else list(columns)
        if not text_columns:
            raise ValueError("columns must name at least one text column")
        options = source_options(load_dataset_kwargs)
        documents = JsonLinesDocuments.open(jsonl_files, columns=text_columns, separator=separator, **rules,
                                            batch_size=batch_size, storage_options=options)
        logger.info("reading %d JSON Lines file(s) directly (no Arrow cache)", sum(len(v) for v in jsonl_files.values()))
        direct = ("jsonl", documents)
    else:
        planned = plan_parquet(dataset_name, **call)
        if planned is not None:
            parquet_files, text_columns = planned
            options = source_options(load_dataset_kwargs)
            documents = ParquetDocuments.open(parquet_files, columns=text_columns, separator=separator, **rules,
                                              storage_options=options)
            logger.info("reading %d Parquet file(s) directly, by row group (no Arrow cache)",
                        sum(len(v) for v in parquet_files.values()))
            direct = ("parquet", documents)
    if direct is not None:
        kind, documents = direct
        sources, file_index = [], {}
        for path, first in documents.file_first_rows():
            file_index[path] = (len(sources), first)
            sources.append({"kind": kind, "path": path})
        origin = {"reader": {"kind": kind, "columns": text_columns, "separator": separator,
                             "storage_options": file_sources.plan_options(documents.storage_options)},
                  "sources": sources, "file_index": file_index, "batch_size": batch_size}
        return documents, text_columns, documents.identity(data_files), origin
    from . import iterable

    if iterable.is_streaming(dataset_name, load_dataset_kwargs):
        where = dict(dataset_config_name=dataset_config_name, data_dir=data_dir, data_files=data_files,
                     revision=revision)
        documents = iterable.IterableDocuments.open(
            iterable.load_iterable(dataset_name, **where, load_dataset_kwargs=load_dataset_kwargs), columns=columns,
            separator=separator, validation_split=validation_split, test_split=test_split, seed=seed,
            shuffle=shuffle, splits=splits)
        label = os.fspath(dataset_name) if isinstance(dataset_name, (str, os.PathLike)) else type(dataset_name).__name__
        sources = [{"kind": "iterable", "name": label, "config": dataset_config_name, "split": n}
                   for n in documents.splits]
        origin = {"reader": {"kind": "iterable", "columns": documents.columns, "separator": separator,
                             "load": iterable.load_spec(dataset_name, **where, load_dataset_kwargs=load_dataset_kwargs),
                             "shards": {n: len(documents.counts[n]) for n in documents.splits}},
                  "sources": sources, "batch_size": batch_size}
        return documents, documents.columns, documents.identity(dataset_name, **where), origin
    source = load_source(
        dataset_name, dataset_config_name=dataset_config_name, data_dir=data_dir, data_files=data_files,
        revision=revision, load_dataset_kwargs=load_dataset_kwargs,
    )
    rules = dict(validation_split=validation_split, test_split=test_split, seed=seed, shuffle=shuffle,
                 splits=list(splits) if splits is not None else None)
    split_datasets = apply_split_rules(source, **rules)
    text_columns = resolve_columns(split_datasets, columns)
    identity = source_identity(
        dataset_name, split_datasets, dataset_config_name=dataset_config_name, data_dir=data_dir,
        data_files=data_files, revision=revision,
    )
    # the source row of every document (the same split rules over row indices)
    names = list(source)
    rows = split_rules({n: (n, None) for n in names}, size=lambda p: len(source[p[0]]) if p[1] is None else len(p[1]),
                       select=lambda p, pos: (p[0], pos if p[1] is None else p[1][pos]), **rules)
    label = os.fspath(dataset_name) if isinstance(dataset_name, (str, os.PathLike)) else type(dataset_name).__name__
    sources = [{"kind": "datasets", "name": label, "config": dataset_config_name, "split": n} for n in names]
    load = None
    if isinstance(dataset_name, (str, os.PathLike)):
        load = {"path": os.fspath(dataset_name), "name": dataset_config_name, "data_dir": data_dir,
                "data_files": _jsonable(data_files), "revision": revision, "kwargs": dict(load_dataset_kwargs or {})}
    origin = {"reader": {"kind": "datasets", "load": load, "columns": text_columns, "separator": separator,
                         "rules": rules},
              "sources": sources, "batch_size": batch_size,
              "row_maps": {s: (names.index(p[0]), None if p[1] is None else p[1].tolist()) for s, p in rows.items()}}
    return DatasetDocuments(split_datasets, text_columns, separator), text_columns, identity, origin


def _choose_encoder(choice: str, tokenizer_json: str, *, eos_token_id: int | None, add_special_tokens: bool,
                    dtype: str, sample: list[str]) -> tuple[Any, str]:
    """The document encoder for a build and the name the manifest records (see ``build(encoder=)``)."""
    hf = DocumentEncoder(tokenizer_json, eos_token_id=eos_token_id, add_special_tokens=add_special_tokens,
                         dtype=dtype)
    hf_name = f"{ENCODER_NAME}=={_tokenizers_version()}"
    if choice == "hf":
        return hf, hf_name
    from . import fast_encoding

    for name in fast_encoding.FAST_ENCODERS if choice == "auto" else (choice,):
        fast, note, differs = fast_encoding.fast_encoder(
            name, tokenizer_json, hf, reference_name=hf_name, sample=sample, eos_token_id=eos_token_id,
            add_special_tokens=add_special_tokens, dtype=dtype,
        )
        if fast is not None:
            logger.info("tokenizing with %s", note)
            return fast, note
        if choice != "auto":
            raise ValueError(f"encoder={choice!r}: {note}")
        logger.log(logging.WARNING if differs else logging.INFO, "%s fast path not used: %s", name, note)
    logger.info("tokenizing with Hugging Face tokenizers")
    return hf, hf_name


def _tokenizers_version() -> str:
    import tokenizers

    return tokenizers.__version__


def _reuse_or_clear(location: Location, fingerprint: str,
                    overwrite: bool | str) -> tuple[TokenStore | None, Existing]:
    """Return the existing store when it can be reused, and what is at ``location``; raise
    ``StoreExistsError`` unless ``location`` may be written. Only a zarrtok store is ever replaced
    (``zarrtok.storage.commit.inspect``): user data raises even with ``overwrite``."""
    recover(location)  # an overwrite interrupted between its two renames (fallback commit)
    sweep_orphans(location)  # staging / old copies of dead writers next to a local output
    existing = inspect(location)  # ForeignDataError (a StoreExistsError) for anything not ours
    if existing.kind != COMPLETE:
        if existing.kind == EMPTY:
            return None, existing  # empty or missing
        if overwrite in (True, "changed"):
            logger.warning("replacing unusable store at %s (%s)", location.url, existing.error)
            return None, existing
        raise StoreExistsError(
            f"{location.url} holds an unusable store ({existing.error}); pass overwrite=True to rebuild")
    if existing.manifest.fingerprint == fingerprint and overwrite is not True:
        logger.info("reusing %s: fingerprint %s matches, nothing to encode", location.url, fingerprint[:12])
        return TokenStore(location, existing.manifest), existing
    history = existing.manifest.history
    if overwrite is not True and history and history[0].get("action") == "build" \
            and history[0].get("fingerprint") == fingerprint:
        # this very build, since grown by appends: a rerun of a "build, then append" script reuses it
        logger.info("reusing %s: it is this build (fingerprint %s) plus %d append(s)", location.url,
                    fingerprint[:12], len(history) - 1)
        return TokenStore(location, existing.manifest), existing
    if overwrite is False:
        raise StoreExistsError(
            f"{location.url} holds a store with fingerprint {existing.manifest.fingerprint[:12]}, this build's is "
            f"{fingerprint[:12]} (different source, tokenizer or options); pass overwrite=True to replace it"
        )
    logger.info("rebuilding %s (fingerprint %s -> %s)", location.url, existing.manifest.fingerprint[:12],
                fingerprint[:12])
    return None, existing


def _reuse_after_conflict(location: Location, fingerprint: str) -> TokenStore | None:
    """After losing a conditional commit to a concurrent build: its store when it is the same one."""
    try:
        existing = read_manifest(location)
    except ZarrtokError:
        return None
    if existing.fingerprint != fingerprint:
        return None
    logger.info("another build committed %s with the same fingerprint %s meanwhile: reusing it", location.url,
                fingerprint[:12])
    return TokenStore(location, existing)


def _new_shard(index: int, manifest: Manifest, suffix: str = "") -> ShardInfo:
    # suffix: beside a complete remote store, names its old generation cannot have (storage.commit)
    return ShardInfo(shard_name(index) + suffix, 0, 0, id=new_id(), checksum=manifest.checksum)


def _close_shard(shard: ShardInfo, writer: ShardWriter) -> None:
    """Finish a shard's arrays and record what readers need in the manifest (format 2)."""
    shard.num_tokens, shard.num_documents = writer.close()
    shard.chunk_size = writer.tokens.array_chunk_size
    shard.block_bytes = writer.block_bytes



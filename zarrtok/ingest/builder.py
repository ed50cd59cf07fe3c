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
import multiprocessing
import os
import sys
from typing import Any, Iterator, Sequence

import numpy as np
from tqdm.auto import tqdm

from .. import __version__
from ..errors import StoreExistsError, ZarrtokError
from ..format import (
    ATTRIBUTE_KEY,
    DEFAULT_BLOCK_BYTES,
    DEFAULT_CHUNK_BYTES,
    FORMAT_VERSION,
    STATUS_COMPLETE,
    TOKENIZER_GROUP,
    Manifest,
    ShardInfo,
    SplitInfo,
    check_node_name,
    compute_fingerprint,
    new_id,
    shard_name,
    shard_path,
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
from .jsonl import JsonLinesDocuments, plan_json_lines
from .sources import DatasetDocuments, apply_split_rules, load_source, resolve_columns, source_identity
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
) -> TokenStore:
    """Tokenize a dataset into a zarrtok store at ``output`` and return it opened.

    Args:
        dataset_name: a ``datasets.load_dataset`` path/name (``"json"``, ``"text"``, ``"parquet"``,
            ``"csv"``, a hub name, a local directory) or a ``Dataset`` / ``DatasetDict`` object.
        output: store location, a local path or an fsspec URL (with ``storage_options``).
        dataset_config_name, data_dir, data_files, revision: passed to ``load_dataset``.
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
    """
    location = as_location(output, storage_options)
    if overwrite not in (False, True, "changed"):
        raise ValueError(f"overwrite must be False, True or 'changed', got {overwrite!r}")
    if mapping_column_name is not None and columns is not None:
        raise ValueError("pass either `mapping_column_name` or `columns`, not both")
    if num_workers is None or int(num_workers) < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if dataset_name is None:
        raise ValueError("dataset_name is required: a load_dataset name/path or a datasets.Dataset/DatasetDict")
    if encoder not in ENCODERS:
        raise ValueError(f"encoder must be one of {ENCODERS}, got {encoder!r}")

    tok = load_tokenizer(tokenizer, tokenizer_name)
    eos_id = tok.eos_token_id
    if use_eos_token and eos_id is None:
        raise ValueError(
            f"use_eos_token=True but the tokenizer ({type(tok).__name__}, {tok.name_or_path!r}) has no EOS token: "
            "set tokenizer.eos_token, or pass use_eos_token=False"
        )
    dtype = choose_dtype(tok)
    if chunk_size is None:
        chunk_size = DEFAULT_CHUNK_BYTES // dtype.itemsize
    chunk_size = int(chunk_size)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    compressors_for(checksum)  # validates the name
    if block_bytes is not None and (int(block_bytes) < 1 or int(block_bytes) % np.dtype(dtype).itemsize):
        raise ValueError(f"block_bytes must be a positive multiple of the token size, got {block_bytes}")

    documents, text_columns, identity = _open_documents(
        dataset_name, columns=columns if columns is not None else mapping_column_name, separator=column_separator,
        dataset_config_name=dataset_config_name, data_dir=data_dir, data_files=data_files, revision=revision,
        load_dataset_kwargs=load_dataset_kwargs, validation_split=validation_split, test_split=test_split, seed=seed,
        shuffle=shuffle, splits=splits, batch_size=int(batch_size),
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
        "validation_split": float(validation_split or 0.0),
        "test_split": float(test_split or 0.0),
        "seed": int(seed),
        "shuffle": bool(shuffle),
        "splits": documents.splits,
    }
    fingerprint = compute_fingerprint(
        {"format_version": FORMAT_VERSION, "source": identity, "tokenizer_sha256": tokenizer_digest(tok),
         "dtype": dtype.name, **token_rules}
    )

    reused, existing = _reuse_or_clear(location, fingerprint, overwrite)
    if reused is not None:
        return reused

    config = {
        "dataset": dataset_name if isinstance(dataset_name, str) else type(dataset_name).__name__,
        "dataset_config_name": dataset_config_name,
        "data_dir": data_dir,
        "data_files": identity.get("data_files"),
        "revision": revision,
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
    encoder, manifest.encoder = _choose_encoder(
        encoder, backend_json(tok), eos_token_id=eos_id if use_eos_token else None,
        add_special_tokens=add_special_tokens, dtype=dtype.name,
        sample=[t for name in documents.splits for t in documents.head(name, VERIFY_DOCUMENTS)],
    )
    # Staging, commit and cleanup: zarrtok.storage.commit (atomic local switch, remote lock + last-write
    # switch, conditional commit when not overwriting, sweeping of dead writers' leftovers).
    try:
        staging = staging_location(location, replace=overwrite is not False, expected=existing)
    except CommitConflictError:
        reused = _reuse_after_conflict(location, fingerprint)
        if reused is not None:
            return reused
        raise
    logger.info("building %s (fingerprint %s) into %s", location.url, fingerprint[:12], staging.url)
    try:
        _write_store(
            staging, manifest, tok, documents, encoder,
            num_workers=int(num_workers), batch_size=int(batch_size), shard_size=shard_size,
            progress=progress, start_method=start_method,
        )
        staging.keep_tokenizer = set(tokenizer_files(tok))
        commit_staging(staging, location)
    except BaseException as exc:
        logger.info("build failed; removing %s", staging.url)
        try:
            discard_staging(staging)
        except Exception:  # pragma: no cover - best effort cleanup
            logger.exception("could not remove %s", staging.url)
        if isinstance(exc, CommitConflictError):
            reused = _reuse_after_conflict(location, fingerprint)
            if reused is not None:
                return reused
        raise
    store = TokenStore(location, read_manifest(location))
    logger.info("built %r", store)
    return store


ENCODERS = ("auto", "hf", "gigatoken", "tiktoken")
VERIFY_DOCUMENTS = 1000  # documents per split the fast path is checked on before a build uses it


def _open_documents(dataset_name: Any, *, columns: Any, separator: str, dataset_config_name: str | None,
                    data_dir: str | None, data_files: Any, revision: str | None,
                    load_dataset_kwargs: dict[str, Any] | None, validation_split: float | None,
                    test_split: float | None, seed: int, shuffle: bool, splits: Sequence[str] | None,
                    batch_size: int) -> tuple[Any, list[str], dict[str, Any]]:
    """The build's documents (split rules applied), its text columns and the source identity for the
    fingerprint: local JSON Lines files read directly when :func:`plan_json_lines` takes them,
    ``datasets.load_dataset`` otherwise."""
    jsonl_files = plan_json_lines(
        dataset_name, data_files=data_files, columns=columns, dataset_config_name=dataset_config_name,
        data_dir=data_dir, revision=revision, load_dataset_kwargs=load_dataset_kwargs, shuffle=shuffle,
    )
    if jsonl_files is not None:
        text_columns = ["text"] if columns is None else [columns] if isinstance(columns, str) else list(columns)
        if not text_columns:
            raise ValueError("columns must name at least one text column")
        documents = JsonLinesDocuments.open(
            jsonl_files, columns=text_columns, separator=separator, validation_split=validation_split,
            test_split=test_split, seed=seed, splits=splits, batch_size=batch_size,
        )
        logger.info("reading %d JSON Lines file(s) directly (no Arrow cache)", sum(len(v) for v in jsonl_files.values()))
        return documents, text_columns, documents.identity(data_files)
    source = load_source(
        dataset_name, dataset_config_name=dataset_config_name, data_dir=data_dir, data_files=data_files,
        revision=revision, load_dataset_kwargs=load_dataset_kwargs,
    )
    split_datasets = apply_split_rules(
        source, validation_split=validation_split, test_split=test_split, seed=seed, shuffle=shuffle, splits=splits,
    )
    text_columns = resolve_columns(split_datasets, columns)
    identity = source_identity(
        dataset_name, split_datasets, dataset_config_name=dataset_config_name, data_dir=data_dir,
        data_files=data_files, revision=revision,
    )
    return DatasetDocuments(split_datasets, text_columns, separator), text_columns, identity


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


def _write_store(
    staging: Location,
    manifest: Manifest,
    tok: Any,
    documents: Any,
    encoder: DocumentEncoder,
    *,
    num_workers: int,
    batch_size: int,
    shard_size: int | None,
    progress: bool,
    start_method: str | None,
) -> None:
    total_tokens = 0
    # Start worker processes before any Zarr I/O (no background threads exist yet when they fork).
    with _EncodePool(documents, encoder, num_workers, start_method) as pool:
        root = open_staging_root(staging, {ATTRIBUTE_KEY: manifest.to_json()})  # never clears an old store
        tok_group = root.create_group(TOKENIZER_GROUP)
        for name, data in tokenizer_files(tok).items():
            arr = tok_group.create_array(
                name, shape=(len(data),), chunks=(max(1, len(data)),), dtype="uint8",
                compressors=compressors_for(manifest.checksum), filters=None, fill_value=0,
                config={"write_empty_chunks": True},
            )
            arr[:] = np.frombuffer(data, dtype=np.uint8)

        for split in documents.splits:
            info = SplitInfo()
            writer, shard = None, None
            bar = tqdm(total=documents.num_documents(split), unit="doc", desc=f"tokenizing {split}", disable=not progress, dynamic_ncols=True)
            split_tokens = 0
            try:
                for tokens, lengths in pool.encode(split, batch_size):
                    if writer is None:
                        shard = _new_shard(len(info.shards), manifest, shard_suffix(staging))
                        group = root.create_group(shard_path(split, shard.name))
                        writer = ShardWriter(group, dtype=np.dtype(manifest.dtype), chunk_size=manifest.chunk_size,
                                             checksum=manifest.checksum,
                                             block_bytes=manifest.config.get("block_bytes"))
                    writer.add(tokens, lengths)
                    split_tokens += tokens.size
                    bar.update(lengths.size)
                    bar.set_postfix(tokens=f"{split_tokens:,}", refresh=False)
                    if shard_size is not None and writer.tokens.length >= shard_size:
                        _close_shard(shard, writer)
                        info.shards.append(shard)
                        writer = None
                if writer is None and not info.shards:  # an empty split still gets one (empty) shard
                    shard = _new_shard(0, manifest, shard_suffix(staging))
                    writer = ShardWriter(root.create_group(shard_path(split, shard.name)), dtype=np.dtype(manifest.dtype),
                                         chunk_size=manifest.chunk_size, checksum=manifest.checksum,
                                         block_bytes=manifest.config.get("block_bytes"))
                if writer is not None:
                    _close_shard(shard, writer)
                    info.shards.append(shard)
            finally:
                bar.close()
            manifest.splits[split] = info
            total_tokens += info.num_tokens
            logger.info("split %s: %d documents, %d tokens, %d shard(s)", split, info.num_documents, info.num_tokens,
                        len(info.shards))
    if total_tokens == 0:
        raise ValueError("the dataset produced no tokens: every document is empty")
    manifest.status = STATUS_COMPLETE
    root.attrs[ATTRIBUTE_KEY] = manifest.to_json()  # the commit point: the last write of the build


def _new_shard(index: int, manifest: Manifest, suffix: str = "") -> ShardInfo:
    # suffix: beside a complete remote store, names its old generation cannot have (storage.commit)
    return ShardInfo(shard_name(index) + suffix, 0, 0, id=new_id(), checksum=manifest.checksum)


def _close_shard(shard: ShardInfo, writer: ShardWriter) -> None:
    """Finish a shard's arrays and record what readers need in the manifest (format 2)."""
    shard.num_tokens, shard.num_documents = writer.close()
    shard.chunk_size = writer.tokens.array_chunk_size
    shard.block_bytes = writer.block_bytes


# -- parallel encoding ------------------------------------------------------------------------------
_WORKER_STATE: dict[str, Any] = {}


def _init_worker(documents: Any, encoder: DocumentEncoder) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per worker process: workers are the parallelism
    _WORKER_STATE.update(documents=documents, encoder=encoder)


def _encode_task(task: Any) -> tuple[np.ndarray, np.ndarray]:
    return _WORKER_STATE["encoder"].encode(_WORKER_STATE["documents"].texts(task))


class _EncodePool:
    """Encodes the tasks of a split's documents, in order, in-process or on a process pool."""

    def __init__(self, documents: Any, encoder: DocumentEncoder, num_workers: int, start_method: str | None):
        self.documents, self.encoder = documents, encoder
        self.num_workers = num_workers
        self.start_method = start_method or ("fork" if sys.platform.startswith("linux") else "spawn")
        self.pool = None

    def __enter__(self) -> "_EncodePool":
        if self.num_workers > 1:
            ctx = multiprocessing.get_context(self.start_method)
            self.pool = ctx.Pool(self.num_workers, initializer=_init_worker, initargs=(self.documents, self.encoder))
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()

    def encode(self, split: str, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        tasks = self.documents.tasks(split, batch_size)
        if self.pool is None:
            for task in tasks:
                yield self.encoder.encode(self.documents.texts(task))
        else:
            yield from self.pool.imap(_encode_task, tasks, chunksize=1)

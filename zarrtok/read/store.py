"""Opening a store: ``zarrtok.open(url)`` returns a :class:`TokenStore` with its splits, metadata,
tokenizer, token arrays, document offsets and datasets."""

from __future__ import annotations

import builtins
import functools
import json
import logging
import os
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr

from ..errors import IncompleteStoreError, StoreNotFoundError
from ..format import (
    CRC32C_BYTES,
    DOC_ENDS_CHUNK,
    DOC_ENDS_DTYPE,
    TOKENIZER_GROUP,
    Manifest,
    check_chunk_crc,
    doc_ends_path,
    manifest_chunk_layout,
    raw_chunk_layout,
    tokens_path,
)
from ..storage.commit import recover
from ..storage.copying import copy_store
from ..storage.location import Location, as_location
from ..storage.manifest_io import read_manifest
from ..storage.mapping import MapBudget
from ..storage.objects import RetryPolicy
from .remote import MODES
from .source import ShardSpec
from .token_array import TokenArray, make_shard_reader
from .analysis import AnalysisMixin

if TYPE_CHECKING:
    from ..train.dataset import TokenDataset
    from ..train.loader import TokenLoader

logger = logging.getLogger(__name__)

READER_OPTIONS = frozenset({"mode", "cache_bytes", "cache_dir", "cache_dir_bytes", "readahead", "max_mapped_chunks",
                            "verify", "retries", "deadline"})


def open(  # noqa: A001
    path_or_url: str | os.PathLike | Location,
    *,
    storage_options: dict[str, Any] | None = None,
    reader_options: dict[str, Any] | None = None,
) -> "TokenStore":
    """Open a complete zarrtok store at a local path or fsspec URL.

    ``reader_options`` (see the README section "Object storage"):

    * local stores: ``max_mapped_chunks`` (chunk maps kept by this store's readers; default the
      process-wide budget of 16384);
    * other stores: ``mode`` (``"auto"`` default, ``"range"``, ``"cache"``), ``cache_bytes``
      (per-process whole-chunk LRU, default 512 MiB), ``cache_dir`` / ``cache_dir_bytes`` (an
      on-disk chunk cache shared by processes), ``readahead`` (chunks prefetched ahead of a
      dataset's access order, default 2).
    """
    location = as_location(path_or_url, storage_options)
    policy = _retry_policy(reader_options or {})
    try:
        manifest = read_manifest(location, policy)
    except StoreNotFoundError:
        # a local overwrite interrupted between its two renames (no renameat2) hid the old store:
        # put it back rather than report nothing there
        if recover(location) is None:
            raise
        manifest = read_manifest(location, policy)
    return TokenStore(location, manifest, reader_options=reader_options)


def _retry_policy(options: dict[str, Any]) -> RetryPolicy:
    defaults = RetryPolicy()
    return RetryPolicy(retries=int(options.get("retries", defaults.retries)),
                       deadline=float(options.get("deadline", defaults.deadline)))


def copy(  # noqa: A001
    src: str | os.PathLike | Location,
    dst: str | os.PathLike | Location,
    *,
    src_storage_options: dict[str, Any] | None = None,
    dst_storage_options: dict[str, Any] | None = None,
    overwrite: bool = False,
    max_workers: int = 8,
    progress: bool = True,
) -> "TokenStore":
    """Copy the complete store at ``src`` to ``dst`` (any two paths or fsspec URLs), verifying every
    object's size and writing the manifest last; return the copy opened."""
    target = as_location(dst, dst_storage_options)
    manifest = copy_store(src, target, src_storage_options=src_storage_options, overwrite=overwrite,
                          max_workers=max_workers, progress=progress)
    return TokenStore(target, manifest)


class TokenStore(AnalysisMixin):
    """A committed zarrtok store: metadata, tokenizer, and readers for each split."""

    def __init__(self, location: Location, manifest: Manifest, *, reader_options: dict[str, Any] | None = None):
        self.location = location
        self.manifest = manifest
        self.reader_options = dict(reader_options or {})
        unknown = set(self.reader_options) - READER_OPTIONS
        if unknown:
            raise ValueError(f"unknown reader option(s) {sorted(unknown)}: use {sorted(READER_OPTIONS)}")
        mode = self.reader_options.get("mode")
        if mode is not None and mode not in MODES:
            raise ValueError(f"unknown read mode {mode!r}: use one of {MODES}")
        self._policy = _retry_policy(self.reader_options)
        self._tokens: dict[str, TokenArray] = {}
        self._documents: dict[str, np.ndarray] = {}

    # -- metadata -------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return self.location.url

    @property
    def splits(self) -> list[str]:
        """Split names in build order."""
        return list(self.manifest.splits)

    @property
    def config(self) -> dict[str, Any]:
        """The build configuration recorded in the store."""
        return self.manifest.config

    @property
    def fingerprint(self) -> str:
        """Hash of everything that determines the tokens (source, tokenizer, columns, rules)."""
        return self.manifest.fingerprint

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.manifest.dtype)

    @property
    def eos_token_id(self) -> int | None:
        return self.manifest.eos_token_id

    def num_tokens(self, split: str) -> int:
        return self._split(split).num_tokens

    def num_documents(self, split: str) -> int:
        return self._split(split).num_documents

    def _split(self, split: str):
        try:
            return self.manifest.splits[split]
        except KeyError:
            raise KeyError(f"unknown split {split!r}: the store has {self.splits}") from None

    def __repr__(self) -> str:
        sizes = ", ".join(f"{s}={self.num_tokens(s):,}" for s in self.splits)
        return f"TokenStore({self.url!r}, dtype={self.dtype}, tokens: {sizes}, fingerprint={self.fingerprint[:12]})"

    # -- Zarr access ----------------------------------------------------------------------------
    @property
    def group(self) -> zarr.Group:
        """The root group opened read-only with plain zarr (re-opened in a forked child)."""
        cached = getattr(self, "_group", None)
        if cached is None or cached[0] != os.getpid():
            cached = self._group = (os.getpid(), zarr.open_group(self.location.zarr_store(read_only=True), mode="r"))
        return cached[1]

    def _array_metadata(self, path: str) -> dict[str, Any]:
        try:
            return json.loads(self.location.fs.cat_file(f"{self.location.path}/{path}/zarr.json", start=0))
        except FileNotFoundError:
            raise IncompleteStoreError(f"{self.url}: array {path} is missing") from None

    # -- tokens ---------------------------------------------------------------------------------
    def _map_budget(self):
        """A store-wide mapping budget when ``reader_options["max_mapped_chunks"]`` is set, else the process one."""
        limit = self.reader_options.get("max_mapped_chunks")
        if not limit:
            return None
        if getattr(self, "_budget", None) is None:
            self._budget = MapBudget(limit)
        return self._budget

    def _shard_spec(self, split: str, shard) -> ShardSpec:
        """How to read one shard. Format 2 manifests carry the layout (no request per shard); local
        stores still read each array's ``zarr.json`` (a local file) to detect arrays rewritten in
        another encoding (read through Zarr) and metadata that disagrees with the manifest."""
        path = tokens_path(split, shard.name)
        common = dict(key=self.manifest.shard_key(split, shard), name=f"{split}/{shard.name}",
                      block_bytes=shard.block_bytes)
        if shard.chunk_size is not None and not self.location.is_local:
            layout = manifest_chunk_layout(self.dtype.name, shard.num_tokens, shard.chunk_size, shard.checksum)
            return ShardSpec(self.location, path, shard.num_tokens, shard.chunk_size, self.dtype.name, layout, **common)
        meta = self._array_metadata(path)
        try:
            layout = raw_chunk_layout(meta)
            shape = int(meta["shape"][0])
            dtype = np.dtype(meta["data_type"])
            chunk = int(meta["chunk_grid"]["configuration"]["chunk_shape"][0])
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise IncompleteStoreError(f"{self.url}: {path}/zarr.json is malformed ({exc})") from None
        if shape != shard.num_tokens:
            raise IncompleteStoreError(
                f"{self.url}: {path} holds {shape} tokens but the manifest says {shard.num_tokens}"
            )
        if dtype != self.dtype:
            raise IncompleteStoreError(f"{self.url}: {path} has dtype {meta['data_type']}, manifest says {self.dtype}")
        if layout is not None and shard.chunk_size is not None:
            expected = manifest_chunk_layout(self.dtype.name, shard.num_tokens, shard.chunk_size, shard.checksum)
            if layout != expected:
                raise IncompleteStoreError(
                    f"{self.url}: {path}/zarr.json disagrees with the manifest (chunks {layout.chunk_size} vs "
                    f"{expected.chunk_size}, checksum bytes {layout.trailer_bytes} vs {expected.trailer_bytes}): "
                    "the array metadata was edited; run `zarrtok verify`"
                )
        return ShardSpec(self.location, path, shape, chunk, self.dtype.name, layout, **common)

    def tokens(self, split: str) -> TokenArray:
        """The split's tokens as one contiguous array (memory-mapped locally)."""
        cached = self._tokens.get(split)
        if cached is not None:
            return cached
        info = self._split(split)
        options = {k: v for k, v in self.reader_options.items() if k not in ("retries", "deadline", "max_mapped_chunks")}
        readers = [make_shard_reader(self._shard_spec(split, shard), budget=self._map_budget(), policy=self._policy,
                                     **options)
                   for shard in info.shards]
        array = TokenArray(readers, self.dtype, name=split)
        self._tokens[split] = array
        return array

    def documents(self, split: str) -> np.ndarray:
        """Document offsets: int64 array of length ``num_documents + 1``; document ``d`` is tokens
        ``[offsets[d], offsets[d + 1])`` including its EOS. Empty source documents have length 0."""
        cached = self._documents.get(split)
        if cached is not None:
            return cached
        info = self._split(split)
        parts = [np.zeros(1, dtype=np.int64)]
        base = 0
        for shard, ends in zip(info.shards, self._doc_ends(split, info.shards)):
            if ends.size != shard.num_documents or (ends.size and int(ends[-1]) != shard.num_tokens) or (
                    ends.size > 1 and bool(np.any(ends[1:] < ends[:-1]))):
                raise IncompleteStoreError(f"{self.url}: document offsets of {split}/{shard.name} are inconsistent")
            parts.append(ends + base)
            base += shard.num_tokens
        offsets = np.concatenate(parts)
        offsets.flags.writeable = False
        self._documents[split] = offsets
        return offsets

    def _doc_ends(self, split: str, shards: list) -> list[np.ndarray]:
        """Each shard's document ends. Format 2 (with checksums): every chunk object of every shard in
        one concurrent round of GETs, CRC-checked; otherwise through Zarr, shard by shard."""
        if not shards or any(s.chunk_size is None or s.checksum != "crc32c" for s in shards):
            return [np.asarray(self.group[doc_ends_path(split, s.name)][:], dtype=np.int64) for s in shards]
        itemsize = DOC_ENDS_DTYPE.itemsize
        keys, sizes, owners = [], [], []
        for n, s in enumerate(shards):
            chunk = DOC_ENDS_CHUNK if s.num_documents >= DOC_ENDS_CHUNK else max(1, s.num_documents)
            for k in range(-(-s.num_documents // chunk)):
                keys.append(f"{doc_ends_path(split, s.name)}/c/{k}")
                sizes.append(chunk * itemsize + 4)
                owners.append((n, k * chunk, min(chunk, s.num_documents - k * chunk)))
        out = [np.empty(s.num_documents, dtype=np.int64) for s in shards]
        if keys:
            try:
                blobs = self.location.objects(self._policy).get_ranges(keys, [0] * len(keys), sizes)
            except FileNotFoundError as exc:
                raise IncompleteStoreError(f"{self.url}: document offsets of split {split!r} are missing: {exc}") from None
            for key, blob, (n, start, count) in zip(keys, blobs, owners):
                check_chunk_crc(blob, f"store {self.url}, document offsets {key}")
                out[n][start : start + count] = np.frombuffer(blob, dtype=DOC_ENDS_DTYPE, count=count)
        return out

    def dataset(self, split: str, seq_len: int, *, stride: int | None = None, bos: bool | int = False,
                drop_last: bool = True, pad_id: int | None = None, ignore_index: int = -100,
                mask_overlap: bool = False, document_outputs: bool = False,
                mask_document_boundaries: bool = False, as_dict: bool = False,
                label_format: str | None = None) -> "TokenDataset":
        """A :class:`TokenDataset` of ``seq_len`` windows over ``split``.

        Defaults give Archai's windows as ``(inputs, labels)``. ``stride`` / ``mask_overlap``:
        overlapping evaluation windows; ``drop_last=False``: pad the last window (``pad_id``,
        default the store's EOS id, else 0; labels ``ignore_index``); ``bos=True``: start every
        window with the tokenizer's BOS token (an error if it defines none; an int is used as the
        id); ``document_outputs`` / ``mask_document_boundaries``: per-document ``position_ids``,
        ``cu_seqlens``, ``max_seqlen`` and masked cross-document labels (see
        :class:`TokenDataset`). ``label_format``: dict items (``as_dict`` / ``document_outputs``)
        default to ``"hf"`` (``labels`` aligned with ``input_ids``, as ``transformers`` causal LMs
        expect: they shift internally); ``"shifted"`` gives the shifted targets under the key
        ``next_token_labels`` so no model mistakes them for ``labels``.
        """
        if bos is True:
            bos_id = self.tokenizer.bos_token_id
            if bos_id is None:
                raise ValueError(f"bos=True, but the tokenizer of {self.url} defines no BOS token; pass bos=<id>")
        elif bos is False or bos is None:
            bos_id = None
        else:
            bos_id = int(bos)
        if pad_id is None:
            pad_id = self.eos_token_id if self.eos_token_id is not None else 0
        from ..train.dataset import TokenDataset

        offsets = self.documents(split) if (document_outputs or mask_document_boundaries) else None
        return TokenDataset(self.tokens(split), seq_len, split=split, stride=stride, bos_id=bos_id,
                            drop_last=drop_last, pad_id=pad_id, ignore_index=ignore_index, mask_overlap=mask_overlap,
                            doc_offsets=offsets, document_outputs=document_outputs,
                            mask_document_boundaries=mask_document_boundaries, as_dict=as_dict,
                            label_format=label_format)

    def dataloader(self, split: str, seq_len: int, batch_size: int, *, shuffle: bool | str = True, seed: int = 0,
                   rank: int | None = None, world_size: int | None = None, num_workers: int = 0,
                   return_index: bool = False, **options: Any) -> "TokenLoader":
        """A :class:`~zarrtok.loader.TokenLoader` (shuffled, distributed, resumable dict batches)
        over ``seq_len`` windows of ``split``. ``options`` are :meth:`dataset`'s window options
        and :class:`~zarrtok.loader.TokenLoader`'s (``remainder``, ``label_format``,
        ``block_chunks``, ``epoch``, ``read_ahead``, DataLoader options such as ``pin_memory``)."""
        from ..train.loader import TokenLoader

        window_keys = {"stride", "bos", "drop_last", "pad_id", "ignore_index", "mask_overlap", "document_outputs",
                       "mask_document_boundaries"}
        window = {k: options.pop(k) for k in list(options) if k in window_keys}
        ds = self.dataset(split, seq_len, **window)
        return TokenLoader(ds, batch_size=batch_size, shuffle=shuffle, seed=seed, rank=rank, world_size=world_size,
                           num_workers=num_workers, return_index=return_index, **options)

    # -- tokenizer ------------------------------------------------------------------------------
    def tokenizer_files(self) -> dict[str, bytes]:
        """The stored tokenizer files (``tokenizer.json`` and its config) as bytes."""
        group = self.group[TOKENIZER_GROUP]
        return {name: bytes(np.asarray(arr[:], dtype=np.uint8)) for name, arr in group.arrays()}

    @functools.cached_property
    def tokenizer(self):
        """A working ``transformers`` tokenizer restored from the store's ``tokenizer.json``."""
        from .tokenizer import tokenizer_from_files

        return tokenizer_from_files(self.tokenizer_files(), expected_sha256=self.manifest.tokenizer.get("sha256"),
                                    where=self.url)

    def save_tokenizer(self, directory: str | os.PathLike) -> list[str]:
        """Write the stored tokenizer files into ``directory`` (loadable with ``AutoTokenizer``)."""
        os.makedirs(directory, exist_ok=True)
        written = []
        for name, data in self.tokenizer_files().items():
            path = os.path.join(directory, name)
            with builtins.open(path, "wb") as f:
                f.write(data)
            written.append(path)
        return written

    def copy_to(self, dst: str | os.PathLike | Location, *, storage_options: dict[str, Any] | None = None,
                overwrite: bool = False, progress: bool = True) -> "TokenStore":
        """Copy this store to ``dst`` (any path or URL), verifying sizes; return the copy opened."""
        return copy(self.location, dst, dst_storage_options=storage_options, overwrite=overwrite, progress=progress)

    def append(self, dataset_name: Any = None, **kwargs: Any) -> "TokenStore":
        """Append documents (same source arguments as :func:`zarrtok.build`) as new shards; return the
        store at its new generation. This object keeps the view it was opened with (see
        :mod:`zarrtok.ingest.appending`)."""
        from ..ingest.appending import append  # lazy: reading a store never imports the build

        return append(self, dataset_name, **kwargs)

    def verify(self, *, progress: bool = True):
        """Check every chunk's CRC-32C, array metadata vs the manifest, document offsets, the
        tokenizer digest and that every id is in the vocabulary; returns a
        :class:`~zarrtok.read.verify.VerifyReport` naming every bad object (``report.ok``)."""
        from .verify import verify_store

        return verify_store(self, progress=progress)

    # -- summary --------------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """A JSON-able summary: splits (tokens, documents, shards, chunks, bytes), dtype, tokenizer, fingerprint."""
        splits = {}
        for split in self.splits:
            info = self._split(split)
            chunks = 0
            stored = 0
            for shard in info.shards:
                if shard.chunk_size:  # format 2: the manifest says it all (no request per shard)
                    chunk = int(shard.chunk_size)
                    trailer = CRC32C_BYTES if shard.checksum else 0
                else:
                    meta = self._array_metadata(tokens_path(split, shard.name))
                    layout = raw_chunk_layout(meta)
                    chunk = int(meta["chunk_grid"]["configuration"]["chunk_shape"][0])
                    trailer = layout.trailer_bytes if layout else 0
                n = -(-shard.num_tokens // chunk) if shard.num_tokens else 0
                chunks += n
                stored += n * (chunk * self.dtype.itemsize + trailer)
            splits[split] = {
                "tokens": info.num_tokens,
                "documents": info.num_documents,
                "shards": len(info.shards),
                "chunks": chunks,
                "token_bytes": info.num_tokens * self.dtype.itemsize,
                "stored_bytes": stored,
            }
        m = self.manifest
        return {
            "url": self.url,
            "format_version": m.format_version,
            "fingerprint": m.fingerprint,
            "dtype": m.dtype,
            "chunk_size": m.chunk_size,
            "checksum": m.checksum,
            "eos_token_id": m.eos_token_id,
            "encoder": m.encoder,
            "tokenizer": m.tokenizer,
            "splits": splits,
            "config": m.config,
            "created": m.created,
            "zarrtok_version": m.zarrtok_version,
            "generation": m.generation,
            "history": [{k: h.get(k) for k in ("action", "created", "documents", "shards", "generation")}
                        for h in m.history],
        }


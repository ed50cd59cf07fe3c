"""The manifest: the root group's ``zarrtok`` attribute, everything a reader needs to open a store.

It is written with ``status: "building"`` when a build starts and rewritten with ``status:
"complete"`` as the build's last write (the commit point; see :mod:`zarrtok.storage.commit`).
Readers refuse anything that is not complete.

Format version 2 adds, per shard, what a reader needs to read it without fetching the shard's own
``zarr.json`` (``chunk_size``, ``checksum``) and a unique ``id`` written at build time; the manifest
gets a ``generation`` id, new for every build or overwrite. Caches key on shard ids (the content),
never on URLs, so a store rebuilt at the same URL can never be served from an old cache entry.
Version 1 stores (no ids) are still read: their shards are identified by fingerprint + creation
time + path, and their layout comes from each array's ``zarr.json``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from ..errors import FormatVersionError, IncompleteStoreError
from .layout import SUPPORTED_TOKEN_DTYPES, check_node_name

FORMAT_NAME = "zarrtok"
FORMAT_VERSION = 2
READABLE_FORMAT_VERSIONS = (1, 2)
ATTRIBUTE_KEY = "zarrtok"
STATUS_BUILDING = "building"
STATUS_COMPLETE = "complete"


def new_id() -> str:
    """A fresh random id (128 bits, hex) for a shard or a store generation."""
    return uuid.uuid4().hex


@dataclass
class ShardInfo:
    """One shard of a split: its name, sizes, and (format 2) its id and token-array layout."""

    name: str
    num_tokens: int
    num_documents: int
    id: str = ""  # unique per written shard; "" in format-1 stores
    chunk_size: int | None = None  # the token array's chunk length; None: read it from zarr.json
    checksum: str | None = None  # "crc32c" or None (only meaningful with chunk_size)
    #: where the shard's documents came from, in order: runs ``[source, first_row, count]`` where
    #: ``source`` indexes ``Manifest.sources`` (empty when the build did not record it)
    provenance: list[list[int]] = field(default_factory=list)
    #: bytes per checksummed block (the shard has a ``block_crc32c`` array); None: no block checksums
    block_bytes: int | None = None

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "num_tokens": self.num_tokens, "num_documents": self.num_documents}
        if self.id:
            d["id"] = self.id
        if self.chunk_size is not None:
            d["chunk_size"] = self.chunk_size
            d["checksum"] = self.checksum
        if self.block_bytes:
            d["block_bytes"] = self.block_bytes
        if self.provenance:
            d["provenance"] = [list(map(int, run)) for run in self.provenance]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "ShardInfo":
        chunk = d.get("chunk_size")
        return cls(name=check_node_name(str(d["name"]), "shard"), num_tokens=int(d["num_tokens"]),
                   num_documents=int(d["num_documents"]), id=str(d.get("id", "")),
                   chunk_size=int(chunk) if chunk is not None else None, checksum=d.get("checksum"),
                   provenance=[[int(x) for x in run] for run in d.get("provenance") or []],
                   block_bytes=int(d["block_bytes"]) if d.get("block_bytes") else None)


@dataclass
class SplitInfo:
    """One split: its shards in stream order."""

    shards: list[ShardInfo] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(s.num_tokens for s in self.shards)

    @property
    def num_documents(self) -> int:
        return sum(s.num_documents for s in self.shards)

    def to_json(self) -> dict[str, Any]:
        return {
            "num_tokens": self.num_tokens,
            "num_documents": self.num_documents,
            "shards": [s.to_json() for s in self.shards],
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "SplitInfo":
        info = cls(shards=[ShardInfo.from_json(s) for s in d["shards"]])
        if "num_tokens" in d and int(d["num_tokens"]) != info.num_tokens:
            raise IncompleteStoreError("manifest token count does not match the sum of its shards")
        return info


@dataclass
class Manifest:
    """Everything a reader needs, stored as the root group's ``zarrtok`` attribute."""

    fingerprint: str
    dtype: str
    chunk_size: int
    checksum: str | None
    splits: dict[str, SplitInfo]
    tokenizer: dict[str, Any]
    config: dict[str, Any]
    encoder: str
    eos_token_id: int | None
    status: str = STATUS_BUILDING
    format_version: int = FORMAT_VERSION
    zarrtok_version: str = ""
    created: str = ""
    generation: str = ""  # unique per build/overwrite ("" in format-1 stores)
    #: the sources documents came from (``ShardInfo.provenance`` indexes this list), e.g.
    #: ``{"kind": "jsonl", "path": "/data/a.jsonl"}``, ``{"kind": "parquet", ...}``, ``{"kind": "iterable", ...}`` or
    #: ``{"kind": "datasets", "name": ..., "split": "train"}`` (docs/format.md lists their fields)
    sources: list[dict[str, Any]] = field(default_factory=list)
    #: what happened to the store over time (build, append), oldest first
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "format_version": self.format_version,
            "status": self.status,
            "generation": self.generation,
            "fingerprint": self.fingerprint,
            "dtype": self.dtype,
            "chunk_size": self.chunk_size,
            "checksum": self.checksum,
            "eos_token_id": self.eos_token_id,
            "encoder": self.encoder,
            "tokenizer": self.tokenizer,
            "config": self.config,
            "splits": {name: split.to_json() for name, split in self.splits.items()},
            "zarrtok_version": self.zarrtok_version,
            "created": self.created,
            "sources": self.sources,
            "history": self.history,
        }

    def shard_key(self, split: str, shard: ShardInfo) -> str:
        """The identity caches key a shard's chunks by: its id, or for a format-1 store (no ids) a
        digest of the fingerprint, the creation time and the shard's path."""
        if shard.id:
            return shard.id
        import hashlib

        legacy = f"{self.fingerprint}|{self.created}|{split}/{shard.name}|{shard.num_tokens}"
        return "v1-" + hashlib.sha256(legacy.encode()).hexdigest()[:32]

    @classmethod
    def from_attributes(cls, attrs: dict[str, Any], where: str) -> "Manifest":
        """Parse and validate the root attributes of the store at ``where``."""
        d = attrs.get(ATTRIBUTE_KEY)
        if not isinstance(d, dict) or d.get("format") != FORMAT_NAME:
            raise IncompleteStoreError(f"{where} is a Zarr group but not a zarrtok store (no manifest)")
        try:
            version = int(d.get("format_version", -1))
        except (TypeError, ValueError):
            raise IncompleteStoreError(f"{where} has a malformed zarrtok manifest: bad format_version") from None
        if version > FORMAT_VERSION:
            raise FormatVersionError(
                f"{where} uses zarrtok format {version}; this zarrtok reads up to {FORMAT_VERSION}: upgrade zarrtok"
            )
        if version not in READABLE_FORMAT_VERSIONS:
            raise IncompleteStoreError(f"{where} has an unknown zarrtok format version {version}")
        if d.get("status") != STATUS_COMPLETE:
            raise IncompleteStoreError(
                f"{where} is an incomplete zarrtok store (status={d.get('status')!r}): its build did not finish; "
                "rebuild it with overwrite=True"
            )
        try:
            manifest = cls(
                fingerprint=str(d["fingerprint"]),
                dtype=str(d["dtype"]),
                chunk_size=int(d["chunk_size"]),
                checksum=d.get("checksum"),
                splits={check_node_name(str(k), "split"): SplitInfo.from_json(v) for k, v in d["splits"].items()},
                tokenizer=dict(d.get("tokenizer") or {}),
                config=dict(d.get("config") or {}),
                encoder=str(d.get("encoder", "")),
                eos_token_id=d.get("eos_token_id"),
                status=str(d["status"]),
                format_version=version,
                zarrtok_version=str(d.get("zarrtok_version", "")),
                created=str(d.get("created", "")),
                generation=str(d.get("generation", "")),
                sources=[dict(x) for x in d.get("sources") or []],
                history=[dict(x) for x in d.get("history") or []],
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise IncompleteStoreError(f"{where} has a malformed zarrtok manifest: {exc}") from exc
        if manifest.dtype not in SUPPORTED_TOKEN_DTYPES:
            raise IncompleteStoreError(f"{where}: unsupported token dtype {manifest.dtype!r}")
        return manifest

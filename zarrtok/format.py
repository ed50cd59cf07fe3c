"""The on-disk layout of a zarrtok store (read this next to docs/format.md).

A store is one Zarr v3 group::

    <root>/zarr.json                                  group; attributes["zarrtok"] = manifest
    <root>/tokenizer/<file name>                      uint8 arrays: tokenizer.json, tokenizer_config.json, ...
    <root>/splits/<split>/shards/<shard>/tokens       1-D token ids (uint16 | uint32), raw bytes (+ crc32c)
    <root>/splits/<split>/shards/<shard>/doc_ends     1-D uint64: end offset of each document, shard-local

A split is the concatenation of its shards in manifest order. Shards are the unit of parallel
writing: every shard is its own set of arrays, so concurrent writers (a Dask build, an append)
never touch the same chunk, and a build commits by rewriting only the root manifest.

The manifest (root attribute ``zarrtok``) is written with ``status: "building"`` when a build
starts and rewritten with ``status: "complete"`` as the build's very last write. Readers refuse
anything that is not complete.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import FormatVersionError, IncompleteStoreError

FORMAT_NAME = "zarrtok"
FORMAT_VERSION = 1
ATTRIBUTE_KEY = "zarrtok"
STATUS_BUILDING = "building"
STATUS_COMPLETE = "complete"

TOKENIZER_GROUP = "tokenizer"
SPLITS_GROUP = "splits"
TOKENS_ARRAY = "tokens"
DOC_ENDS_ARRAY = "doc_ends"
DOC_ENDS_DTYPE = np.dtype("<u8")
DOC_ENDS_CHUNK = 1 << 20  # document offsets per chunk (8 MiB)

#: Default chunk size in bytes: see docs/format.md ("Chunk size") for the reasoning.
DEFAULT_CHUNK_BYTES = 8 << 20

SUPPORTED_TOKEN_DTYPES = ("uint16", "uint32")
CHECKSUM_CODECS = ("crc32c",)

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def check_node_name(name: str, what: str) -> str:
    """Return ``name`` if it is usable as a Zarr node name here, else raise ``ValueError``."""
    if not isinstance(name, str) or not _NAME_RE.match(name) or name.startswith("__"):
        raise ValueError(
            f"invalid {what} name {name!r}: use letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def shard_name(index: int) -> str:
    """Name of the shard with the given ordinal (zero-padded so names sort in order)."""
    return f"{index:06d}"


def shard_path(split: str, shard: str) -> str:
    """Path of a shard group relative to the store root."""
    return f"{SPLITS_GROUP}/{split}/shards/{shard}"


def tokens_path(split: str, shard: str) -> str:
    """Path of a shard's token array relative to the store root."""
    return f"{shard_path(split, shard)}/{TOKENS_ARRAY}"


def doc_ends_path(split: str, shard: str) -> str:
    """Path of a shard's document-end array relative to the store root."""
    return f"{shard_path(split, shard)}/{DOC_ENDS_ARRAY}"


def tokenizer_file_path(file_name: str) -> str:
    """Path of the uint8 array holding one tokenizer file."""
    return f"{TOKENIZER_GROUP}/{file_name}"


def dtype_for_max_id(max_id: int) -> np.dtype:
    """Smallest supported unsigned dtype that holds every id in ``[0, max_id]``."""
    if max_id < 0:
        raise ValueError(f"invalid maximum token id {max_id}")
    if max_id <= np.iinfo(np.uint16).max:
        return np.dtype("uint16")
    if max_id <= np.iinfo(np.uint32).max:
        return np.dtype("uint32")
    raise ValueError(f"token id {max_id} does not fit in uint32")


@dataclass
class ShardInfo:
    """One shard of a split: its name and sizes."""

    name: str
    num_tokens: int
    num_documents: int

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "num_tokens": self.num_tokens, "num_documents": self.num_documents}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "ShardInfo":
        return cls(name=str(d["name"]), num_tokens=int(d["num_tokens"]), num_documents=int(d["num_documents"]))


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

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "format_version": self.format_version,
            "status": self.status,
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
        }

    @classmethod
    def from_attributes(cls, attrs: dict[str, Any], where: str) -> "Manifest":
        """Parse and validate the root attributes of the store at ``where``."""
        d = attrs.get(ATTRIBUTE_KEY)
        if not isinstance(d, dict) or d.get("format") != FORMAT_NAME:
            raise IncompleteStoreError(f"{where} is a Zarr group but not a zarrtok store (no manifest)")
        version = int(d.get("format_version", -1))
        if version > FORMAT_VERSION:
            raise FormatVersionError(
                f"{where} uses zarrtok format {version}; this zarrtok reads up to {FORMAT_VERSION}: upgrade zarrtok"
            )
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
                splits={str(k): SplitInfo.from_json(v) for k, v in d["splits"].items()},
                tokenizer=dict(d.get("tokenizer") or {}),
                config=dict(d.get("config") or {}),
                encoder=str(d.get("encoder", "")),
                eos_token_id=d.get("eos_token_id"),
                status=str(d["status"]),
                format_version=version,
                zarrtok_version=str(d.get("zarrtok_version", "")),
                created=str(d.get("created", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise IncompleteStoreError(f"{where} has a malformed zarrtok manifest: {exc}") from exc
        if manifest.dtype not in SUPPORTED_TOKEN_DTYPES:
            raise IncompleteStoreError(f"{where}: unsupported token dtype {manifest.dtype!r}")
        return manifest


@dataclass(frozen=True)
class RawChunkLayout:
    """How to find a token array's chunks as raw little-endian bytes, bypassing Zarr's codec pipeline.

    Valid only for arrays whose codecs are ``bytes`` (little endian) optionally followed by
    ``crc32c``: then chunk ``k`` is the file ``<array>/<chunk_key(k)>`` holding ``chunk_size``
    items at byte offset 0 (the last chunk padded to full size; a 4-byte checksum may follow).
    """

    dtype: str
    shape: int
    chunk_size: int
    key_prefix: str  # e.g. "c/" (default encoding) or "" (v2 encoding)
    trailer_bytes: int  # bytes after the data in each chunk file (4 for crc32c)
    fill_value: int = 0  # what pads the last chunk

    def chunk_key(self, k: int) -> str:
        return f"{self.key_prefix}{k}"

    @property
    def num_chunks(self) -> int:
        return -(-self.shape // self.chunk_size) if self.shape else 0

    def used_items(self, k: int) -> int:
        """Items of chunk ``k`` inside the array (the rest of the last chunk is padding)."""
        return max(0, min(self.chunk_size, self.shape - k * self.chunk_size))


def raw_chunk_layout(array_metadata: dict[str, Any]) -> RawChunkLayout | None:
    """Parse a Zarr v3 ``zarr.json`` of a 1-D array; return its raw layout, or ``None`` when its
    chunks are not raw bytes (compressed, big-endian, sharded...) and must be read through Zarr."""
    try:
        if array_metadata.get("zarr_format") != 3 or array_metadata.get("node_type") != "array":
            return None
        shape = array_metadata["shape"]
        grid = array_metadata["chunk_grid"]
        if len(shape) != 1 or grid.get("name") != "regular":
            return None
        chunk = int(grid["configuration"]["chunk_shape"][0])
        codecs = array_metadata["codecs"]
        if not codecs or codecs[0].get("name") != "bytes":
            return None
        endian = (codecs[0].get("configuration") or {}).get("endian", "little")
        dtype = np.dtype(array_metadata["data_type"])
        if endian != "little" and dtype.itemsize > 1:
            return None
        trailer = 0
        for codec in codecs[1:]:
            if codec.get("name") == "crc32c":
                trailer += 4
            else:
                return None
        if array_metadata.get("storage_transformers"):
            return None
        encoding = array_metadata.get("chunk_key_encoding", {"name": "default"})
        separator = (encoding.get("configuration") or {}).get("separator", "/" if encoding.get("name") == "default" else ".")
        if encoding.get("name") == "default":
            prefix = "c" + separator
        elif encoding.get("name") == "v2":
            prefix = ""
        else:
            return None
        fill = array_metadata.get("fill_value", 0)
        fill = int(fill) if fill is not None else 0
        return RawChunkLayout(dtype=dtype.name, shape=int(shape[0]), chunk_size=chunk, key_prefix=prefix,
                              trailer_bytes=trailer, fill_value=fill)
    except (KeyError, TypeError, ValueError, IndexError):
        return None

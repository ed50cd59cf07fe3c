"""The on-disk layout of a zarrtok store (read this next to docs/format.md).

A store is one Zarr v3 group::

    <root>/zarr.json                                  group; attributes["zarrtok"] = manifest
    <root>/tokenizer/<file name>                      uint8 arrays: tokenizer.json, tokenizer_config.json, ...
    <root>/splits/<split>/shards/<shard>/tokens       1-D token ids (uint16 | uint32), raw bytes (+ crc32c)
    <root>/splits/<split>/shards/<shard>/doc_ends     1-D uint64: end offset of each document, shard-local

A split is the concatenation of its shards in manifest order. Shards are the unit of parallel
writing: every shard is its own set of arrays, so concurrent writers (a Dask build, an append)
never touch the same chunk, and a build commits by rewriting only the root manifest.

The manifest (root attribute ``zarrtok``, :mod:`zarrtok.format.manifest`) says which shards make
up each split; the raw chunk layout is in :mod:`zarrtok.format.raw_chunks`.
"""

from __future__ import annotations

import re

import numpy as np


TOKENIZER_GROUP = "tokenizer"
SPLITS_GROUP = "splits"
TOKENS_ARRAY = "tokens"
DOC_ENDS_ARRAY = "doc_ends"
BLOCK_CRCS_ARRAY = "block_crc32c"  # CRC-32C of every block of every token chunk (verified ranged reads)
BLOCK_CRCS_DTYPE = np.dtype("<u4")
#: Bytes per checksummed block of a token chunk. A verified ranged read fetches the whole blocks
#: around a window: 16 KiB holds an 8192-token uint16 window in 1-2 blocks, and the checksums cost
#: 4 bytes per 16 KiB (0.024%; 2 KiB per 8 MiB chunk, one GET per shard on its first ranged read).
DEFAULT_BLOCK_BYTES = 16 << 10
DOC_ENDS_DTYPE = np.dtype("<u8")
DOC_ENDS_CHUNK = 1 << 20  # document offsets per chunk (8 MiB)

#: Default chunk size in bytes: see docs/format.md ("Chunk size") for the reasoning.
DEFAULT_CHUNK_BYTES = 8 << 20

SUPPORTED_TOKEN_DTYPES = ("uint16", "uint32")

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


def block_crcs_path(split: str, shard: str) -> str:
    """Path of a shard's block-checksum array relative to the store root."""
    return f"{shard_path(split, shard)}/{BLOCK_CRCS_ARRAY}"


def blocks_per_chunk(chunk_size: int, itemsize: int, block_bytes: int) -> int:
    """Checksummed blocks in one token chunk (the last block of a chunk may be shorter)."""
    return -(-(chunk_size * itemsize) // block_bytes)


def dtype_for_max_id(max_id: int) -> np.dtype:
    """Smallest supported unsigned dtype that holds every id in ``[0, max_id]``."""
    if max_id < 0:
        raise ValueError(f"invalid maximum token id {max_id}")
    if max_id <= np.iinfo(np.uint16).max:
        return np.dtype("uint16")
    if max_id <= np.iinfo(np.uint32).max:
        return np.dtype("uint32")
    raise ValueError(f"token id {max_id} does not fit in uint32")

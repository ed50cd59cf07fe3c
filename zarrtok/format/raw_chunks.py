"""The raw chunk layout of a token array, and CRC-32C checks of its chunks.

A token array whose codecs are ``bytes`` (little endian) optionally followed by ``crc32c`` stores
chunk ``k`` as the object ``<array>/c/<k>``: ``chunk_size`` items at byte offset 0 (the last chunk
padded with the fill value), then a 4-byte little-endian CRC-32C of those bytes. Readers that know
this layout memory-map chunk files or ask for exact byte ranges instead of going through Zarr.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import google_crc32c  # zarr's crc32c codec depends on it
import numpy as np

from ..errors import ChecksumError

#: Bytes a ``crc32c`` codec appends to each chunk.
CRC32C_BYTES = 4
#: CRC-32C of (data + its little-endian CRC-32C) is this constant for intact data (the CRC residue).
CRC32C_RESIDUE = 0x48674BC7


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


def manifest_chunk_layout(dtype: str, num_tokens: int, chunk_size: int, checksum: str | None) -> RawChunkLayout:
    """The layout zarrtok's writer gives a shard's token array (format 2 records its inputs in the
    manifest, so readers need not fetch the array's ``zarr.json``)."""
    return RawChunkLayout(dtype=np.dtype(dtype).name, shape=int(num_tokens), chunk_size=int(chunk_size),
                          key_prefix="c/", trailer_bytes=CRC32C_BYTES if checksum == "crc32c" else 0, fill_value=0)


def _buffer(data: Any) -> Any:
    """``data`` in a form google_crc32c takes without a copy (it refuses memoryview / bytearray)."""
    return data if isinstance(data, (bytes, np.ndarray)) else np.frombuffer(data, dtype=np.uint8)


def crc32c(data: Any) -> int:
    """CRC-32C of a bytes-like object (no copy for contiguous buffers)."""
    return google_crc32c.value(_buffer(data))


def crc32c_extend(crc: int, data: Any) -> int:
    """Extend a CRC-32C over more bytes."""
    return google_crc32c.extend(crc, _buffer(data))


def check_chunk_crc(raw: Any, what: str) -> None:
    """Check a whole chunk object (data followed by its 4-byte CRC-32C) without copying the data."""
    if crc32c(raw) != CRC32C_RESIDUE:
        raise ChecksumError(f"checksum mismatch in {what}: the chunk is corrupted")


def check_padded_chunk_crc(data: Any, pad: Any, stored: bytes, what: str) -> None:
    """Check a padded chunk from its used bytes, the padding it must hold (the array's fill value,
    never downloaded) and its stored little-endian CRC-32C."""
    if crc32c_extend(crc32c(data), pad) != int.from_bytes(stored, "little"):
        raise ChecksumError(f"checksum mismatch in {what}: the chunk is corrupted")



def block_crcs(chunk_bytes: Any, block_bytes: int) -> np.ndarray:
    """CRC-32C of each ``block_bytes`` block of one chunk's stored data bytes (the last block may be
    shorter). Used by the writer to record, and by ranged readers to check, partial reads."""
    data = np.frombuffer(chunk_bytes, dtype=np.uint8) if not isinstance(chunk_bytes, np.ndarray) else \
        chunk_bytes.view(np.uint8).reshape(-1)
    n = -(-data.size // block_bytes)
    return np.fromiter((google_crc32c.value(data[i * block_bytes:(i + 1) * block_bytes]) for i in range(n)),
                       dtype=np.uint32, count=n)

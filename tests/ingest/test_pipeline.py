"""The build pipeline's hot path keeps the bytes: chunk files written directly (no Zarr chunk buffer)
equal what Zarr writes, and the encoders' vectorised assembly equals the per-document reference."""

from __future__ import annotations

import os

import numpy as np
import pytest
import zarr

import zarrtok
from zarrtok.ingest import writer as writer_module
from zarrtok.ingest.writer import ShardWriter


def _files(root: str) -> dict[str, bytes]:
    out = {}
    for base, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(base, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


def _write(root: str, batches, *, checksum, chunk_size: int, block_bytes: int | None) -> dict[str, bytes]:
    group = zarr.open_group(root, mode="w")
    w = ShardWriter(group.create_group("shard"), dtype=np.dtype("uint16"), chunk_size=chunk_size, checksum=checksum,
                    block_bytes=block_bytes)
    for tokens, lengths in batches:
        w.add(tokens, lengths)
    w.close()
    return _files(root)


@pytest.mark.parametrize("checksum,block_bytes", [("crc32c", 64), ("crc32c", None), (None, None)])
@pytest.mark.parametrize("total", [0, 7, 100, 300, 1001])
def test_direct_chunk_files_equal_what_zarr_writes(tmp_path, monkeypatch, checksum, block_bytes, total):
    rng = np.random.default_rng(total)
    cuts = np.sort(rng.integers(0, total + 1, 6)) if total else np.zeros(0, dtype=np.int64)
    tokens = rng.integers(0, 60000, total).astype(np.uint16)
    batches = []
    for a, b in zip(np.r_[0, cuts], np.r_[cuts, total]):
        part = tokens[a:b]
        lengths = np.array([part.size // 2, 0, part.size - part.size // 2], dtype=np.int64)
        batches.append((part, lengths))
    direct = _write(str(tmp_path / "direct"), batches, checksum=checksum, chunk_size=100, block_bytes=block_bytes)
    monkeypatch.setattr(writer_module, "_direct_chunk_files", lambda group, array: None)
    through_zarr = _write(str(tmp_path / "zarr"), batches, checksum=checksum, chunk_size=100, block_bytes=block_bytes)
    assert direct.keys() == through_zarr.keys()
    for name in direct:
        assert direct[name] == through_zarr[name], name


def test_a_build_reads_back_with_its_checksums(tmp_path, jsonl_path, tokenizer_dir, truth):
    store = zarrtok.build("json", data_files=jsonl_path, tokenizer_name=tokenizer_dir, output=str(tmp_path / "s"),
                          chunk_size=333, progress=False, encoder="gigatoken", validation_split=0.0)
    np.testing.assert_array_equal(np.asarray(store.tokens("train")), truth)
    assert zarrtok.open(str(tmp_path / "s")).verify().ok

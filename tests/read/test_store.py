"""Opening stores: metadata, document offsets, the restored tokenizer, info, the Zarr read path
(non-local stores, via fsspec's memory://), and refusal of things that are not complete stores."""

from __future__ import annotations

import json
import os

import datasets
import numpy as np
import pytest

import zarrtok
from zarrtok.read.local import LocalShardReader
from zarrtok.read.zarr_fallback import ZarrShardReader
from zarrtok.read.remote import RemoteShardReader
from zarrtok.errors import FormatVersionError, IncompleteStoreError, StoreNotFoundError

from ..conftest import expected_doc_lengths


def test_open_exposes_metadata(small_chunk_store, truth, tokenizer):
    store = zarrtok.open(small_chunk_store.url)
    assert store.splits == ["train"]
    assert store.fingerprint == small_chunk_store.fingerprint and len(store.fingerprint) == 64
    assert store.config["columns"] == ["text"] and store.config["use_eos_token"] is True
    assert store.config["chunk_size"] == 777
    assert store.num_tokens("train") == len(truth)
    assert store.eos_token_id == tokenizer.eos_token_id
    assert store.manifest.encoder.startswith(("gigatoken==", "tiktoken==", "hf-tokenizers=="))  # which one ran is recorded
    assert isinstance(store.tokens("train").readers[0], LocalShardReader)
    assert "train=" in repr(store)


def test_documents_offsets(small_chunk_store, tokenizer, docs, truth):
    offsets = small_chunk_store.documents("train")
    assert offsets.dtype == np.int64 and offsets[0] == 0 and offsets[-1] == len(truth)
    assert len(offsets) == len(docs) + 1
    np.testing.assert_array_equal(np.diff(offsets), expected_doc_lengths(tokenizer, docs))
    tokens = small_chunk_store.tokens("train")
    for d in (1, 5, len(docs) - 1):
        expected = tokenizer(docs[d])["input_ids"] + [tokenizer.eos_token_id] if docs[d] else []
        assert tokens[int(offsets[d]) : int(offsets[d + 1])].tolist() == expected


def test_tokenizer_restored_from_store(small_chunk_store, tokenizer, docs, tmp_path):
    restored = small_chunk_store.tokenizer
    for doc in docs[:50]:
        assert restored(doc)["input_ids"] == tokenizer(doc)["input_ids"]
    assert restored.eos_token_id == tokenizer.eos_token_id
    assert restored.decode(tokenizer("hello world")["input_ids"]) == "hello world"
    written = small_chunk_store.save_tokenizer(tmp_path / "tok")
    assert any(p.endswith("tokenizer.json") for p in written)
    from transformers import AutoTokenizer

    again = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    assert again(docs[3])["input_ids"] == tokenizer(docs[3])["input_ids"]


def test_info(small_chunk_store, truth):
    info = small_chunk_store.info()
    json.dumps(info)  # JSON-able
    split = info["splits"]["train"]
    assert split["tokens"] == len(truth)
    assert split["shards"] == len(small_chunk_store.manifest.splits["train"].shards) > 1
    assert split["chunks"] >= len(truth) // 777
    assert split["token_bytes"] == 2 * len(truth) <= split["stored_bytes"]
    assert info["dtype"] == "uint16" and info["checksum"] == "crc32c"
    assert info["tokenizer"]["eos_token"] == "<|endoftext|>"


def test_memory_url_store_reads_remote_path(tokenizer, docs, truth):
    ds = datasets.Dataset.from_dict({"text": docs})
    url = "memory://zarrtok-test/store-a"
    store = zarrtok.build(ds, tokenizer=tokenizer, output=url, chunk_size=1000, progress=False, overwrite=True)
    reopened = zarrtok.open(url)
    assert isinstance(reopened.tokens("train").readers[0], RemoteShardReader)
    np.testing.assert_array_equal(np.asarray(reopened.tokens("train"), dtype=np.int64), truth)
    data = reopened.dataset("train", 333)
    for i in (0, 2, len(data) - 1):
        np.testing.assert_array_equal(data[i][0].numpy(), truth[i * 333 : i * 333 + 333])
    assert reopened.fingerprint == store.fingerprint
    assert reopened.tokenizer(docs[1])["input_ids"] == tokenizer(docs[1])["input_ids"]


def test_uncompressed_store_without_checksum(tmp_path, tokenizer, docs, truth):
    ds = datasets.Dataset.from_dict({"text": docs})
    store = zarrtok.build(ds, tokenizer=tokenizer, output=tmp_path / "s", checksum=None, chunk_size=500, progress=False)
    assert os.path.getsize(tmp_path / "s/splits/train/shards/000000/tokens/c/0") == 1000
    np.testing.assert_array_equal(np.asarray(store.tokens("train"), dtype=np.int64), truth)


def test_small_store_has_no_chunk_padding(tmp_path, tokenizer):
    ds = datasets.Dataset.from_dict({"text": ["just a few tokens here"]})
    store = zarrtok.build(ds, tokenizer=tokenizer, output=tmp_path / "s", progress=False)
    n = store.num_tokens("train")
    assert os.path.getsize(tmp_path / "s/splits/train/shards/000000/tokens/c/0") == 2 * n + 4


def test_open_missing(tmp_path):
    with pytest.raises(StoreNotFoundError, match="no zarrtok store"):
        zarrtok.open(tmp_path / "nothing")


def test_open_plain_zarr_group_is_not_a_store(tmp_path):
    import zarr

    zarr.open_group(str(tmp_path / "g"), mode="w")
    with pytest.raises(IncompleteStoreError, match="not a zarrtok store"):
        zarrtok.open(tmp_path / "g")


def _edit_manifest(path, **changes):
    meta_path = os.path.join(path, "zarr.json")
    with open(meta_path) as f:
        meta = json.load(f)
    meta["attributes"]["zarrtok"].update(changes)
    with open(meta_path, "w") as f:
        json.dump(meta, f)


def test_open_newer_format(tmp_path, tokenizer):
    ds = datasets.Dataset.from_dict({"text": ["a b c"]})
    zarrtok.build(ds, tokenizer=tokenizer, output=tmp_path / "s", progress=False)
    _edit_manifest(tmp_path / "s", format_version=99)
    with pytest.raises(FormatVersionError, match="upgrade zarrtok"):
        zarrtok.open(tmp_path / "s")


def test_manifest_inconsistent_with_arrays(tmp_path, tokenizer):
    ds = datasets.Dataset.from_dict({"text": ["a b c", "d e"]})
    store = zarrtok.build(ds, tokenizer=tokenizer, output=tmp_path / "s", progress=False)
    shards = store.manifest.to_json()["splits"]
    shards["train"]["shards"][0]["num_tokens"] += 5
    shards["train"]["num_tokens"] += 5
    _edit_manifest(tmp_path / "s", splits=shards)
    with pytest.raises(IncompleteStoreError, match="manifest says"):
        zarrtok.open(tmp_path / "s").tokens("train")


def test_missing_chunk_file_is_reported(tmp_path, tokenizer, docs):
    ds = datasets.Dataset.from_dict({"text": docs})
    zarrtok.build(ds, tokenizer=tokenizer, output=tmp_path / "s", chunk_size=300, progress=False)
    os.remove(tmp_path / "s/splits/train/shards/000000/tokens/c/2")
    data = zarrtok.open(tmp_path / "s").dataset("train", 100)
    data[0]
    with pytest.raises(IncompleteStoreError, match="missing"):
        data[7]


def test_recompressed_array_falls_back_to_zarr_reads(tmp_path, tokenizer, docs, truth):
    """A store whose token array was rewritten compressed (not raw bytes) is still read correctly."""
    import zarr

    ds = datasets.Dataset.from_dict({"text": docs})
    zarrtok.build(ds, tokenizer=tokenizer, output=tmp_path / "s", chunk_size=1000, progress=False)
    group = zarr.open_group(str(tmp_path / "s/splits/train/shards/000000"), mode="a")
    data = group["tokens"][:]
    del group["tokens"]
    arr = group.create_array("tokens", shape=data.shape, chunks=(1000,), dtype=data.dtype,
                             compressors=[zarr.codecs.ZstdCodec()])
    arr[:] = data
    store = zarrtok.open(tmp_path / "s")
    assert isinstance(store.tokens("train").readers[0], ZarrShardReader)
    d = store.dataset("train", 700)
    for i in (0, 1, len(d) - 1):
        np.testing.assert_array_equal(d[i][0].numpy(), truth[i * 700 : i * 700 + 700])
    np.testing.assert_array_equal(np.asarray(store.tokens("train"), dtype=np.int64), truth)


def test_remote_whole_chunk_fetch_verifies_checksum(tokenizer, docs, truth):
    import fsspec

    ds = datasets.Dataset.from_dict({"text": docs})
    url = "memory://zarrtok-test/corrupt"
    zarrtok.build(ds, tokenizer=tokenizer, output=url, chunk_size=1000, progress=False, overwrite=True)
    fs = fsspec.filesystem("memory")
    path = "/zarrtok-test/corrupt/splits/train/shards/000000/tokens/c/1"
    raw = bytearray(fs.cat_file(path))
    good = zarrtok.open(url, reader_options={"mode": "cache", "cache_bytes": 123_457})
    np.testing.assert_array_equal(good.tokens("train")[1000:2000].astype(np.int64), truth[1000:2000])
    raw[7] ^= 0x01
    fs.pipe_file(path, bytes(raw))
    bad = zarrtok.open(url, reader_options={"mode": "cache", "cache_bytes": 123_458})
    with pytest.raises(IncompleteStoreError, match="checksum mismatch"):
        bad.tokens("train")[1000:1010]


@pytest.mark.parametrize("where", ["data", "checksum"])
def test_remote_last_chunk_fetch_skips_padding_and_verifies_checksum(tokenizer, docs, truth, where):
    """A shard's padded last chunk is fetched as its used bytes + the 4-byte CRC (the padding is the
    fill value, never sent); the CRC is still checked, extended over the padding."""
    import fsspec

    ds = datasets.Dataset.from_dict({"text": docs})
    url = f"memory://zarrtok-test/lastchunk-{where}"
    zarrtok.build(ds, tokenizer=tokenizer, output=url, chunk_size=1000, progress=False, overwrite=True)
    n = zarrtok.open(url).num_tokens("train")
    last = (n - 1) // 1000
    assert n % 1000, "the test needs a padded last chunk"
    fs = fsspec.filesystem("memory")
    path = f"/zarrtok-test/lastchunk-{where}/splits/train/shards/000000/tokens/c/{last}"
    raw = bytearray(fs.cat_file(path))
    itemsize = zarrtok.open(url).dtype.itemsize
    used = (n - last * 1000) * itemsize
    assert len(raw) == 1000 * itemsize + 4
    good = zarrtok.open(url, reader_options={"mode": "cache", "cache_bytes": 223_451 + len(where)})
    reader = good.tokens("train").readers[0]
    np.testing.assert_array_equal(good.tokens("train")[last * 1000 : n].astype(np.int64), truth[last * 1000 : n])
    assert reader.stats["chunk_bytes"] == used + 4  # not the padding
    raw[used - 1 if where == "data" else len(raw) - 2] ^= 0x10
    fs.pipe_file(path, bytes(raw))
    bad = zarrtok.open(url, reader_options={"mode": "cache", "cache_bytes": 223_461 + len(where)})
    with pytest.raises(IncompleteStoreError, match="checksum mismatch"):
        bad.tokens("train")[n - 3 : n]


@pytest.mark.slow
def test_forked_child_does_not_wait_on_parent_inflight_fetch(tokenizer, docs, truth):
    """A fetch in flight in the parent at fork time has no thread in the child: the child must fetch itself."""
    import concurrent.futures
    import multiprocessing

    ds = datasets.Dataset.from_dict({"text": docs})
    url = "memory://zarrtok-test/fork-inflight"
    zarrtok.build(ds, tokenizer=tokenizer, output=url, chunk_size=1000, progress=False, overwrite=True)
    store = zarrtok.open(url, reader_options={"mode": "cache", "cache_bytes": 123_459})
    reader = store.tokens("train").readers[0]
    reader._inflight[2] = concurrent.futures.Future()  # never completes, like a parent thread's fetch
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_read_tokens_into_queue, args=(store, 2000, 2010, queue))
    child.start()
    child.join(timeout=60)
    alive = child.is_alive()
    if alive:
        child.kill()
    assert not alive, "the forked child hung waiting for the parent's in-flight fetch"
    np.testing.assert_array_equal(queue.get(timeout=5), truth[2000:2010])


def _read_tokens_into_queue(store, a, b, queue):
    queue.put(np.asarray(store.tokens("train")[a:b], dtype=np.int64))

"""The two read-path bugs of the architecture issue, tried as a user would.

1. Stale tokens after a rebuild: caches (the in-process LRU and a ``cache_dir``) are keyed by the
   store's content (shard ids in the manifest), never by URL, and a disk-cache hit is verified.
2. Multi-shard splits: a batch costs one concurrent round of ranged GETs whatever the number of
   shards; open + first window costs at most 4 requests at any shard count (counted on the server).
"""

from __future__ import annotations

import os
import uuid

import datasets
import numpy as np
import pytest

import zarrtok
from zarrtok.read import clear_memory_caches
from zarrtok.storage import objects
from zarrtok.testing.corpus import generate_documents

from ..conftest import expected_tokens


def _build(docs, tokenizer, url, **kw):
    return zarrtok.build(datasets.Dataset.from_dict({"text": docs}), tokenizer=tokenizer, output=url,
                         progress=False, batch_size=5, **kw)


@pytest.mark.parametrize("with_cache_dir", [True, False])
def test_rebuild_at_same_url_never_serves_old_tokens(tmp_path, tokenizer, with_cache_dir):
    url = f"memory://zt-{uuid.uuid4().hex[:8]}/x"
    docs_a = generate_documents(60, seed=1)
    docs_b = generate_documents(60, seed=2)
    truth_a = expected_tokens(tokenizer, docs_a)
    truth_b = expected_tokens(tokenizer, docs_b)
    assert not np.array_equal(truth_a[:6], truth_b[:6])
    options = {"mode": "cache", "readahead": 0}
    if with_cache_dir:
        options["cache_dir"] = str(tmp_path / "cache")
    _build(docs_a, tokenizer, url, chunk_size=64)
    first = zarrtok.open(url, reader_options=options).tokens("train")[0:6]
    np.testing.assert_array_equal(first, truth_a[:6])
    _build(docs_b, tokenizer, url, chunk_size=64, overwrite=True)
    if with_cache_dir:
        clear_memory_caches()  # only the disk cache could now serve the old chunk
    again = zarrtok.open(url, reader_options=options).tokens("train")[0:6]
    np.testing.assert_array_equal(again, truth_b[:6])
    whole = np.asarray(zarrtok.open(url, reader_options=options).tokens("train"), dtype=np.int64)
    np.testing.assert_array_equal(whole, truth_b)


def test_shard_ids_are_unique_per_build(tmp_path, tokenizer, docs):
    a = _build(docs, tokenizer, str(tmp_path / "a"), chunk_size=500, shard_size=5000)
    b = _build(docs, tokenizer, str(tmp_path / "b"), chunk_size=500, shard_size=5000)
    ids_a = [s.id for s in a.manifest.splits["train"].shards]
    ids_b = [s.id for s in b.manifest.splits["train"].shards]
    assert len(ids_a) > 1 and len(set(ids_a)) == len(ids_a) and not set(ids_a) & set(ids_b)
    assert a.manifest.generation and a.manifest.generation != b.manifest.generation
    assert a.fingerprint == b.fingerprint  # same content, same fingerprint; the ids differ


def test_damaged_disk_cache_entry_is_never_served(tmp_path, tokenizer, docs, truth):
    url = f"memory://zt-{uuid.uuid4().hex[:8]}/y"
    _build(docs, tokenizer, url, chunk_size=300)
    cache_dir = tmp_path / "cache"
    options = {"mode": "cache", "readahead": 0, "cache_dir": str(cache_dir)}
    np.testing.assert_array_equal(zarrtok.open(url, reader_options=options).tokens("train")[0:50], truth[:50])
    entries = [os.path.join(r, f) for r, _, fs in os.walk(cache_dir) for f in fs if not f.endswith(".lock")]
    assert entries
    for path in entries:  # flip one byte in every cached chunk
        with open(path, "r+b") as f:
            f.seek(10)
            byte = f.read(1)
            f.seek(10)
            f.write(bytes([byte[0] ^ 0xFF]))
    clear_memory_caches()
    np.testing.assert_array_equal(zarrtok.open(url, reader_options=options).tokens("train")[0:50], truth[:50])


# -- request counts on a real S3 protocol server (the `s3` fixture: tests/conftest.py) --------------------
@pytest.fixture(scope="module")
def many_shards(s3, tmp_path_factory, tokenizer):
    """A train split of at least 64 shards (and one of at least 12) published to the bucket."""
    docs = generate_documents(400, seed=5)
    out = {}
    for shards in (64, 12):
        local = tmp_path_factory.mktemp("shards") / f"s{shards}"
        total = len(expected_tokens(tokenizer, docs))
        store = _build(docs, tokenizer, str(local), chunk_size=2048, shard_size=total // (shards + shards // 2))
        assert len(store.manifest.splits["train"].shards) >= shards, len(store.manifest.splits["train"].shards)
        bucket = s3.make_bucket(f"shards-{shards}-{uuid.uuid4().hex[:8]}")
        url = f"s3://{bucket}/store"
        zarrtok.copy(store.url, url, dst_storage_options=s3.storage_options, progress=False)
        out[shards] = (url, np.asarray(store.tokens("train")).astype(np.int64))
    return out


def test_open_and_first_window_of_64_shards_costs_at_most_4_requests(s3, many_shards):
    url, truth = many_shards[64]
    s3.reset_log()
    store = zarrtok.open(url, storage_options=s3.storage_options, reader_options={"mode": "range"})
    inputs, labels = store.dataset("train", 128)[0]
    np.testing.assert_array_equal(inputs.numpy(), truth[:128])
    assert len(s3.requests) <= 4, [(r.method, r.path) for r in s3.requests]


def test_batch_over_12_shards_is_one_concurrent_round(s3, many_shards, monkeypatch):
    url, truth = many_shards[12]
    store = zarrtok.open(url, storage_options=s3.storage_options, reader_options={"mode": "range"})
    ds = store.dataset("train", 200)
    n = len(ds)
    indices = [int(i) for i in np.linspace(0, n - 1, 16)]  # spread over every shard
    shards_touched = {int(np.searchsorted(store.tokens("train").starts[1:], i * 200, side="right")) for i in indices}
    assert len(shards_touched) >= 10
    rounds = []
    original = objects.ObjectIO.get_ranges

    def counting(self, keys, starts, ends):
        rounds.append(len(keys))
        return original(self, keys, starts, ends)

    monkeypatch.setattr(objects.ObjectIO, "get_ranges", counting)
    s3.reset_log()
    batch = ds.__getitems__(indices)
    gets = [r for r in s3.requests if r.method == "GET"]
    assert len(rounds) == 1, rounds  # one concurrent cat_ranges for the whole batch
    assert rounds[0] == len(gets) >= 16  # every piece of every window in that round, nothing else
    for (x, y), i in zip(batch, indices):
        np.testing.assert_array_equal(x.numpy(), truth[i * 200 : i * 200 + 200])
        np.testing.assert_array_equal(y.numpy(), truth[i * 200 + 1 : i * 200 + 201])

"""Object storage: build to and read from a real S3 protocol server on loopback (moto behind
werkzeug, see tests/s3server.py), and memory:// end to end.

What went over the wire is asserted on the server's request log (method, path, Range, status, body
bytes sent), never on zarrtok's internals. Stores are small with small chunks (2,000 tokens) and two
shards per train split, so windows straddle chunk and shard boundaries.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import json
import multiprocessing
import os
import re
import uuid

import numpy as np
import pytest
import torch

import zarrtok
from zarrtok.train.dataset import WindowBatch, collate_windows
from zarrtok.errors import IncompleteStoreError, StoreNotFoundError

from ..conftest import expected_tokens

CHUNK = 2000  # tokens per chunk: 26 chunks in train (2 shards, each with a padded last chunk)
SHARD = 30_000  # tokens per shard: train has 2 shards
ITEMSIZE = 2  # the 1024-token BPE of conftest stores uint16
CHUNK_BYTES = CHUNK * ITEMSIZE
OBJECT_BYTES = CHUNK_BYTES + 4  # raw tokens + crc32c
# block_bytes=ITEMSIZE: one checksummed block per token, so a verified ranged read fetches exactly the
# window's bytes and the byte-exact assertions below hold (the default 16 KiB blocks are tested separately)
BUILD_KW = dict(chunk_size=CHUNK, shard_size=SHARD, validation_split=0.1, batch_size=50, progress=False,
                block_bytes=ITEMSIZE)
CHUNK_PATH = re.compile(r"/splits/(?P<split>[^/]+)/shards/(?P<shard>\d+)/tokens/c/(?P<k>\d+)$")
MODES = ("range", "cache", "auto")


# -- fixtures -----------------------------------------------------------------------------------------
@pytest.fixture
def bucket(s3) -> str:
    return s3.make_bucket(f"t-{uuid.uuid4().hex[:16]}")


@pytest.fixture(scope="module")
def local_store(tmp_path_factory, jsonl_path, tokenizer_dir):
    out = tmp_path_factory.mktemp("remote-local") / "store"
    return zarrtok.build("json", data_files=jsonl_path, tokenizer_name=tokenizer_dir, output=str(out), **BUILD_KW)


class RemoteStore:
    """The module's store in the bucket, and what the server saw while it was built."""

    def __init__(self, bucket: str, prefix: str, storage_options: dict, build_log: list):
        self.bucket = bucket
        self.prefix = prefix
        self.url = f"s3://{bucket}/{prefix}"
        self.storage_options = storage_options
        self.build_log = build_log

    def open(self, **reader_options) -> zarrtok.TokenStore:
        return zarrtok.open(self.url, storage_options=self.storage_options, reader_options=reader_options)


@pytest.fixture(scope="module")
def remote(s3, jsonl_path, tokenizer_dir, local_store) -> RemoteStore:
    name = s3.make_bucket(f"m-{uuid.uuid4().hex[:16]}")
    s3.reset_log()
    zarrtok.build("json", data_files=jsonl_path, tokenizer_name=tokenizer_dir, output=f"s3://{name}/stores/main",
                  storage_options=s3.storage_options, **BUILD_KW)
    return RemoteStore(name, "stores/main", s3.storage_options, s3.requests)


@pytest.fixture(scope="module")
def train(local_store) -> np.ndarray:
    """Train tokens of the local build (test_build/test_dataset check local builds against ground truth;
    test_remote_build_equals_local_build checks them against the tokenizer here too)."""
    return np.asarray(local_store.tokens("train")).astype(np.int64)


_CACHE_SIZES = itertools.count(1)


def fresh_cache_bytes(base: int = 64 << 20) -> int:
    """A cache size no other test uses: the in-memory LRU is per process *and per size*, so a distinct
    size gives this test a cold cache even though other tests read the same store."""
    return base + next(_CACHE_SIZES)


def chunk_gets(requests) -> dict[str, list]:
    """Object GETs of token chunks, grouped by object path."""
    out: dict[str, list] = collections.defaultdict(list)
    for r in requests:
        if r.method == "GET" and not r.query and CHUNK_PATH.search(r.path):
            out[r.path].append(r)
    return out


def check_each_chunk_fetched_once(requests, store, split: str = "train", *, all_chunks: bool = True) -> int:
    """Every chunk object of ``split`` was fetched exactly once, by whole-chunk reads: one GET of the
    whole object, or for a shard's padded last chunk two ranged GETs, its used bytes and its 4-byte
    checksum (never the padding). ``all_chunks=False``: chunks no window touched may be absent.
    Returns the bytes the server sent for them."""
    readers = store.tokens(split).readers
    per_chunk = chunk_gets(requests)
    if all_chunks:
        assert len(per_chunk) == store.tokens(split).num_chunks, sorted(per_chunk)
    sent = 0
    for path, gets in per_chunk.items():
        m = CHUNK_PATH.search(path)
        layout = readers[int(m["shard"])].spec.raw
        used = layout.used_items(int(m["k"])) * ITEMSIZE
        if used == CHUNK_BYTES:
            assert len(gets) == 1 and is_whole_object(gets[0]), (path, [(g.range, g.bytes_sent) for g in gets])
        else:
            bounds = sorted(g.range_bounds for g in gets)
            assert bounds == [(0, used - 1), (CHUNK_BYTES, CHUNK_BYTES + 3)], (path, bounds)
        sent += sum(g.bytes_sent for g in gets)
    return sent


def is_whole_object(r) -> bool:
    """A GET of a whole chunk object: no Range, or a Range covering all of it."""
    return r.bytes_sent == OBJECT_BYTES and r.range in (None, "bytes=0-", f"bytes=0-{OBJECT_BYTES - 1}")


def warm_block_checksums(store, split: str = "train") -> None:
    """Fetch every shard's block checksums (one GET per shard, once per process), so a test can count
    the requests of the reads that follow."""
    tokens = store.tokens(split)
    for start in tokens.starts[:-1]:
        tokens[start]


def window_truth(tokens: np.ndarray, i: int, L: int) -> tuple[np.ndarray, np.ndarray]:
    x = tokens[i * L : i * L + L + 1]
    return x[:-1], x[1:]


def pick_windows(n_windows: int, L: int, boundaries: list[int], rng: np.random.Generator, k: int = 6) -> list[int]:
    """Window indices to check: first, middle, last, some windows straddling a chunk or shard boundary
    (and the last such window), and random ones."""
    picks = {0, n_windows - 1, n_windows // 2}
    straddling = set()
    for b in boundaries:
        for i in ((b - 1) // L, (b - 1) // L - 1):
            if 0 <= i < n_windows and i * L <= b - 1 and b <= i * L + L:  # holds tokens b-1 and b
                straddling.add(i)
    straddling = sorted(straddling)
    if straddling:
        picks.update(rng.choice(straddling, size=min(k, len(straddling)), replace=False).tolist())
        picks.add(straddling[-1])
    picks.update(rng.integers(0, n_windows, size=min(k, n_windows)).tolist())
    return sorted(int(i) for i in picks)


def boundaries_of(store: zarrtok.TokenStore, split: str) -> list[int]:
    """Global token positions of chunk starts and shard starts of a split."""
    array = store.tokens(split)
    out = set(array.starts)
    for base, reader in zip(array.starts, array.readers):
        out.update(range(base, base + reader.length, reader.chunk_size))
    return sorted(out)


# -- 1. build into the bucket ---------------------------------------------------------------------------
def test_remote_build_equals_local_build(s3, remote, local_store, tokenizer, docs):
    store = remote.open()
    assert store.splits == local_store.splits == ["train", "validation"]
    assert store.fingerprint == local_store.fingerprint
    assert store.dtype == local_store.dtype == np.dtype("uint16")
    assert store.manifest.status == "complete"
    assert store.info()["splits"] == local_store.info()["splits"]
    per_doc = []
    for split in store.splits:
        assert store.num_tokens(split) == local_store.num_tokens(split)
        assert store.num_documents(split) == local_store.num_documents(split)
        np.testing.assert_array_equal(np.asarray(store.tokens(split)), np.asarray(local_store.tokens(split)))
        offsets = store.documents(split)
        np.testing.assert_array_equal(offsets, local_store.documents(split))
        tokens = np.asarray(store.tokens(split)).astype(np.int64)
        per_doc += [tuple(tokens[a:b]) for a, b in zip(offsets[:-1], offsets[1:])]
    # ground truth: the splits hold exactly the documents of the source, each tokenized as tokenizer(doc) + [eos]
    truth_docs = [tuple(expected_tokens(tokenizer, [d])) for d in docs]
    assert collections.Counter(per_doc) == collections.Counter(truth_docs)
    # the tokenizer restored from the bucket works
    restored = store.tokenizer
    for text in docs[:20]:
        assert restored(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert restored.eos_token_id == tokenizer.eos_token_id


def test_remote_build_layout_and_commit_order(s3, remote, local_store):
    keys = s3.list_keys(remote.bucket)
    assert keys and all(k.startswith(remote.prefix + "/") for k in keys), "an object store build writes in place"
    # every chunk object exists, each the full raw size (+crc32c): what the ranged reader relies on
    chunk_objects = {k: v for k, v in keys.items() if CHUNK_PATH.search("/" + k)}
    info = local_store.info()["splits"]
    assert len(chunk_objects) == sum(s["chunks"] for s in info.values())
    assert sum(chunk_objects.values()) == sum(s["stored_bytes"] for s in info.values())
    assert set(chunk_objects.values()) == {OBJECT_BYTES}
    # the manifest is written first ("building") and rewritten last ("complete"): the commit point
    manifest = f"/{remote.bucket}/{remote.prefix}/zarr.json"
    puts = [r.path for r in remote.build_log if r.method == "PUT"]
    assert puts.count(manifest) >= 2, puts
    assert puts[0] == manifest and puts[-1] == manifest, puts
    body = json.loads(s3.client().get_object(Bucket=remote.bucket, Key=f"{remote.prefix}/zarr.json")["Body"].read())
    assert body["attributes"]["zarrtok"]["status"] == "complete"


def test_remote_store_readable_with_plain_zarr(remote, local_store):
    import zarr

    fs_store = zarr.storage.FsspecStore.from_url(remote.url, storage_options=remote.storage_options, read_only=True)
    group = zarr.open_group(fs_store, mode="r")
    assert group.attrs["zarrtok"]["status"] == "complete"
    for split, info in group.attrs["zarrtok"]["splits"].items():
        parts = [group[f"splits/{split}/shards/{s['name']}/tokens"][:] for s in info["shards"]]
        np.testing.assert_array_equal(np.concatenate(parts), np.asarray(local_store.tokens(split)))
    assert bytes(group["tokenizer/tokenizer.json"][:]) == local_store.tokenizer_files()["tokenizer.json"]


# -- 2. a failed build --------------------------------------------------------------------------------
def test_failed_remote_build_is_never_opened(s3, bucket, jsonl_path, tokenizer_dir, monkeypatch):
    from zarrtok.ingest.tokenization import DocumentEncoder

    url = f"s3://{bucket}/broken"
    options = s3.storage_options
    original = DocumentEncoder.encode
    calls = {"n": 0}
    midway: dict = {}

    def flaky_encode(self, texts):
        calls["n"] += 1
        if calls["n"] == 3:
            # the state a crash right now would leave: status "building", refused by open
            raw = s3.client().get_object(Bucket=bucket, Key="broken/zarr.json")["Body"].read()
            midway["status"] = json.loads(raw)["attributes"]["zarrtok"]["status"]
            try:
                zarrtok.open(url, storage_options=options)
            except IncompleteStoreError as exc:
                midway["open"] = exc
            raise RuntimeError("encoder exploded on the 3rd batch")
        return original(self, texts)

    monkeypatch.setattr(DocumentEncoder, "encode", flaky_encode)
    with pytest.raises(RuntimeError, match="3rd batch"):
        zarrtok.build("json", data_files=jsonl_path, tokenizer_name=tokenizer_dir, output=url,
                      storage_options=options, encoder="hf", **{**BUILD_KW, "validation_split": 0.0})
    assert calls["n"] == 3
    assert midway["status"] == "building"
    assert isinstance(midway.get("open"), IncompleteStoreError), "open accepted a store that was still building"
    with pytest.raises((StoreNotFoundError, IncompleteStoreError)):
        zarrtok.open(url, storage_options=options)


# -- 3. windows equal local windows in every mode -------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("seq_len", [1, 63, 1999, 2000, 2001, 7777, 29_999, 45_000])
def test_remote_windows_equal_local(remote, train, mode, seq_len):
    store = remote.open(mode=mode, cache_bytes=fresh_cache_bytes(), readahead=0)
    if seq_len >= store.num_tokens("train"):
        seq_len = store.num_tokens("train") - 1  # the single, last possible window
    ds = store.dataset("train", seq_len)
    assert len(ds) == (len(train) - 1) // seq_len
    rng = np.random.default_rng(seq_len)
    picks = pick_windows(len(ds), seq_len, boundaries_of(store, "train"), rng)
    for i in picks:
        inputs, labels = ds[i]
        ref_in, ref_lab = window_truth(train, i, seq_len)
        assert inputs.dtype == labels.dtype == torch.int64 and inputs.shape == (seq_len,)
        np.testing.assert_array_equal(inputs.numpy(), ref_in, err_msg=f"window {i}")
        np.testing.assert_array_equal(labels.numpy(), ref_lab, err_msg=f"window {i}")
    inputs, labels = ds[-1]
    np.testing.assert_array_equal(inputs.numpy(), window_truth(train, len(ds) - 1, seq_len)[0])
    # a batch in one call, in a scrambled order with a repeat and a negative index
    batch_idx = list(rng.permutation(picks)) + [picks[0], -1]
    batch = ds.__getitems__(batch_idx)
    assert isinstance(batch, WindowBatch) and len(batch) == len(batch_idx)
    inputs, labels = collate_windows(batch)
    for row, i in enumerate(batch_idx):
        ref_in, ref_lab = window_truth(train, int(i) % len(ds), seq_len)
        np.testing.assert_array_equal(inputs[row].numpy(), ref_in)
        np.testing.assert_array_equal(labels[row].numpy(), ref_lab)
    with pytest.raises(IndexError):
        ds[len(ds)]


@pytest.mark.parametrize("mode", MODES)
def test_remote_token_slices_equal_local(remote, local_store, mode):
    store = remote.open(mode=mode, cache_bytes=fresh_cache_bytes(), readahead=0)
    for split in store.splits:
        a, b = store.tokens(split), np.asarray(local_store.tokens(split))
        for lo, hi in [(0, 1), (1990, 2010), (0, len(b)), (len(b) - 5, len(b)), (29_990, 30_100), (5, 5)]:
            np.testing.assert_array_equal(a[lo:hi], b[lo:hi])
        assert a[-1] == b[-1] and a[123] == b[123]
        np.testing.assert_array_equal(a[10:4001:7], b[10:4001:7])


# -- 4. range mode: exactly the window's bytes ---------------------------------------------------------
def test_range_mode_fetches_exactly_the_window(s3, remote):
    L = 100
    store = remote.open(mode="range")
    ds = store.dataset("train", L)
    base = f"/{remote.bucket}/{remote.prefix}/splits/train/shards/000000/tokens/c/"
    want = (L + 1) * ITEMSIZE
    s3.reset_log()
    warm_block_checksums(store)  # a shard's first ranged read also fetches its block checksums, once
    assert len([r for r in s3.gets() if "/block_crc32c/c/" in r.path]) == 2, s3.summary()

    # window 5 = tokens [500, 601): inside chunk 0
    s3.reset_log()
    ds[5]
    gets = s3.gets()
    assert len(gets) == 1 and len(s3.requests) == 1, s3.summary()
    (g,) = gets
    assert g.path == base + "0" and g.status == 206
    assert g.range_bounds == (500 * ITEMSIZE, 601 * ITEMSIZE - 1)
    assert g.range_length == g.bytes_sent == want

    # window 19 = tokens [1900, 2001): straddles chunks 0 and 1
    s3.reset_log()
    ds[19]
    gets = sorted(s3.gets(), key=lambda r: r.path)
    assert len(gets) == 2 and len(s3.requests) == 2, s3.summary()
    assert [g.path for g in gets] == [base + "0", base + "1"]
    assert gets[0].range_bounds == (1900 * ITEMSIZE, CHUNK_BYTES - 1)
    assert gets[1].range_bounds == (0, 1 * ITEMSIZE - 1)
    assert sum(g.bytes_sent for g in gets) == sum(g.range_length for g in gets) == want

    # the same window again: range mode caches nothing
    s3.reset_log()
    ds[19]
    assert len(s3.gets()) == 2

    # a window straddling the shard boundary: the tail of shard 0's last chunk + the head of shard 1's first
    s0 = store.tokens("train").starts[1]
    i = s0 // L if s0 % L else s0 // L - 1
    a, b = i * L, i * L + L + 1
    assert a < s0 < b
    k = (s0 - 1) // CHUNK
    s3.reset_log()
    ds[i]
    gets = sorted(s3.gets(), key=lambda r: r.path)
    assert len(gets) == 2 and len(s3.requests) == 2, s3.summary()
    assert gets[0].path == base + str(k) and gets[1].path == base.replace("000000", "000001") + "0"
    assert gets[0].range_bounds == ((a - k * CHUNK) * ITEMSIZE, (s0 - k * CHUNK) * ITEMSIZE - 1)
    assert gets[1].range_bounds == (0, (b - s0) * ITEMSIZE - 1)
    assert sum(g.bytes_sent for g in gets) == want

    # a batch: one ranged GET per (window, chunk) piece, nothing else
    s3.reset_log()
    ds.__getitems__([5, 19, 40, 77])
    gets = s3.gets()
    assert len(gets) == 5 and all(g.range for g in gets), s3.summary()
    assert sum(g.bytes_sent for g in gets) == 4 * want


def test_auto_mode_ranges_first_then_whole_chunk(s3, remote, train):
    L = 100
    store = remote.open(mode="auto", cache_bytes=fresh_cache_bytes(), readahead=0)
    ds = store.dataset("train", L)
    base = f"/{remote.bucket}/{remote.prefix}/splits/train/shards/000000/tokens/c/"
    store.tokens("train").readers[0]._block_table()  # the shard's block checksums (fetched once)
    s3.reset_log()
    ds[5]  # first touch of chunk 0: a ranged GET of the window
    (g,) = s3.gets()
    assert g.path == base + "0" and g.range_length == g.bytes_sent == (L + 1) * ITEMSIZE
    s3.reset_log()
    ds[6]  # second touch while recent: the whole chunk
    (g,) = s3.gets()
    assert g.path == base + "0" and is_whole_object(g)
    s3.reset_log()
    for i in range(7, 19):  # the rest of chunk 0 comes from memory
        np.testing.assert_array_equal(ds[i][0].numpy(), window_truth(train, i, L)[0])
    assert s3.gets() == [], s3.summary()


# -- 5. cache mode: an epoch fetches each chunk about once ----------------------------------------------
def test_cache_mode_epoch_fetches_each_chunk_once(s3, remote, train):
    from zarrtok.train.sampler import ChunkShuffleSampler

    store = remote.open(mode="cache", cache_bytes=fresh_cache_bytes())
    L = 64
    ds = store.dataset("train", L)
    sampler = ChunkShuffleSampler(ds, seed=0, block_chunks=4)
    order = list(sampler)
    assert sorted(order) == list(range(len(ds)))
    ds.set_access_order(order)
    stored = store.info()["splits"]["train"]["stored_bytes"]
    num_chunks = store.tokens("train").num_chunks
    s3.reset_log()
    for n, i in enumerate(order):
        inputs, _ = ds[i]
        if n % 7 == 0:
            np.testing.assert_array_equal(inputs.numpy(), window_truth(train, i, L)[0])
    sent = check_each_chunk_fetched_once(s3.requests, store)
    assert not s3.select("HEAD"), s3.summary()
    # the padding of each shard's last chunk is never sent: at most the token bytes + 4 per chunk
    token_bytes = len(train) * ITEMSIZE
    assert sent == s3.bytes_sent() == token_bytes + 4 * num_chunks, (sent, s3.bytes_sent(), token_bytes)
    assert s3.bytes_sent() < stored

    # the next epoch: a new order, nothing fetched again (the LRU holds the whole split)
    sampler.set_epoch(1)
    order1 = list(sampler)
    assert order1 != order and sorted(order1) == list(range(len(ds)))
    ds.set_access_order(order1)
    s3.reset_log()
    for i in order1[:200]:
        ds[i]
    assert chunk_gets(s3.requests) == {}


def test_cache_mode_tiny_cache_sequential_order(s3, remote, train):
    store = remote.open(mode="cache", cache_bytes=fresh_cache_bytes(CHUNK_BYTES), readahead=0)  # room for one chunk
    L = 64
    ds = store.dataset("train", L)
    s3.reset_log()
    for start in range(0, len(ds), 16):
        idx = list(range(start, min(start + 16, len(ds))))
        inputs, _ = collate_windows(ds.__getitems__(idx))
        np.testing.assert_array_equal(inputs[-1].numpy(), window_truth(train, idx[-1], L)[0])
    check_each_chunk_fetched_once(s3.requests, store)


def test_chunk_shuffle_sampler_order(remote):
    from zarrtok.train.sampler import ChunkShuffleSampler

    L, block = 64, 2
    ds = remote.open().dataset("train", L)
    a = ChunkShuffleSampler(ds, seed=3, block_chunks=block)
    first = list(a)
    assert first == list(ChunkShuffleSampler(ds, seed=3, block_chunks=block))  # deterministic
    assert len(a) == len(ds) and sorted(first) == list(range(len(ds)))
    assert first != list(range(len(ds)))
    a.set_epoch(1)
    assert list(a) != first and sorted(a) == list(range(len(ds)))
    # chunk-local: all windows starting in one chunk are served within a span of `block` chunks' windows
    chunks = ds.tokens.chunk_of(np.asarray(first) * L)
    per_chunk = collections.Counter(chunks.tolist())
    assert len(per_chunk) == ds.tokens.num_chunks
    limit = block * max(per_chunk.values())
    for c in per_chunk:
        pos = np.flatnonzero(chunks == c)
        assert pos.max() - pos.min() < limit, (c, pos.min(), pos.max())


# -- 6. the disk cache, shared by processes -----------------------------------------------------------------
def _disk_cache_reader(url, storage_options, reader_options, seq_len, indices, barrier, results):
    """Spawned process: open the store, wait for the sibling, read the windows, report a digest."""
    import zarrtok as zt

    store = zt.open(url, storage_options=storage_options, reader_options=reader_options)
    ds = store.dataset("train", seq_len)
    barrier.wait(timeout=60)
    h = hashlib.sha256()
    for i in indices:
        h.update(ds[i][0].numpy().tobytes())
    results.put((os.getpid(), h.hexdigest()))


def collect(results, procs, timeout: float = 120.0) -> list:
    """One result per process; fails at once (instead of waiting) when a process died without one."""
    import queue
    import time

    got, deadline = [], time.monotonic() + timeout
    while len(got) < len(procs):
        try:
            got.append(results.get(timeout=0.5))
        except queue.Empty:
            dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            assert not dead, f"a reader process died (exit codes {dead})"
            assert time.monotonic() < deadline, "reader processes timed out"
    return got


def _digest(tokens: np.ndarray, seq_len: int, indices) -> str:
    h = hashlib.sha256()
    for i in indices:
        h.update(np.ascontiguousarray(window_truth(tokens, i, seq_len)[0]).tobytes())
    return h.hexdigest()


def _cache_files(directory: str) -> tuple[list[str], list[str]]:
    data, other = [], []
    for root, _, files in os.walk(directory):
        for name in files:
            p = os.path.join(root, name)
            (other if name.endswith(".lock") or ".tmp" in name else data).append(p)
    return data, other


@pytest.mark.slow
def test_disk_cache_shared_by_two_processes(s3, remote, train, tmp_path):
    cache_dir = str(tmp_path / "chunks")
    L = 500
    n = (len(train) - 1) // L
    indices = list(range(n))
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    options = {"mode": "cache", "cache_dir": cache_dir, "cache_bytes": CHUNK_BYTES, "readahead": 0}
    s3.reset_log()
    procs = [ctx.Process(target=_disk_cache_reader, args=(remote.url, remote.storage_options, options, L, indices,
                                                            barrier, results)) for _ in range(2)]
    for p in procs:
        p.start()
    got = collect(results, procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert {d for _, d in got} == {_digest(train, L, indices)}
    store = remote.open()
    check_each_chunk_fetched_once(s3.requests, store)
    data, other = _cache_files(cache_dir)
    assert len(data) == store.tokens("train").num_chunks
    assert not [p for p in other if ".tmp" in p], "temporary files left in the cache"
    client = s3.client()
    readers = store.tokens("train").readers
    for path in data:  # never partial: every cached chunk holds all of the chunk's tokens (no padding)
        m = re.search(r"(\d+)/tokens/c/(\d+)$", path)
        used = readers[int(m[1])].spec.raw.used_items(int(m[2])) * ITEMSIZE
        # + the entry's own 4-byte CRC-32C (a hit is verified before use)
        assert os.path.getsize(path) == used + 4, (path, os.path.getsize(path), used)
    # a third reader (this process) finds everything on disk: no requests at all
    s3.reset_log()
    ds = remote.open(mode="cache", cache_dir=cache_dir, cache_bytes=fresh_cache_bytes(), readahead=0).dataset("train", L)
    for i in indices:
        ds[i]
    assert chunk_gets(s3.requests) == {}, s3.summary()
    # the cached bytes are the object's data bytes
    key = f"{remote.prefix}/splits/train/shards/000000/tokens/c/0"
    obj = client.get_object(Bucket=remote.bucket, Key=key)["Body"].read()
    cached = [p for p in data if p.endswith(os.path.join("000000", "tokens", "c", "0"))]
    assert len(cached) == 1
    with open(cached[0], "rb") as f:
        assert f.read()[:CHUNK_BYTES] == obj[:CHUNK_BYTES]


def test_disk_cache_bound(s3, remote, train, tmp_path):
    cache_dir = str(tmp_path / "bounded")
    bound = 3 * OBJECT_BYTES
    store = remote.open(mode="cache", cache_dir=cache_dir, cache_dir_bytes=bound, cache_bytes=fresh_cache_bytes(CHUNK_BYTES),
                        readahead=0)
    L = 300
    ds = store.dataset("train", L)
    for i in range(len(ds)):
        inputs, _ = ds[i]
        if i % 5 == 0:
            np.testing.assert_array_equal(inputs.numpy(), window_truth(train, i, L)[0])
        data, other = _cache_files(cache_dir)
        assert sum(os.path.getsize(p) for p in data) <= bound
        assert not [p for p in other if ".tmp" in p]


def _bounded_cache_reader(url, storage_options, reader_options, seq_len, seed, epochs, tokens, results):
    """Forked process: read `epochs` shuffled epochs through a bounded shared cache_dir; report failures."""
    from zarrtok.train.sampler import ChunkShuffleSampler

    store = zarrtok.open(url, storage_options=storage_options, reader_options=reader_options)
    ds = store.dataset("train", seq_len)
    failures, wrong = [], 0
    sampler = ChunkShuffleSampler(ds, seed=seed, block_chunks=1)
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for i in sampler:
            try:
                inputs, _ = ds[i]
            except Exception as exc:  # noqa: BLE001 - reported to the parent
                failures.append(repr(exc)[:200])
                continue
            wrong += not np.array_equal(inputs.numpy(), tokens[i * seq_len : i * seq_len + seq_len])
    results.put((seed, len(failures), failures[:3], wrong))


@pytest.mark.slow
def test_bounded_disk_cache_shared_by_two_processes(remote, train, tmp_path):
    cache_dir = str(tmp_path / "bounded-shared")
    bound = OBJECT_BYTES  # room for one chunk: maximal eviction pressure
    options = {"mode": "cache", "cache_dir": cache_dir, "cache_dir_bytes": bound, "cache_bytes": CHUNK_BYTES,
               "readahead": 0}
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    procs = [ctx.Process(target=_bounded_cache_reader, args=(remote.url, remote.storage_options, options, 256, seed,
                                                               3, train, results)) for seed in range(2)]
    for p in procs:
        p.start()
    got = collect(results, procs)
    for p in procs:
        p.join(timeout=60)
    assert all(wrong == 0 for *_, wrong in got), got
    assert all(n == 0 for _, n, _, _ in got), got
    data, other = _cache_files(cache_dir)
    assert sum(os.path.getsize(p) for p in data) <= bound
    assert not [p for p in other if ".tmp" in p]


# -- 7. DataLoader workers ---------------------------------------------------------------------------------
def _child_reads_disk_cache(directory, results):
    from zarrtok.read.remote import DiskChunkCache

    def must_not_fetch():
        raise AssertionError("the parent fetched this chunk: the child must find it on disk")

    arr, fetched = DiskChunkCache(directory).get_or_fetch("ns", "c/0", 200, np.dtype(np.uint16), 100, must_not_fetch)
    results.put((arr.tolist(), fetched))


def test_disk_cache_lock_held_by_a_parent_thread_at_fork(tmp_path):
    """A parent thread holding a chunk's flock while fetching, at the moment a DataLoader forks: the
    child inherits that descriptor; it must not keep the lock alive (the child would wait forever).
    Closing alone would not release it while the child holds a copy: the unlock is explicit."""
    import threading
    import time

    from zarrtok.read.remote import DiskChunkCache

    cache = DiskChunkCache(str(tmp_path))
    data = np.arange(100, dtype=np.uint16)
    started, release = threading.Event(), threading.Event()

    def slow_fetch():
        started.set()
        assert release.wait(60)
        return data.tobytes()

    parent = threading.Thread(target=cache.get_or_fetch, args=("ns", "c/0", 200, np.dtype(np.uint16), 100, slow_fetch))
    parent.start()
    assert started.wait(30)
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    child = ctx.Process(target=_child_reads_disk_cache, args=(str(tmp_path), results))
    child.start()
    try:
        time.sleep(1.0)  # let the child find no file and wait for the parent's lock
        release.set()
        parent.join(30)
        got, fetched = results.get(timeout=30)  # without the fix: the child blocks on the lock forever
        assert got == data.tolist() and not fetched
        child.join(30)
        assert child.exitcode == 0
    finally:
        if child.is_alive():
            child.kill()


def _child_s3_session(url, storage_options, results):
    from zarrtok.storage.location import process_filesystem

    fs, path = process_filesystem(url, storage_options)
    fs.cat_file(f"{path}/zarr.json", start=0)  # the child's own client works
    results.put((id(fs), id(fs.session), id(fs.session.get_component("data_loader"))))


def test_forked_child_reuses_parsed_botocore_models_not_the_client(remote):
    """A forked worker builds its own S3 filesystem, session and client (per process), but inherits
    the parent's parsed botocore endpoint/service models (~0.3 s of JSON parsing per new worker)."""
    from zarrtok.storage.location import process_filesystem

    fs, path = process_filesystem(remote.url, remote.storage_options)
    fs.cat_file(f"{path}/zarr.json", start=0)
    parent = (id(fs), id(fs.session), id(fs.session.get_component("data_loader")))
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    proc = ctx.Process(target=_child_s3_session, args=(remote.url, remote.storage_options, results))
    proc.start()
    child = results.get(timeout=60)
    proc.join(timeout=60)
    assert proc.exitcode == 0
    assert child[0] != parent[0] and child[1] != parent[1], "a forked child must not reuse the parent's fs/session"
    assert child[2] == parent[2], "the child should inherit the parent's parsed botocore data loader"


@pytest.mark.slow
@pytest.mark.parametrize("context,mode", [("fork", "auto"), ("fork", "cache"), ("fork", "range"),
                                          ("spawn", "cache"), ("forkserver", "auto"), ("fork", "cache+disk")])
def test_dataloader_workers(s3, remote, train, tmp_path, context, mode):
    from zarrtok.train.sampler import ChunkShuffleSampler

    L = 257
    options = {"mode": mode, "cache_bytes": fresh_cache_bytes()}
    if mode == "cache+disk":  # workers share the chunks they fetch through one cache directory
        options.update(mode="cache", cache_dir=str(tmp_path / "chunks"))
    store = remote.open(**options)
    ds = store.dataset("train", L)
    # created AND used in the parent first: its filesystem, event loop, caches and pool exist here
    np.testing.assert_array_equal(ds[3][0].numpy(), window_truth(train, 3, L)[0])
    ds.__getitems__([0, 100])
    sampler = ChunkShuffleSampler(ds, seed=1)
    order = list(sampler)
    ds.set_access_order(order)
    loader = torch.utils.data.DataLoader(ds, batch_size=8, sampler=sampler, num_workers=2,
                                         multiprocessing_context=context, collate_fn=collate_windows)
    seen = []
    s3.reset_log()
    for inputs, labels in loader:
        seen.append((inputs, labels))
    per_chunk = chunk_gets(s3.requests)
    print(f"\n{context}/{mode}: {sum(map(len, per_chunk.values()))} chunk GETs over {len(per_chunk)} chunks, "
          f"{s3.bytes_sent()} bytes, {len(s3.requests)} requests")
    if mode == "cache+disk":  # the windows may not reach each shard's last tokens
        check_each_chunk_fetched_once(s3.requests, store, all_chunks=False)
    rows = [i for i in order]
    inputs = torch.cat([x for x, _ in seen]).numpy()
    labels = torch.cat([y for _, y in seen]).numpy()
    assert inputs.shape == (len(ds), L)
    for row, i in enumerate(rows):
        ref_in, ref_lab = window_truth(train, i, L)
        np.testing.assert_array_equal(inputs[row], ref_in, err_msg=f"window {i}")
        np.testing.assert_array_equal(labels[row], ref_lab, err_msg=f"window {i}")


# -- 8. few metadata requests on open ---------------------------------------------------------------------------
@pytest.mark.slow
def test_loader_over_s3_persistent_workers_two_epochs(s3, remote, train, tmp_path):
    """The training loader over the bucket: 2 forked persistent workers sharing a cache_dir, chunk-local
    shuffle with read-ahead driven by the batch sampler (it knows each batch's epoch and step).
    Epoch 0 fetches every chunk once; epoch 1 fetches nothing (the workers' caches hold the split);
    every window served once per epoch, equal to the local tokens."""
    L, B = 50, 8
    store = remote.open(mode="cache", cache_bytes=fresh_cache_bytes(), cache_dir=str(tmp_path / "chunks"))
    loader = store.dataloader("train", L, B, seed=2, num_workers=2, multiprocessing_context="fork",
                              persistent_workers=True, return_index=True)
    assert loader.shuffle == "chunk" and loader.read_ahead
    n = len(store.dataset("train", L))
    for epoch in range(2):
        s3.reset_log()
        seen = []
        for batch in loader:
            for row, i in enumerate(batch["index"].tolist()):
                np.testing.assert_array_equal(batch["input_ids"][row].numpy(), train[i * L : i * L + L])
                np.testing.assert_array_equal(batch["labels"][row].numpy(), train[i * L + 1 : i * L + L + 1])
            seen += batch["index"].tolist()
        assert sorted(seen) == sorted(set(seen)) and len(seen) == (n // B) * B
        assert loader.epoch == epoch and loader.consumed == (n // B) * B
        if epoch == 0:
            check_each_chunk_fetched_once(s3.requests, store, all_chunks=False)
        else:
            assert chunk_gets(s3.requests) == {}, s3.summary()


def test_loader_read_ahead_fetches_upcoming_chunks_in_process(remote):
    """num_workers=0: the loader starts fetching the first chunks at once and keeps ahead of the batches."""
    import time

    L, B = 50, 8
    store = remote.open(mode="cache", cache_bytes=fresh_cache_bytes(), readahead=8)
    loader = store.dataloader("train", L, B, seed=4, return_index=True)
    readers = store.tokens("train").readers
    it = iter(loader)
    first = next(it)
    ds = loader.dataset
    assert ds._lookahead == 8 * CHUNK // L
    # windows 200-320 of the order: beyond the first block of 4 chunks (160 windows), not read yet
    upcoming = loader.sampler.upcoming(0, 0, 320)[200:]
    chunks = set(ds.tokens.chunk_of(upcoming * L).tolist()) - set(ds.tokens.chunk_of(first["index"].numpy() * L).tolist())
    assert chunks
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(r._inflight for r in readers):
        time.sleep(0.01)
    cache = readers[0]._cache()
    cached = {g for g in chunks for i, r in enumerate(readers)
              if ds.tokens.chunk_starts[i] <= g < ds.tokens.chunk_starts[i + 1]
              and (r._namespace, g - ds.tokens.chunk_starts[i]) in cache}
    assert cached == chunks, (chunks, cached)  # fetched before anything asked for them
    assert first["index"].numel() == B
    del it


def test_open_and_first_window_make_few_requests(s3, remote, train):
    # a URL spelling this process has not used yet: a cold filesystem instance, as in a fresh process
    url = remote.url + "/"
    s3.reset_log()
    store = zarrtok.open(url, storage_options=remote.storage_options)
    ds = store.dataset("train", 128)
    inputs, _ = ds[0]
    requests = s3.requests
    np.testing.assert_array_equal(inputs.numpy(), window_truth(train, 0, 128)[0])
    print(f"\nopen + first window: {len(requests)} requests\n{s3.summary()}")
    assert not [r for r in requests if r.method == "HEAD"], s3.summary()
    assert len(requests) <= 6, s3.summary()
    assert not [r for r in requests if r.query and "list-type" in r.query], "open should not list the bucket"


# -- 9. copy ----------------------------------------------------------------------------------------------------
def _assert_same_store(a: zarrtok.TokenStore, b: zarrtok.TokenStore) -> None:
    assert a.splits == b.splits and a.fingerprint == b.fingerprint and a.dtype == b.dtype
    for split in a.splits:
        np.testing.assert_array_equal(np.asarray(a.tokens(split)), np.asarray(b.tokens(split)))
        np.testing.assert_array_equal(a.documents(split), b.documents(split))
    assert a.tokenizer_files() == b.tokenizer_files()


def test_copy_round_trip(s3, bucket, local_store, tmp_path):
    if not hasattr(zarrtok, "copy"):
        pytest.fail("zarrtok.copy is missing")
    url = f"s3://{bucket}/copied"
    up = zarrtok.copy(local_store.url, url, dst_storage_options=s3.storage_options)
    assert isinstance(up, zarrtok.TokenStore) and up.url.startswith("s3://")
    _assert_same_store(up, local_store)
    keys = s3.list_keys(bucket, "copied/")
    assert sum(v for k, v in keys.items() if CHUNK_PATH.search("/" + k)) == \
        sum(s["stored_bytes"] for s in local_store.info()["splits"].values())
    down = zarrtok.copy(url, str(tmp_path / "back"), src_storage_options=s3.storage_options)
    assert down.location.is_local
    _assert_same_store(down, local_store)
    np.testing.assert_array_equal(down.dataset("train", 100)[7][0].numpy(), local_store.dataset("train", 100)[7][0].numpy())
    # an existing destination is refused unless overwrite=True
    with pytest.raises(zarrtok.StoreExistsError):
        zarrtok.copy(url, str(tmp_path / "back"), src_storage_options=s3.storage_options)
    again = zarrtok.copy(url, str(tmp_path / "back"), src_storage_options=s3.storage_options, overwrite=True)
    _assert_same_store(again, local_store)
    # the method form
    other = local_store.copy_to(f"s3://{bucket}/via-method", storage_options=s3.storage_options)
    _assert_same_store(other, local_store)


def test_failed_copy_is_never_opened(s3, bucket, local_store, monkeypatch):
    from fsspec.implementations.local import LocalFileSystem

    url = f"s3://{bucket}/half-copied"
    original = LocalFileSystem.cat_file
    reads = {"n": 0}

    def flaky_cat_file(self, path, *args, **kwargs):
        if "/tokens/c/" in str(path):
            reads["n"] += 1
            if reads["n"] >= 5:  # for good: the object I/O layer's retries cannot save this copy
                raise OSError("disk went away while copying")
        return original(self, path, *args, **kwargs)

    monkeypatch.setattr(LocalFileSystem, "cat_file", flaky_cat_file)
    s3.reset_log()
    with pytest.raises(OSError, match="went away"):
        zarrtok.copy(local_store.url, url, dst_storage_options=s3.storage_options, progress=False)
    puts = [r.path for r in s3.requests if r.method == "PUT"]
    assert puts and puts[0] == f"/{bucket}/half-copied/zarr.json", puts  # "building" manifest first
    with pytest.raises((StoreNotFoundError, IncompleteStoreError)):
        zarrtok.open(url, storage_options=s3.storage_options)


def test_cli_cp(s3, bucket, local_store, tmp_path, capsys):
    from zarrtok.cli import main

    url = f"s3://{bucket}/cli"
    dst_opts = ["--dst-storage-option", "key=testing", "--dst-storage-option", "secret=testing",
                "--dst-storage-option", "client_kwargs=" + json.dumps(s3.storage_options["client_kwargs"])]
    src_opts = [o.replace("--dst-", "--src-") for o in dst_opts]
    assert main(["-q", "cp", local_store.url, url, *dst_opts]) == 0
    _assert_same_store(zarrtok.open(url, storage_options=s3.storage_options), local_store)
    back = str(tmp_path / "cli-back")
    assert main(["-q", "cp", url, back, *src_opts]) == 0
    _assert_same_store(zarrtok.open(back), local_store)
    capsys.readouterr()
    assert main(["-q", "cp", url, back, *src_opts]) == 2  # exists, no --overwrite
    err = capsys.readouterr().err
    assert "zarrtok: error:" in err and len(err.strip().splitlines()) == 1
    assert main(["-q", "cp", url, back, *src_opts, "--overwrite"]) == 0
    _assert_same_store(zarrtok.open(back), local_store)


# -- 10. memory:// end to end --------------------------------------------------------------------------------------
def test_memory_url_end_to_end(jsonl_path, tokenizer_dir, truth, tmp_path):
    url = f"memory://zarrtok-{uuid.uuid4().hex[:12]}/store"
    built = zarrtok.build("json", data_files=jsonl_path, tokenizer_name=tokenizer_dir, output=url,
                          **{**BUILD_KW, "validation_split": 0.0})
    assert not built.location.is_local
    for mode in MODES:
        store = zarrtok.open(url, reader_options={"mode": mode, "cache_bytes": fresh_cache_bytes(), "readahead": 0})
        np.testing.assert_array_equal(np.asarray(store.tokens("train")).astype(np.int64), truth)
        for L in (1, 999, 2001, len(truth) - 1):
            ds = store.dataset("train", L)
            picks = pick_windows(len(ds), L, boundaries_of(store, "train"), np.random.default_rng(L))
            for i in picks:
                np.testing.assert_array_equal(ds[i][0].numpy(), window_truth(truth, i, L)[0])
            inputs, labels = collate_windows(ds.__getitems__(picks))
            for row, i in enumerate(picks):
                np.testing.assert_array_equal(labels[row].numpy(), window_truth(truth, i, L)[1])
    if not hasattr(zarrtok, "copy"):
        pytest.fail("zarrtok.copy is missing")
    local = zarrtok.copy(url, str(tmp_path / "from-memory"))
    assert local.location.is_local
    _assert_same_store(local, zarrtok.open(url))
    np.testing.assert_array_equal(np.asarray(local.tokens("train")).astype(np.int64), truth)

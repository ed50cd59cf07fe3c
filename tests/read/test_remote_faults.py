"""Remote reads under faults, injected by the fault proxy between s3fs and the loopback S3 server and
into the objects at rest: every mode returns correct tokens or raises a clear error — never a
corrupted token — and a silent endpoint fails within the configured deadline."""

from __future__ import annotations

import logging
import re
import time
import uuid

import datasets
import fsspec
import numpy as np
import pytest

import zarrtok
from zarrtok.errors import ChecksumError, ObjectIOError
from zarrtok.read import clear_memory_caches
from zarrtok.testing.fault_proxy import FaultProxy, blackhole, drop, flip_bits, status, truncate

pytestmark = pytest.mark.timeout(120)

CHUNK = 20_000  # tokens (40 KB chunks: several 16 KiB checksummed blocks each)
#: s3fs/botocore give up fast so the zarrtok layer's own retries and deadline are what is tested
FAST = {"config_kwargs": {"read_timeout": 2, "connect_timeout": 2, "retries": {"total_max_attempts": 1}}}


@pytest.fixture(scope="module")
def published(s3, tmp_path_factory, tokenizer, docs, truth):
    """The corpus built locally (default 16 KiB block checksums) and copied into a bucket."""
    local = zarrtok.build(datasets.Dataset.from_dict({"text": docs * 3}), tokenizer=tokenizer,
                          output=str(tmp_path_factory.mktemp("faults") / "s"), chunk_size=CHUNK, progress=False)
    bucket = s3.make_bucket(f"faults-{uuid.uuid4().hex[:8]}")
    url = f"s3://{bucket}/store"
    zarrtok.copy(local.url, url, dst_storage_options=s3.storage_options, progress=False)
    expect = np.concatenate([truth] * 3)
    assert np.array_equal(np.asarray(local.tokens("train")).astype(np.int64), expect)
    return url, expect


@pytest.fixture
def proxy(s3):
    with FaultProxy(s3) as p:
        yield p


def _open(url, proxy, **reader_options):
    clear_memory_caches()
    options = {**proxy.storage_options, **FAST}
    return zarrtok.open(url, storage_options=options, reader_options={"readahead": 0, **reader_options})


@pytest.mark.parametrize("mode", ["range", "auto", "cache"])
@pytest.mark.parametrize("fault", ["flip", "500", "503", "drop", "truncate"])
def test_transient_faults_give_correct_tokens(published, proxy, mode, fault):
    url, expect = published
    store = _open(url, proxy, mode=mode)
    ds = store.dataset("train", 700)
    ds[0]  # open + the block checksums, before the fault
    make = {"flip": lambda: flip_bits(3, path=r"/tokens/c/", times=1),
            "500": lambda: status(500, path=r"/tokens/c/", times=1),
            "503": lambda: status(503, path=r"/tokens/c/", times=1),
            "drop": lambda: drop(path=r"/tokens/c/", times=1),
            "truncate": lambda: truncate(10, path=r"/tokens/c/", times=1)}[fault]
    rule = proxy.add(make())
    picks = [3, 40, len(ds) // 2, len(ds) - 1]
    batch = ds.__getitems__(picks)
    assert rule.applied == 1, proxy.summary()
    for (x, y), i in zip(batch, picks):
        np.testing.assert_array_equal(x.numpy(), expect[i * 700 : i * 700 + 700])
        np.testing.assert_array_equal(y.numpy(), expect[i * 700 + 1 : i * 700 + 701])


@pytest.mark.parametrize("mode", ["range", "auto", "cache"])
def test_bit_flips_on_every_response_are_never_served(published, proxy, mode):
    url, expect = published
    store = _open(url, proxy, mode=mode)
    ds = store.dataset("train", 700)
    ds[0]
    proxy.add(flip_bits(1, path=r"/tokens/c/"))  # always: the retry is corrupted too
    # zarrtok's block/chunk CRC (ChecksumError naming shard and chunk), or for a whole-object GET the
    # transport's own checksum, retried to the budget (ObjectIOError naming the object): never data
    with pytest.raises((ChecksumError, ObjectIOError)) as info:
        ds[len(ds) // 2]
    assert "checksum" in str(info.value).lower() and re.search(r"chunk \d+|tokens/c/\d+", str(info.value))
    proxy.clear()
    i = len(ds) // 2
    np.testing.assert_array_equal(ds[i][0].numpy(), expect[i * 700 : i * 700 + 700])  # nothing bad was kept


def test_permanent_errors_name_the_url_within_the_deadline(published, proxy):
    url, _ = published
    store = _open(url, proxy, mode="range", deadline=4, retries=3)
    ds = store.dataset("train", 700)
    ds[0]
    proxy.add(status(500, path=r"/tokens/c/"))
    t0 = time.monotonic()
    with pytest.raises(ObjectIOError) as info:
        ds[5]
    assert time.monotonic() - t0 < 15
    message = str(info.value)
    assert url.split("://")[1].split("/")[0] in message and "/tokens/c/" in message and "attempt" in message


def test_a_silent_endpoint_fails_within_the_deadline(published, proxy):
    url, _ = published
    store = _open(url, proxy, mode="range", deadline=3, retries=2)
    ds = store.dataset("train", 700)
    ds[0]
    proxy.add(blackhole(path=r"/tokens/c/"))
    t0 = time.monotonic()
    with pytest.raises(ObjectIOError, match="tokens/c/"):
        ds[7]
    assert time.monotonic() - t0 < 12  # 3 s deadline (+ s3fs's 2 s socket timeouts), not minutes


def test_corruption_at_rest_is_detected_in_every_mode(tokenizer, docs, caplog):
    url = f"memory://rest-{uuid.uuid4().hex[:8]}/s"
    zarrtok.build(datasets.Dataset.from_dict({"text": docs}), tokenizer=tokenizer, output=url, chunk_size=CHUNK,
                  progress=False)
    fs = fsspec.filesystem("memory")
    key = url[len("memory://"):] + "/splits/train/shards/" 
    chunk_key = [p for p in fs.find(key) if "/tokens/c/0" in p][0]
    data = bytearray(fs.cat_file(chunk_key))
    data[20_001] ^= 0x10  # a byte in the second 16 KiB block
    fs.pipe_file(chunk_key, bytes(data))
    for mode in ("range", "auto", "cache"):
        clear_memory_caches()
        tokens = zarrtok.open(url, reader_options={"mode": mode, "readahead": 0}).tokens("train")
        if mode != "cache":  # ranged reads: the first block is intact and served (cache mode: the whole chunk is bad)
            np.testing.assert_array_equal(tokens[0:100], zarrtok.open(url, reader_options={"verify": False,
                                          "mode": "range"}).tokens("train")[0:100])
        with pytest.raises(ChecksumError):
            for _ in range(3):  # auto: the first touch is ranged, later ones whole-chunk: both checked
                tokens[10_000:10_100]


def test_store_without_block_checksums_auto_reads_whole_verified_chunks(tokenizer, docs, caplog):
    url = f"memory://noblocks-{uuid.uuid4().hex[:8]}/s"
    zarrtok.build(datasets.Dataset.from_dict({"text": docs}), tokenizer=tokenizer, output=url, chunk_size=CHUNK,
                  progress=False, block_bytes=None)
    store = zarrtok.open(url, reader_options={"mode": "auto", "readahead": 0})
    reader = store.tokens("train").readers[0]
    assert not reader.verified_ranges
    store.tokens("train")[5:10]
    assert reader.stats["range_requests"] == 0 and reader.stats["chunk_fetches"] == 1
    with caplog.at_level(logging.WARNING, logger="zarrtok.read.remote"):
        zarrtok.open(url, reader_options={"mode": "range"}).tokens("train")
    assert "NOT verified" in caplog.text

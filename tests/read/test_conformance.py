"""One conformance suite every token source passes (as ``zarr.testing`` and fsspec's abstract tests do
for their backends): the same tokens, the same errors, the same batch results.

Sources: local memory maps (one shard; many shards with small, padded chunks; a single-chunk shard;
no checksum), the Zarr fallback (a compressed copy), remote readers in ``range`` / ``cache`` /
``auto`` mode (``memory://``), and shared memory. Ground truth: the tokenizer applied to the source
documents (``truth``), independently of zarrtok.
"""

from __future__ import annotations

import pickle
import uuid

import datasets
import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import zarrtok
from zarrtok.read.shm import SharedTokens
from zarrtok.read.source import TokenSource
from zarrtok.train.dataset import TokenDataset

SOURCES = ["local", "local-multishard", "local-single-chunk", "local-no-checksum", "zarr-fallback",
           "remote-range", "remote-cache", "remote-auto", "shared-memory"]


def _build(docs, tokenizer, out, **kw):
    return zarrtok.build(datasets.Dataset.from_dict({"text": docs}), tokenizer=tokenizer, output=str(out),
                         progress=False, batch_size=40, **kw)


def _recompress(path: str) -> None:
    """Rewrite every token array of the store compressed (zstd): no longer raw bytes."""
    store = zarrtok.open(path)
    for split in store.splits:
        for shard in store.manifest.splits[split].shards:
            group = zarr.open_group(f"{path}/splits/{split}/shards/{shard.name}", mode="a")
            data = group["tokens"][:]
            chunks = group["tokens"].chunks
            del group["tokens"]
            arr = group.create_array("tokens", shape=data.shape, chunks=chunks, dtype=data.dtype,
                                     compressors=[zarr.codecs.ZstdCodec()])
            arr[:] = data


@pytest.fixture(scope="module")
def sources(tmp_path_factory, tokenizer, docs):
    """name -> (token source factory, what it must equal). Built once per module."""
    root = tmp_path_factory.mktemp("conformance")
    made = {}
    made["local"] = _build(docs, tokenizer, root / "one", chunk_size=1000)
    made["local-multishard"] = _build(docs, tokenizer, root / "multi", chunk_size=333, shard_size=4000)
    made["local-single-chunk"] = _build(docs, tokenizer, root / "single", chunk_size=10_000_000)
    made["local-no-checksum"] = _build(docs, tokenizer, root / "nocrc", chunk_size=700, checksum=None)
    fallback = _build(docs, tokenizer, root / "zstd", chunk_size=900, shard_size=9000)
    _recompress(fallback.url)
    made["zarr-fallback"] = zarrtok.open(fallback.url)
    url = f"memory://conformance-{uuid.uuid4().hex[:8]}/store"
    zarrtok.copy(made["local-multishard"].url, url, progress=False)
    for mode in ("range", "cache", "auto"):
        made[f"remote-{mode}"] = zarrtok.open(url, reader_options={"mode": mode, "readahead": 0,
                                                                    "cache_bytes": (16 << 20) + len(mode)})
    out = {name: store.tokens("train") for name, store in made.items()}
    out["shared-memory"] = SharedTokens.create(made["local"].tokens("train"), name="train")
    yield out
    out["shared-memory"].close()


@pytest.fixture(params=SOURCES)
def source(request, sources):
    return sources[request.param]


def test_is_a_complete_token_source(source, truth):
    assert isinstance(source, TokenSource)
    assert len(source) == len(truth)
    assert source.dtype == np.dtype("uint16")
    assert source.num_chunks >= 1 and source.chunk_size >= 1
    chunks = source.chunk_of(np.arange(0, len(truth), 97))
    assert chunks.min() >= 0 and chunks.max() < source.num_chunks and np.all(np.diff(chunks) >= 0)
    source.prefetch_chunks([0])  # never an error, whatever the source


def test_whole_stream_equals_ground_truth(source, truth):
    np.testing.assert_array_equal(np.asarray(source).astype(np.int64), truth)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_ranges_equal_ground_truth(source, truth, data):
    n = len(truth)
    a = data.draw(st.integers(0, n))
    b = data.draw(st.integers(a, min(n, a + 5000)))
    np.testing.assert_array_equal(np.asarray(source.read(a, b), dtype=np.int64), truth[a:b])
    out = np.full(b - a, -1, dtype=np.int64)
    source.read_into(a, b, out)
    np.testing.assert_array_equal(out, truth[a:b])
    np.testing.assert_array_equal(np.asarray(source[a:b], dtype=np.int64), truth[a:b])
    step = data.draw(st.integers(1, 7))
    np.testing.assert_array_equal(np.asarray(source[a:b:step], dtype=np.int64), truth[a:b:step])


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_batches_equal_rows(source, truth, data):
    n = len(truth)
    width = data.draw(st.integers(1, 1500))
    starts = data.draw(st.lists(st.integers(0, n - width), min_size=1, max_size=20))
    out = np.full((len(starts), width), -1, dtype=np.int64)
    source.read_batch_into(starts, width, out)
    for row, a in enumerate(starts):
        np.testing.assert_array_equal(out[row], truth[a : a + width])


def test_single_tokens_and_errors(source, truth):
    n = len(truth)
    for i in (0, 1, n // 2, n - 1, -1, -n):
        assert int(source[i]) == int(truth[i])
    for bad in (n, -n - 1, 10 * n):
        with pytest.raises(IndexError):
            source[bad]
    for bad in ("3", 1.5, None, [1, 2]):
        with pytest.raises(TypeError):
            source[bad]
    assert len(source[n:n + 10]) == 0 and len(source[5:2]) == 0


def test_windows_and_pickling(source, truth):
    L = 257
    ds = TokenDataset(source, L)
    assert len(ds) == (len(truth) - 1) // L
    again = pickle.loads(pickle.dumps(ds))
    picks = [0, 1, len(ds) // 3, len(ds) - 1]
    batch = again.__getitems__(picks)
    for (x, y), i in zip(batch, picks):
        np.testing.assert_array_equal(x.numpy(), truth[i * L : i * L + L])
        np.testing.assert_array_equal(y.numpy(), truth[i * L + 1 : i * L + L + 1])
        x1, y1 = ds[i]
        np.testing.assert_array_equal(x1.numpy(), x.numpy())
        np.testing.assert_array_equal(y1.numpy(), y.numpy())

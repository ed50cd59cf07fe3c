"""Window arithmetic and reads: every window equals the ground-truth slice, for any seq_len,
across chunk and shard boundaries; batched reads; pickling by reference; DataLoader workers."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import zarrtok
from zarrtok.train.dataset import TokenDataset, WindowBatch, collate_windows, num_windows

HYP = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _reference_item(truth: np.ndarray, i: int, L: int):
    x = truth[i * L : i * L + L + 1]
    return x[:-1], x[1:]


@HYP
@given(n=st.integers(0, 10_000), L=st.integers(1, 12_000))
def test_num_windows_matches_archai(n, L):
    expected = (n - 1) // L if n > 0 else 0
    assert num_windows(n, L) == max(0, expected)
    if num_windows(n, L):
        # the last window fits entirely inside the stream, one more would not
        last = num_windows(n, L) - 1
        assert last * L + L + 1 <= n  # window i reads tokens [i*L, i*L + L + 1)
        assert (last + 1) * L + L + 1 > n


@HYP
@given(data=st.data())
def test_windows_equal_ground_truth(small_chunk_store, truth, data):
    n = len(truth)
    L = data.draw(st.one_of(st.integers(1, 64), st.integers(65, 3000), st.sampled_from([776, 777, 778, 1554, n - 1])))
    ds = small_chunk_store.dataset("train", L)
    assert len(ds) == (n - 1) // L
    i = data.draw(st.one_of(st.integers(0, len(ds) - 1), st.just(len(ds) - 1), st.integers(-len(ds), -1)))
    inputs, labels = ds[i]
    ref_in, ref_lab = _reference_item(truth, i % len(ds), L)
    assert inputs.dtype == labels.dtype == torch.int64
    assert inputs.shape == labels.shape == (L,)
    np.testing.assert_array_equal(inputs.numpy(), ref_in)
    np.testing.assert_array_equal(labels.numpy(), ref_lab)


@HYP
@given(data=st.data())
def test_getitems_equals_getitem(small_chunk_store, truth, data):
    L = data.draw(st.integers(1, 2000))
    ds = small_chunk_store.dataset("train", L)
    idx = data.draw(st.lists(st.integers(-len(ds), len(ds) - 1), min_size=0, max_size=20))
    batch = ds.__getitems__(idx)
    assert isinstance(batch, WindowBatch) and len(batch) == len(idx)
    for (a, b), i in zip(batch, idx):
        ref_in, ref_lab = _reference_item(truth, i % len(ds), L)
        np.testing.assert_array_equal(a.numpy(), ref_in)
        np.testing.assert_array_equal(b.numpy(), ref_lab)
    inputs, labels = collate_windows(batch)
    assert inputs.shape == labels.shape == (len(idx), L)


@HYP
@given(data=st.data())
def test_token_array_slicing_matches_numpy(small_chunk_store, truth, data):
    tokens = small_chunk_store.tokens("train")
    n = len(truth)
    a = data.draw(st.integers(-n - 5, n + 5))
    b = data.draw(st.integers(-n - 5, n + 5))
    step = data.draw(st.sampled_from([None, 1, 2, 7, -1, -3]))
    got = tokens[a:b:step]
    np.testing.assert_array_equal(np.asarray(got, dtype=np.int64), truth[a:b:step])
    assert got.dtype == np.uint16
    i = data.draw(st.integers(-n, n - 1))
    assert int(tokens[i]) == truth[i]


def test_token_array_basics(small_chunk_store, truth):
    tokens = small_chunk_store.tokens("train")
    assert len(tokens) == len(truth) and tokens.shape == (len(truth),)
    assert tokens.dtype == np.uint16 and tokens.nbytes == 2 * len(truth)
    np.testing.assert_array_equal(np.asarray(tokens, dtype=np.int64), truth)
    with pytest.raises(IndexError):
        tokens[len(truth)]
    with pytest.raises(TypeError):
        tokens["x"]
    view = tokens[10:20]
    assert not view.flags.writeable


def test_index_errors_and_types(small_chunk_store):
    ds = small_chunk_store.dataset("train", 100)
    n = len(ds)
    with pytest.raises(IndexError):
        ds[n]
    with pytest.raises(IndexError):
        ds[-n - 1]
    with pytest.raises(IndexError):
        ds.__getitems__([0, n])
    with pytest.raises(TypeError):
        ds[1.5]
    a, _ = ds[np.int64(3)]
    b, _ = ds[torch.tensor(3)]
    assert torch.equal(a, b)


@pytest.mark.parametrize("bad", [0, -1, -100])
def test_non_positive_seq_len(small_chunk_store, bad):
    with pytest.raises(ValueError, match="seq_len must be positive"):
        small_chunk_store.dataset("train", bad)


def test_seq_len_larger_than_split(small_chunk_store, truth):
    n = len(truth)
    assert len(small_chunk_store.dataset("train", n - 1)) == 1
    with pytest.raises(ValueError, match=f"has {n} tokens"):
        small_chunk_store.dataset("train", n)
    with pytest.raises(TypeError):
        small_chunk_store.dataset("train", 2.5)
    with pytest.raises(TypeError):
        small_chunk_store.dataset("train", True)


def test_unknown_split(small_chunk_store):
    with pytest.raises(KeyError, match="unknown split 'nope'"):
        small_chunk_store.dataset("nope", 16)


def test_pickles_by_reference(small_chunk_store, truth):
    ds = small_chunk_store.dataset("train", 64)
    ds[0]  # open some chunk maps first: they must not be pickled
    blob = pickle.dumps(ds)
    assert len(blob) < 10_000 < len(truth) * 2
    clone = pickle.loads(blob)
    for i in (0, 17, len(ds) - 1):
        assert torch.equal(clone[i][0], ds[i][0]) and torch.equal(clone[i][1], ds[i][1])


@pytest.mark.slow
@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_dataloader_workers(small_chunk_store, truth, context):
    L = 300
    ds = small_chunk_store.dataset("train", L)
    loader = torch.utils.data.DataLoader(ds, batch_size=8, num_workers=2, multiprocessing_context=context,
                                         collate_fn=collate_windows)
    seen = 0
    for b, (inputs, labels) in enumerate(loader):
        for r in range(inputs.shape[0]):
            i = b * 8 + r
            ref_in, ref_lab = _reference_item(truth, i, L)
            np.testing.assert_array_equal(inputs[r].numpy(), ref_in)
            np.testing.assert_array_equal(labels[r].numpy(), ref_lab)
            seen += 1
    assert seen == len(ds)


def test_default_collate_also_works(small_chunk_store, truth):
    ds = small_chunk_store.dataset("train", 50)
    loader = torch.utils.data.DataLoader(ds, batch_size=4)
    inputs, labels = next(iter(loader))
    np.testing.assert_array_equal(inputs[1].numpy(), truth[50:100])
    np.testing.assert_array_equal(labels[1].numpy(), truth[51:101])


def test_mapping_budget_bounds_maps(small_chunk_store, truth):
    store = zarrtok.open(small_chunk_store.url, reader_options={"max_mapped_chunks": 3})
    ds = store.dataset("train", 100)
    for i in list(range(len(ds))) + list(range(len(ds) - 1, -1, -7)):
        np.testing.assert_array_equal(ds[i][0].numpy(), truth[i * 100 : i * 100 + 100])
    readers = store.tokens("train").readers
    assert len(readers) > 1
    assert sum(len(r._maps) for r in readers) <= 3  # one budget for all shards of the store


def test_chunk_maps_hold_no_file_descriptors(tmp_path, tokenizer, docs, truth):
    import datasets
    import os

    store = zarrtok.build(datasets.Dataset.from_dict({"text": docs}), tokenizer=tokenizer, output=tmp_path / "s",
                          chunk_size=64, progress=False)
    tokens = zarrtok.open(tmp_path / "s").tokens("train")
    before = len(os.listdir("/proc/self/fd"))
    np.testing.assert_array_equal(np.asarray(tokens, dtype=np.int64), truth)  # maps all ~900 chunks
    assert sum(len(r._maps) for r in tokens.readers) == -(-len(truth) // 64)
    assert len(os.listdir("/proc/self/fd")) <= before + 2
    assert store is not None


def test_dataset_over_plain_numpy_source(truth):
    """TokenDataset works over any token source with the read interface."""

    class Source:
        dtype = truth.dtype

        def __len__(self):
            return len(truth)

        def read(self, a, b):
            return truth[a:b]

        def read_into(self, a, b, out):
            out[...] = truth[a:b]

    ds = TokenDataset(Source(), 10)
    assert len(ds) == (len(truth) - 1) // 10
    np.testing.assert_array_equal(ds[5][1].numpy(), truth[51:61])


def test_views_outlive_evicted_maps(small_chunk_store, truth):
    import gc

    store = zarrtok.open(small_chunk_store.url, reader_options={"max_mapped_chunks": 1})
    tokens = store.tokens("train")
    view = tokens[5:50]  # a view into chunk 0's map
    for start in range(1000, len(truth) - 10, 997):
        tokens[start : start + 5]  # evicts chunk 0's map from the reader
    gc.collect()
    np.testing.assert_array_equal(np.asarray(view, dtype=np.int64), truth[5:50])

"""Tests of zarrtok.sampling: epoch orders, mixtures, the distributed resumable batch sampler."""

from __future__ import annotations

import pickle
from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from zarrtok.train.sampler import ChunkShuffleSampler
from zarrtok.train.sampling import (
    GlobalBatchSampler,
    IndexBatch,
    MixtureOrder,
    WindowOrder,
    apportion,
    chunk_local_order,
    global_order,
    resolve_rank_world,
    sequential_order,
)

FAST = settings(deadline=None, max_examples=60)


# -- helpers -------------------------------------------------------------------------------------


class FakeTokens:
    """A token source whose window ``w`` (starting at ``w * seq_len``) lies in chunk ``ids[w]``."""

    def __init__(self, ids, seq_len):
        self.ids = np.asarray(ids, dtype=np.int64)
        self.seq_len = seq_len

    def chunk_of(self, positions):
        return self.ids[np.asarray(positions, dtype=np.int64) // self.seq_len]


class FakeDataset:
    def __init__(self, ids, seq_len=7, chunk_of=True):
        self.seq_len = seq_len
        self._n = len(ids)
        self.tokens = FakeTokens(ids, seq_len) if chunk_of else object()

    def __len__(self):
        return self._n


class IndexDataset(Dataset):
    """Map-style dataset returning the index; ``__getitems__`` also reports the batch's step (worker-side)."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        assert 0 <= i < self.n
        return i

    def __getitems__(self, indices):
        assert isinstance(indices, IndexBatch), type(indices)
        return [(self[i], indices.epoch, indices.step, indices.first) for i in indices]


def reference_chunk_local_order(ids, seed, epoch, block_chunks):
    """The chunk-local shuffle as first written in ChunkShuffleSampler (the released order must not change)."""
    chunks = np.asarray(ids, dtype=np.int64)
    n = chunks.size
    windows = np.arange(n, dtype=np.int64)
    rng = np.random.default_rng([seed, epoch])
    distinct = np.unique(chunks)
    shuffled = rng.permutation(distinct)
    rank = np.empty(int(distinct.max()) + 1 if distinct.size else 0, dtype=np.int64)
    rank[shuffled] = np.arange(shuffled.size)
    block = rank[chunks] // block_chunks
    return windows[np.lexsort((rng.random(n), block))]


def collate_tuples(batch):
    return batch


def all_ranks(order, *, batch_size, world_size, **kw):
    return [
        list(GlobalBatchSampler(order, batch_size=batch_size, rank=r, world_size=world_size, **kw))
        for r in range(world_size)
    ]


def served_global(per_rank):
    """Global sequence served: for each step, the ranks' batches in rank order (missing = empty)."""
    steps = sorted({b.step for batches in per_rank for b in batches})
    by = [{b.step: b for b in batches} for batches in per_rank]
    out = []
    for s in steps:
        for r in range(len(per_rank)):
            out.extend(by[r].get(s, []))
    return np.asarray(out, dtype=np.int64)


def splits(g):
    """All (batch_size, world_size) with batch_size * world_size == g."""
    return [(g // w, w) for w in range(1, g + 1) if g % w == 0]


# -- orders --------------------------------------------------------------------------------------


def test_sequential_order():
    o = sequential_order(5)
    assert o.dtype == np.int64 and o.tolist() == [0, 1, 2, 3, 4]
    assert sequential_order(0).size == 0


@FAST
@given(n=st.integers(0, 300), seed=st.integers(0, 2**40), epoch=st.integers(0, 1000))
def test_global_order_is_deterministic_permutation(n, seed, epoch):
    a = global_order(n, seed=seed, epoch=epoch)
    b = global_order(n, seed=seed, epoch=epoch)
    assert a.dtype == np.int64
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(np.sort(a), np.arange(n))


def test_global_order_changes_with_epoch_and_seed():
    orders = [global_order(200, seed=3, epoch=e).tolist() for e in range(6)]
    assert len({tuple(o) for o in orders}) == 6
    assert global_order(200, seed=4, epoch=0).tolist() != orders[0]
    # not the same stream as a plain [seed, epoch] generator (salted)
    assert orders[0] != np.random.default_rng([3, 0]).permutation(200).tolist()


@pytest.mark.parametrize("shuffle", ["none", "global", "chunk"])
def test_window_order_deterministic_cached_picklable(shuffle):
    ids = np.repeat(np.arange(13), 10)  # 130 windows, 13 chunks
    kw = {"shuffle": shuffle, "seed": 11, "block_chunks": 3, "chunk_ids": ids if shuffle == "chunk" else None}
    a, b = WindowOrder(130, **kw), WindowOrder(130, **kw)
    assert len(a) == 130
    for e in range(3):
        oa, ob = a.order(e), b.order(e)
        np.testing.assert_array_equal(oa, ob)
        np.testing.assert_array_equal(np.sort(oa), np.arange(130))
        assert oa.dtype == np.int64 and not oa.flags.writeable
        assert a.order(e) is oa  # one-entry cache
    if shuffle == "none":
        assert a.order(0).tolist() == list(range(130)) == a.order(5).tolist()
    else:
        assert a.order(0).tolist() != a.order(1).tolist()
    blob = pickle.dumps(a)
    assert len(blob) < 2000
    c = pickle.loads(blob)
    assert c._cache is None
    np.testing.assert_array_equal(c.order(1), a.order(1))


def test_window_order_validation():
    with pytest.raises(ValueError, match="shuffle"):
        WindowOrder(3, shuffle="random")
    with pytest.raises(ValueError, match="chunk_ids"):
        WindowOrder(3, shuffle="chunk")
    with pytest.raises(ValueError, match="shape"):
        WindowOrder(3, shuffle="chunk", chunk_ids=[0, 1])
    with pytest.raises(ValueError, match="non-negative"):
        WindowOrder(2, shuffle="chunk", chunk_ids=[0, -1])
    with pytest.raises(ValueError, match="block_chunks"):
        WindowOrder(3, block_chunks=0)
    with pytest.raises(ValueError, match="n must be"):
        WindowOrder(-1)
    with pytest.raises(TypeError):
        WindowOrder(3.0)
    with pytest.raises(ValueError, match="epoch"):
        WindowOrder(3).order(-1)


chunk_ids_st = st.lists(st.integers(0, 12), min_size=0, max_size=120)


@FAST
@given(
    ids=chunk_ids_st,
    sort=st.booleans(),
    seed=st.integers(0, 2**32),
    epoch=st.integers(0, 50),
    block_chunks=st.integers(1, 6),
)
def test_chunk_local_order_matches_reference_and_sampler(ids, sort, seed, epoch, block_chunks):
    ids = sorted(ids) if sort else ids  # real chunk ids are sorted; any ids must match anyway
    ds = FakeDataset(ids)
    expected = reference_chunk_local_order(ids, seed, epoch, block_chunks)
    sampler_order = ChunkShuffleSampler(ds, seed=seed, epoch=epoch, block_chunks=block_chunks).order()
    np.testing.assert_array_equal(sampler_order, expected)
    got = chunk_local_order(np.asarray(ids, dtype=np.int64), seed=seed, epoch=epoch, block_chunks=block_chunks)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, expected)
    wo = WindowOrder.from_dataset(ds, shuffle="chunk", seed=seed, block_chunks=block_chunks)
    np.testing.assert_array_equal(wo.order(epoch), expected)


def test_chunk_local_order_without_chunk_of_matches_sampler():
    ds = FakeDataset(range(40), chunk_of=False)
    expected = reference_chunk_local_order([0] * 40, 5, 2, 4)
    np.testing.assert_array_equal(ChunkShuffleSampler(ds, seed=5, epoch=2).order(), expected)
    np.testing.assert_array_equal(WindowOrder.from_dataset(ds, seed=5).order(2), expected)


@FAST
@given(ids=chunk_ids_st, seed=st.integers(0, 2**32), epoch=st.integers(0, 50), block_chunks=st.integers(1, 6))
def test_chunk_local_blocks_are_consecutive_and_small(ids, seed, epoch, block_chunks):
    ids = np.asarray(sorted(ids), dtype=np.int64)
    order = chunk_local_order(ids, seed=seed, epoch=epoch, block_chunks=block_chunks)
    np.testing.assert_array_equal(np.sort(order), np.arange(ids.size))
    # greedy partition into maximal segments of <= block_chunks distinct chunks reproduces the blocks
    segments: list[set[int]] = []
    for c in ids[order].tolist():
        if segments and (c in segments[-1] or len(segments[-1]) < block_chunks):
            segments[-1].add(c)
        else:
            segments.append({c})
    seen: set[int] = set()
    for seg in segments:
        assert len(seg) <= block_chunks
        assert not (seg & seen), "a chunk's windows are split over two blocks"
        seen |= seg
    distinct = np.unique(ids).size
    assert len(segments) == -(-distinct // block_chunks)


# -- exactly once across ranks -------------------------------------------------------------------


@FAST
@given(
    n=st.integers(0, 90),
    batch_size=st.integers(1, 7),
    world_size=st.sampled_from([1, 2, 4]),
    remainder=st.sampled_from(["drop", "pad", "partial"]),
    shuffle=st.sampled_from(["none", "global"]),
    epoch=st.integers(0, 5),
)
def test_exactly_once_across_ranks(n, batch_size, world_size, remainder, shuffle, epoch):
    order = WindowOrder(n, shuffle=shuffle, seed=1)
    g = batch_size * world_size
    per_rank = all_ranks(order, batch_size=batch_size, world_size=world_size, remainder=remainder, epoch=epoch)
    served = served_global(per_rank)
    o = order.order(epoch)
    samplers = [
        GlobalBatchSampler(
            order, batch_size=batch_size, rank=r, world_size=world_size, remainder=remainder, epoch=epoch
        )
        for r in range(world_size)
    ]
    for r, batches in enumerate(per_rank):
        assert len(samplers[r]) == len(batches)
        for b in batches:
            assert isinstance(b, IndexBatch) and b.epoch == epoch and b.first == b.step * g
            assert all(type(i) is int for i in b)
    steps = samplers[0].steps_per_epoch
    if remainder == "drop":
        assert steps == n // g
        np.testing.assert_array_equal(served, o[: (n // g) * g])
        assert len(set(served.tolist())) == served.size
        assert all(len(b) == batch_size for batches in per_rank for b in batches)
        assert len({len(batches) for batches in per_rank}) == 1
    elif remainder == "pad":
        assert steps == -(-n // g)
        np.testing.assert_array_equal(served, o[np.arange(steps * g) % max(n, 1)] if n else o[:0])
        assert set(served.tolist()) == set(range(n))
        assert all(len(b) == batch_size for batches in per_rank for b in batches)
        assert len({len(batches) for batches in per_rank}) == 1
    else:
        assert steps == -(-n // g)
        np.testing.assert_array_equal(served, o)
        for batches in per_rank:
            assert all(len(b) > 0 for b in batches)
        if steps and n % g:  # the last global batch is split as evenly as possible
            last = [len(samplers[r].rank_batch(epoch, steps - 1)) for r in range(world_size)]
            assert sum(last) == n % g and max(last) - min(last) <= 1 and last == sorted(last, reverse=True)
    for s in range(steps):
        gb = samplers[0].global_batch(epoch, s)
        np.testing.assert_array_equal(gb, np.concatenate([samplers[r].rank_batch(epoch, s) for r in range(world_size)]))
    with pytest.raises(IndexError):
        samplers[0].global_batch(epoch, steps)


def test_pad_smaller_than_global_batch_wraps_repeatedly():
    order = WindowOrder(3, shuffle="none")
    per_rank = all_ranks(order, batch_size=4, world_size=2, remainder="pad")
    assert [list(b) for b in per_rank[0]] == [[0, 1, 2, 0]]
    assert [list(b) for b in per_rank[1]] == [[1, 2, 0, 1]]


def test_partial_gives_empty_ranks_nothing():
    order = WindowOrder(10, shuffle="none")
    samplers = [GlobalBatchSampler(order, batch_size=2, rank=r, world_size=4, remainder="partial") for r in range(4)]
    out = [[list(b) for b in s] for s in samplers]
    # step 0: 8 samples; step 1: 2 samples over 4 ranks -> ranks 0, 1 get one each
    assert out == [[[0, 1], [8]], [[2, 3], [9]], [[4, 5]], [[6, 7]]]
    assert [len(s) for s in samplers] == [2, 2, 1, 1]
    assert samplers[3].rank_batch(0, 1) == [] and samplers[3].rank_batch(0, 1).step == 1


# -- DataLoader ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "num_workers,world_size,remainder",
    [(0, 1, "drop"), (0, 2, "partial"), (1, 2, "pad"), (1, 4, "partial"), (2, 2, "drop")],
)
def test_dataloader_workers_exactly_once_in_order(num_workers, world_size, remainder):
    n, batch_size, epoch = 53, 3, 2
    order = WindowOrder(n, shuffle="global", seed=9)
    ds = IndexDataset(n)
    per_rank = []
    for r in range(world_size):
        sampler = GlobalBatchSampler(
            order, batch_size=batch_size, rank=r, world_size=world_size, remainder=remainder, epoch=epoch
        )
        kw = {"multiprocessing_context": "fork"} if num_workers else {}
        loader = DataLoader(ds, batch_sampler=sampler, num_workers=num_workers, collate_fn=collate_tuples, **kw)
        assert len(loader) == len(sampler)
        batches = []
        for items in loader:
            b = IndexBatch([i for i, *_ in items], *items[0][1:])  # attributes as seen by the worker
            batches.append(b)
        assert batches == list(sampler)
        assert [(b.epoch, b.step, b.first) for b in batches] == [(b.epoch, b.step, b.first) for b in sampler]
        per_rank.append(batches)
    served = served_global(per_rank)
    g = batch_size * world_size
    o = order.order(epoch)
    if remainder == "drop":
        np.testing.assert_array_equal(served, o[: (n // g) * g])
    elif remainder == "pad":
        np.testing.assert_array_equal(served, o[np.arange(-(-n // g) * g) % n])
    else:
        np.testing.assert_array_equal(served, o)


# -- resume --------------------------------------------------------------------------------------


@FAST
@given(
    data=st.data(),
    n=st.integers(0, 80),
    g=st.sampled_from([1, 2, 4, 6, 8, 12]),
    remainder=st.sampled_from(["drop", "pad", "partial"]),
    epoch=st.integers(0, 3),
)
def test_resume_elastic_equals_uninterrupted(data, n, g, remainder, epoch):
    (b1, w1), (b2, w2) = data.draw(st.sampled_from(splits(g))), data.draw(st.sampled_from(splits(g)))
    order = WindowOrder(n, shuffle="global", seed=7)
    full = served_global(all_ranks(order, batch_size=b1, world_size=w1, remainder=remainder, epoch=epoch))
    steps = GlobalBatchSampler(order, batch_size=b1, remainder=remainder, epoch=epoch).steps_per_epoch
    k = data.draw(st.integers(0, steps + 1))
    before = served_global(
        [
            [b for b in batches if b.step < k]
            for batches in all_ranks(order, batch_size=b1, world_size=w1, remainder=remainder, epoch=epoch)
        ]
    )
    consumed = k * g
    after_ranks = all_ranks(order, batch_size=b2, world_size=w2, remainder=remainder, epoch=epoch, consumed=consumed)
    for r, batches in enumerate(after_ranks):
        assert all(b.step >= k for b in batches)
        s = GlobalBatchSampler(
            order, batch_size=b2, rank=r, world_size=w2, remainder=remainder, epoch=epoch, consumed=consumed
        )
        assert len(s) == len(batches)
    np.testing.assert_array_equal(np.concatenate([before, served_global(after_ranks)]), full)
    # resuming from a step boundary through consumed_after gives the same thing
    if k:
        s = GlobalBatchSampler(order, batch_size=b1, world_size=w1, rank=0, remainder=remainder, epoch=epoch)
        assert s.consumed_after(k - 1) == min(consumed, n)


@FAST
@given(
    n=st.integers(0, 60),
    consumed=st.integers(0, 70),
    batch_size=st.integers(1, 5),
    world_size=st.sampled_from([1, 2, 4]),
    remainder=st.sampled_from(["drop", "pad", "partial"]),
)
def test_resume_from_unaligned_consumed(n, consumed, batch_size, world_size, remainder):
    g = batch_size * world_size
    order = WindowOrder(n, shuffle="global", seed=2)
    o = order.order(0)
    per_rank = all_ranks(order, batch_size=batch_size, world_size=world_size, remainder=remainder, consumed=consumed)
    served = served_global(per_rank)
    rest = max(n - consumed, 0)
    if remainder == "drop":
        expected = o[consumed : consumed + (rest // g) * g]
    elif remainder == "pad":
        expected = o[np.arange(consumed, consumed + -(-rest // g) * g) % n] if rest else o[:0]
    else:
        expected = o[consumed:]
    np.testing.assert_array_equal(served, expected)
    firsts = sorted({b.first for batches in per_rank for b in batches})
    assert firsts == list(range(consumed, consumed + len(firsts) * g, g))
    for batches in per_rank:
        for b in batches:
            assert b.first == consumed % g + b.step * g


def test_consumed_past_end_yields_nothing_and_set_epoch_resets():
    order = WindowOrder(20, shuffle="global", seed=0)
    s = GlobalBatchSampler(order, batch_size=4, epoch=3, consumed=100)
    assert list(s) == [] and len(s) == 0
    s.set_epoch(3)  # same epoch: keeps the resume point
    assert s.consumed == 100
    s.set_epoch(4)
    assert s.consumed == 0 and len(s) == 5
    assert [b.epoch for b in s] == [4] * 5
    s.set_consumed(8)
    assert len(s) == 3 and [b.step for b in s] == [2, 3, 4]
    it = iter(s)  # the state is snapshot by iter()
    s.set_epoch(5)
    assert [b.epoch for b in it] == [4, 4, 4]
    with pytest.raises(ValueError):
        s.set_consumed(-1)


def test_sampler_validation():
    order = WindowOrder(10)
    with pytest.raises(ValueError, match="batch_size"):
        GlobalBatchSampler(order, batch_size=0)
    with pytest.raises(ValueError, match="remainder"):
        GlobalBatchSampler(order, batch_size=2, remainder="keep")
    with pytest.raises(ValueError, match="rank"):
        GlobalBatchSampler(order, batch_size=2, rank=2, world_size=2)
    with pytest.raises(ValueError, match="both"):
        GlobalBatchSampler(order, batch_size=2, rank=None, world_size=2)
    with pytest.raises(TypeError, match="order"):
        GlobalBatchSampler(list(range(10)), batch_size=2)
    s = GlobalBatchSampler(order, batch_size=2, rank=None, world_size=None)
    assert (s.rank, s.world_size) == (0, 1)
    s2 = pickle.loads(pickle.dumps(s))
    assert list(s2) == list(s)


# -- mixtures ------------------------------------------------------------------------------------


def test_apportion_examples():
    assert apportion(10, [1, 1, 1]).tolist() == [4, 3, 3]
    assert apportion(10, [0.5, 0.3, 0.2]).tolist() == [5, 3, 2]
    assert apportion(7, [1, 2]).tolist() == [2, 5]
    assert apportion(0, [1, 2]).tolist() == [0, 0]


@FAST
@given(total=st.integers(0, 10_000), weights=st.lists(st.floats(1e-3, 1e3), min_size=1, max_size=8))
def test_apportion_is_largest_remainder(total, weights):
    counts = apportion(total, weights)
    assert counts.sum() == total
    quotas = np.asarray(weights) / np.sum(weights) * total
    assert np.all(np.abs(counts - quotas) < 1 + 1e-9)
    up = counts > np.floor(quotas + 1e-9)  # got the extra one
    rem = quotas - np.floor(quotas)
    if up.any() and (~up).any():
        assert rem[up].min() >= rem[~up].max() - 1e-9


def make_mixture(seed=0, samples_per_epoch=None, lengths=(3, 5, 11), weights=(1.0, 2.0, 3.0)):
    sources = [WindowOrder(n, shuffle="global", seed=100 + i) for i, n in enumerate(lengths)]
    return MixtureOrder(sources, weights, seed=seed, samples_per_epoch=samples_per_epoch)


def test_mixture_counts_determinism_and_epochs():
    m = make_mixture(seed=4, samples_per_epoch=40)
    assert len(m) == 40 and m.counts.tolist() == apportion(40, [1, 2, 3]).tolist() == [7, 13, 20]
    assert m.offsets.tolist() == [0, 3, 8, 19] and m.num_windows == 19
    np.testing.assert_allclose(m.weights, [1 / 6, 2 / 6, 3 / 6])
    m2 = make_mixture(seed=4, samples_per_epoch=40)
    orders = []
    for e in range(5):
        o = m.order(e)
        assert o.dtype == np.int64 and o.shape == (40,) and not o.flags.writeable
        np.testing.assert_array_equal(o, m2.order(e))
        src, _ = m.locate(o)
        assert np.bincount(src, minlength=3).tolist() == [7, 13, 20]
        orders.append(tuple(o.tolist()))
    assert len(set(orders)) == 5
    assert make_mixture(seed=5, samples_per_epoch=40).order(0).tolist() != list(orders[0])
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(m)).order(3), m.order(3))
    assert make_mixture().samples_per_epoch == 19  # default: the sum of source lengths


@pytest.mark.parametrize("samples_per_epoch", [None, 7, 40, 101])
def test_mixture_streams_use_windows_equally(samples_per_epoch):
    m = make_mixture(seed=1, samples_per_epoch=samples_per_epoch)
    epochs = 9
    draws = [[] for _ in m.sources]
    for e in range(epochs):
        src, win = m.locate(m.order(e))
        for i in range(len(m.sources)):
            draws[i].extend(win[src == i].tolist())  # in epoch order == stream order
    for i, source in enumerate(m.sources):
        n = len(source)
        total = epochs * int(m.counts[i])
        passes = -(-total // n) if total else 0
        stream = np.concatenate([source.order(p) for p in range(passes)] or [np.empty(0, np.int64)])[:total]
        assert draws[i] == stream.tolist()
        use = Counter(draws[i])
        counts = [use.get(w, 0) for w in range(n)]
        assert max(counts) - min(counts) <= 1
        if total % n == 0:
            assert len(set(counts)) == 1


def test_mixture_locate_round_trip_matches_concat_dataset():
    m = make_mixture(samples_per_epoch=30)
    concat = ConcatDataset([[(i, w) for w in range(n)] for i, n in enumerate(m.lengths.tolist())])
    ids = np.arange(m.num_windows)
    src, win = m.locate(ids)
    np.testing.assert_array_equal(m.offsets[src] + win, ids)
    assert list(zip(src.tolist(), win.tolist())) == [concat[i] for i in ids]
    for bad in ([-1], [m.num_windows]):
        with pytest.raises(IndexError):
            m.locate(bad)


def test_mixture_validation():
    w = WindowOrder(4)
    with pytest.raises(ValueError, match="at least one source"):
        MixtureOrder([], [])
    with pytest.raises(ValueError, match="one weight per source"):
        MixtureOrder([w, w], [1.0])
    with pytest.raises(ValueError, match="weight 1 must be positive"):
        MixtureOrder([w, w], [1.0, 0.0])
    with pytest.raises(ValueError, match="weight 0 must be positive"):
        MixtureOrder([w, w], [-1.0, 1.0])
    with pytest.raises(ValueError, match="positive and finite"):
        MixtureOrder([w], [float("nan")])
    with pytest.raises(TypeError, match="weight 0"):
        MixtureOrder([w], ["1"])
    with pytest.raises(ValueError, match="source 1 is empty"):
        MixtureOrder([w, WindowOrder(0)], [1, 1])
    with pytest.raises(ValueError, match="samples_per_epoch"):
        MixtureOrder([w], [1], samples_per_epoch=0)


@pytest.mark.parametrize("world_size,remainder", [(1, "drop"), (2, "partial"), (4, "pad")])
def test_mixture_with_global_batch_sampler(world_size, remainder):
    m = make_mixture(seed=2, samples_per_epoch=50)
    for epoch in (0, 3):
        served = served_global(all_ranks(m, batch_size=3, world_size=world_size, remainder=remainder, epoch=epoch))
        o, g = m.order(epoch), 3 * world_size
        if remainder == "drop":
            np.testing.assert_array_equal(served, o[: (50 // g) * g])
        elif remainder == "pad":
            np.testing.assert_array_equal(served, o[np.arange(-(-50 // g) * g) % 50])
        else:
            np.testing.assert_array_equal(served, o)
        assert served.max() < m.num_windows


# -- resolve_rank_world / IndexBatch -------------------------------------------------------------


def test_resolve_rank_world():
    assert resolve_rank_world(3, 4) == (3, 4)
    assert resolve_rank_world(0, 1) == (0, 1)
    assert not torch.distributed.is_available() or not torch.distributed.is_initialized()
    assert resolve_rank_world() == (0, 1)
    with pytest.raises(ValueError, match="both"):
        resolve_rank_world(1)
    with pytest.raises(ValueError, match="both"):
        resolve_rank_world(world_size=2)
    with pytest.raises(ValueError, match="rank must be in"):
        resolve_rank_world(4, 4)
    with pytest.raises(ValueError, match="rank must be >= 0"):
        resolve_rank_world(-1, 4)
    with pytest.raises(ValueError, match="world_size must be >= 1"):
        resolve_rank_world(0, 0)
    with pytest.raises(TypeError):
        resolve_rank_world(0.0, 2)


def test_index_batch_pickles_with_attributes():
    b = IndexBatch([5, 1, 7], epoch=3, step=11, first=44)
    for proto in range(2, pickle.HIGHEST_PROTOCOL + 1):
        c = pickle.loads(pickle.dumps(b, protocol=proto))
        assert type(c) is IndexBatch and c == [5, 1, 7]
        assert (c.epoch, c.step, c.first) == (3, 11, 44)
    assert "step=11" in repr(b)
    assert IndexBatch() == [] and IndexBatch().step == 0

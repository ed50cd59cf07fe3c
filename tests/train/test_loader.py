"""The training loader: exactly-once across ranks and workers, determinism, exact elastic resume,
document outputs against brute force, window options, mixtures, torch.distributed and a real LM."""

from __future__ import annotations

import itertools
import socket

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import zarrtok
from zarrtok.train.loader import TokenLoader

L = 32  # seq_len for most tests: ~2,000 windows in the small store


@pytest.fixture(scope="module")
def store(small_chunk_store):
    return small_chunk_store


@pytest.fixture(scope="module")
def tokens(store) -> np.ndarray:
    return np.asarray(store.tokens("train")).astype(np.int64)


def run_ranks(make, world_size: int, *, max_steps: int | None = None) -> list[np.ndarray]:
    """Iterate the loaders of all ranks in lockstep; returns the global batches (rank order) as index arrays."""
    loaders = [make(rank) for rank in range(world_size)]
    iterators = [iter(loader) for loader in loaders]
    out = []
    for _ in itertools.count() if max_steps is None else range(max_steps):
        batches = [next(it, None) for it in iterators]
        if any(b is None for b in batches):
            assert all(b is None for b in batches), "ranks yielded different numbers of batches"
            break
        out.append(np.concatenate([b["index"].numpy() for b in batches]))
    return out, loaders


# -- 1. exactly once per epoch, ranks x workers --------------------------------------------------------
@pytest.mark.parametrize("world_size,num_workers", list(itertools.product([1, 2, 4], [0, 1, 2])))
def test_every_window_exactly_once_across_ranks_and_workers(store, tokens, world_size, num_workers):
    B = 8
    ds = store.dataset("train", L)
    n = len(ds)

    def make(rank):
        return store.dataloader("train", L, B, seed=5, rank=rank, world_size=world_size, num_workers=num_workers,
                                return_index=True, multiprocessing_context="fork" if num_workers else None)

    batches, loaders = run_ranks(make, world_size)
    served = np.concatenate(batches)
    G = B * world_size
    assert len(batches) == n // G and all(b.size == G for b in batches)  # "drop": full global batches only
    assert np.unique(served).size == served.size == (n // G) * G  # never twice
    assert set(range(n)) - set(served.tolist()) == set(np.asarray(loaders[0].order.order(0))[served.size:].tolist())
    assert served.tolist() != sorted(served.tolist())  # shuffled
    # the content is the window's tokens (ground truth from the raw stream)
    for rank, loader in enumerate(loaders[:1]):
        batch = next(iter(store.dataloader("train", L, B, seed=5, rank=rank, world_size=world_size,
                                           return_index=True)))
        for row, i in enumerate(batch["index"].tolist()):
            np.testing.assert_array_equal(batch["input_ids"][row].numpy(), tokens[i * L : i * L + L])
            np.testing.assert_array_equal(batch["labels"][row].numpy(), tokens[i * L + 1 : i * L + L + 1])
    assert all(loader.consumed == (n // G) * G for loader in loaders)


@pytest.mark.parametrize("remainder", ["pad", "partial"])
def test_remainder_policies(store, remainder):
    B, W = 7, 3
    n = len(store.dataset("train", L))
    assert n % (B * W), "the test needs a remainder"

    def make(rank):
        return store.dataloader("train", L, B, rank=rank, world_size=W, remainder=remainder, return_index=True)

    per_rank = [[b["index"].numpy() for b in make(r)] for r in range(W)]
    served = np.concatenate([np.concatenate(p) for p in per_rank])
    if remainder == "pad":  # every rank full batches; every window at least once; repeats only from the wrap
        assert all(len(p) == len(per_rank[0]) and all(b.size == B for b in p) for p in per_rank)
        assert set(served.tolist()) == set(range(n))
        assert served.size - n == (-n) % (B * W)
    else:  # every window exactly once, the last global batch split over the ranks
        assert sorted(served.tolist()) == list(range(n))


def test_determinism_and_new_order_per_epoch(store):
    def epoch_indices(seed, epoch):
        loader = store.dataloader("train", L, 16, seed=seed, return_index=True)
        loader.set_epoch(epoch)
        return np.concatenate([b["index"].numpy() for b in loader])

    a = epoch_indices(1, 0)
    assert np.array_equal(a, epoch_indices(1, 0))
    assert not np.array_equal(a, epoch_indices(1, 1))
    assert not np.array_equal(a, epoch_indices(2, 0))
    # iterating again moves on to the next epoch by itself
    loader = store.dataloader("train", L, 16, seed=1, return_index=True)
    first = np.concatenate([b["index"].numpy() for b in loader])
    second = np.concatenate([b["index"].numpy() for b in loader])
    assert np.array_equal(first, a) and np.array_equal(second, epoch_indices(1, 1)) and loader.epoch == 1


@pytest.mark.parametrize("shuffle", ["chunk", False])
def test_chunk_local_and_sequential_orders(store, shuffle):
    ds = store.dataset("train", L)
    loader = store.dataloader("train", L, 16, shuffle=shuffle, return_index=True)
    served = np.concatenate([b["index"].numpy() for b in loader])
    if shuffle is False:
        assert served.tolist() == list(range(served.size))
    else:  # windows of one chunk come close together
        chunks = ds.tokens.chunk_of(served * L)
        for c in np.unique(chunks)[:20]:
            pos = np.flatnonzero(chunks == c)
            assert pos.max() - pos.min() < 4 * 777 // L * 2 + 16


# -- 2. exact, elastic resume ------------------------------------------------------------------------------
def uninterrupted(store, G, epochs=1, **kw):
    loader = store.dataloader("train", L, G, return_index=True, seed=11, **kw)
    out = []
    for _ in range(epochs):
        out += [b["index"].numpy() for b in loader]
    return out


@pytest.mark.parametrize("before,after", [((1, 0), (1, 2)), ((2, 1), (4, 0)), ((4, 2), (1, 1)), ((2, 0), (2, 2))])
def test_resume_continues_exactly_with_other_ranks_and_workers(store, before, after):
    G = 16
    full = uninterrupted(store, G)
    k = 23
    (w0, nw0), (w1, nw1) = before, after

    def make(world, workers, state=None):
        def one(rank):
            loader = store.dataloader("train", L, G // world, seed=11, rank=rank, world_size=world,
                                      num_workers=workers, return_index=True,
                                      multiprocessing_context="fork" if workers else None)
            if state is not None:
                loader.load_state_dict(state)
            return loader
        return one

    head, loaders = run_ranks(make(w0, nw0), w0, max_steps=k)
    states = [ld.state_dict() for ld in loaders]
    assert all(s == states[0] for s in states) and states[0]["consumed"] == k * G
    tail, _ = run_ranks(make(w1, nw1, states[0]), w1)
    got = head + tail
    assert len(got) == len(full)
    for a, b in zip(got, full):
        np.testing.assert_array_equal(a, b)


def test_consumed_counts_what_the_loop_received_not_what_workers_prefetched(store):
    loader = store.dataloader("train", L, 8, num_workers=2, prefetch_factor=4, multiprocessing_context="fork",
                              return_index=True)
    it = iter(loader)
    for _ in range(3):
        next(it)
    assert loader.state_dict()["consumed"] == 3 * 8
    del it


def test_resume_across_epoch_boundary_and_state_validation(store):
    full = uninterrupted(store, 16, epochs=2)
    loader = store.dataloader("train", L, 16, seed=11, return_index=True)
    first = [b["index"].numpy() for b in loader]  # the whole epoch 0
    state = loader.state_dict()
    resumed = store.dataloader("train", L, 16, seed=11, return_index=True)
    resumed.load_state_dict(state)
    second = [b["index"].numpy() for b in resumed]  # epoch 1 (epoch 0 is complete)
    assert resumed.epoch == 1
    for a, b in zip(first + second, full):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="seed"):
        store.dataloader("train", L, 16, seed=12).load_state_dict(state)
    with pytest.raises(ValueError, match="windows per epoch"):
        store.dataloader("train", L + 1, 16, seed=11).load_state_dict(state)


# -- 3. torch.distributed (gloo) ----------------------------------------------------------------------------
def _distributed_worker(rank, world_size, port, store_path, results):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        store = zarrtok.open(store_path)
        loader = store.dataloader("train", L, 8, seed=3, return_index=True)  # rank/world from torch.distributed
        mine = [int(i) for b in loader for i in b["index"]]
        gathered = [None] * world_size
        dist.all_gather_object(gathered, mine)
        if rank == 0:
            results.put((loader.rank, loader.world_size, gathered))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_gloo_ranks_are_disjoint_and_cover_the_epoch(store):
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_distributed_worker, args=(r, 2, port, store.url, results)) for r in range(2)]
    for p in procs:
        p.start()
    try:
        rank, world, gathered = results.get(timeout=240)
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    assert (rank, world) == (0, 2)
    a, b = map(set, gathered)
    n = len(store.dataset("train", L))
    assert not a & b
    assert len(a) == len(b) == (n // 16) * 8
    assert len(a | b) == (n // 16) * 16
    assert all(p.exitcode == 0 for p in procs)


# -- 4. document outputs vs brute force --------------------------------------------------------------------
def brute_force_documents(offsets, tokens, starts, seq_len):
    """position_ids / label crossing mask / cu_seqlens by walking each window token by token."""
    doc_of = np.empty(int(offsets[-1]), dtype=np.int64)
    for d in range(len(offsets) - 1):
        doc_of[offsets[d] : offsets[d + 1]] = d
    pos_ids, keep, cu = [], [], [0]
    for row, s in enumerate(starts):
        p, k = [], []
        for j in range(seq_len):
            if j > 0 and doc_of[s + j] != doc_of[s + j - 1]:
                cu.append(row * seq_len + j)
            p.append(0 if j == 0 or doc_of[s + j] != doc_of[s + j - 1] else p[-1] + 1)
            k.append(doc_of[s + j] == doc_of[s + j + 1])
        pos_ids.append(p)
        keep.append(k)
        cu.append((row + 1) * seq_len)
    return np.asarray(pos_ids), np.asarray(keep), np.asarray(cu[:-1] + [len(starts) * seq_len])


@settings(max_examples=25, deadline=None)
@given(seq_len=st.integers(2, 300), data=st.data())
def test_document_outputs_match_brute_force(store, tokens, seq_len, data):
    ds = store.dataset("train", seq_len, document_outputs=True, mask_document_boundaries=True)
    idx = data.draw(st.lists(st.integers(0, len(ds) - 1), min_size=1, max_size=6))
    batch = zarrtok.collate_dict(ds.__getitems__(idx))
    offsets = store.documents("train")
    starts = [i * seq_len for i in idx]
    pos_ids, keep, cu = brute_force_documents(offsets, tokens, starts, seq_len)
    np.testing.assert_array_equal(batch["position_ids"].numpy(), pos_ids)
    np.testing.assert_array_equal(batch["cu_seqlens"].numpy(), cu.astype(np.int32))
    assert batch["max_seqlen"] == int(np.diff(cu).max())
    want_labels = np.stack([tokens[s + 1 : s + seq_len + 1] for s in starts])
    np.testing.assert_array_equal(batch["labels"].numpy(), np.where(keep, want_labels, -100))
    np.testing.assert_array_equal(batch["input_ids"].numpy(), np.stack([tokens[s : s + seq_len] for s in starts]))
    item = ds[idx[0]]
    assert set(item) == {"input_ids", "labels", "position_ids"}
    np.testing.assert_array_equal(item["position_ids"].numpy(), pos_ids[0])


def test_document_boundary_label_is_the_eos_to_next_document_transition(store, tokens):
    """With EOS between documents, the masked labels are exactly those whose input is an EOS."""
    ds = store.dataset("train", 64, mask_document_boundaries=True)
    inputs, labels = ds[3]
    masked = labels.numpy() == -100
    eos = store.eos_token_id
    assert masked.any()
    np.testing.assert_array_equal(masked, inputs.numpy() == eos)


# -- 5. window options -----------------------------------------------------------------------------------------
def test_window_options_against_the_raw_stream(store, tokens):
    N = tokens.size
    ds = store.dataset("train", 100, stride=60, mask_overlap=True, drop_last=False, pad_id=7)
    scored = np.zeros(N, dtype=np.int64)
    for i in range(len(ds)):
        b = zarrtok.collate_dict(ds.__getitems__([i]))
        x, y, m = b["input_ids"][0].numpy(), b["labels"][0].numpy(), b["attention_mask"][0].numpy()
        s = i * 60
        real = min(100, N - s)
        np.testing.assert_array_equal(x[:real], tokens[s : s + real])
        assert (x[real:] == 7).all() and (m[:real] == 1).all() and (m[real:] == 0).all()
        for j in range(100):
            if y[j] != -100:
                assert y[j] == tokens[s + j + 1]
                scored[s + j + 1] += 1
    assert (scored[1:] == 1).all() and scored[0] == 0  # every label position scored exactly once
    with pytest.raises(ValueError, match="BOS"):
        store.dataset("train", 100, bos=True)  # the test tokenizer defines no BOS token
    bos = store.dataset("train", 100, bos=5)
    x, y = bos[2]
    np.testing.assert_array_equal(x.numpy(), np.concatenate([[5], tokens[200:299]]))
    np.testing.assert_array_equal(y.numpy(), tokens[200:300])


# -- 6. mixtures --------------------------------------------------------------------------------------------------
def test_mixture_weights_determinism_resume_and_ranks(store, tokens, tmp_path):
    web = store.dataset("train", L)
    code = zarrtok.open(store.url).dataset("train", L, stride=L // 2)  # a second source with other windows
    mix = zarrtok.MixtureDataset([web, code], [0.7, 0.3], seed=4, samples_per_epoch=1000)
    loader = TokenLoader(mix, batch_size=10, seed=4, return_index=True)
    ids = np.concatenate([b["index"].numpy() for b in loader])
    assert ids.size == 1000
    source, window = mix.locate(ids)
    assert (source == 0).sum() == 700 and (source == 1).sum() == 300
    again = np.concatenate([b["index"].numpy() for b in TokenLoader(mix, batch_size=10, seed=4, return_index=True)])
    assert np.array_equal(ids, again)
    nxt = np.concatenate([b["index"].numpy() for b in loader])  # epoch 1
    assert not np.array_equal(ids, nxt)
    # the content of a mixed batch is each source's window
    batch = next(iter(TokenLoader(mix, batch_size=10, seed=4, return_index=True)))
    for row, gid in enumerate(batch["index"].tolist()):
        s, w = (int(v[0]) for v in mix.locate([gid]))
        x, y = (web if s == 0 else code)[w]
        np.testing.assert_array_equal(batch["input_ids"][row].numpy(), x.numpy())
    # resume mid-epoch with 2 ranks, exactly the rest
    head_loader = TokenLoader(mix, batch_size=10, seed=4, return_index=True)
    it = iter(head_loader)
    head = [next(it)["index"].numpy() for _ in range(37)]
    state = head_loader.state_dict()
    tails = []
    for rank in range(2):
        resumed = TokenLoader(mix, batch_size=5, seed=4, rank=rank, world_size=2, return_index=True)
        resumed.load_state_dict(state)
        tails.append([b["index"].numpy() for b in resumed])
    tail = [np.concatenate(pair) for pair in zip(*tails)]
    np.testing.assert_array_equal(np.concatenate(head + tail), ids)


# -- 7. a real causal LM trains on zarrtok batches --------------------------------------------------------------
def test_tiny_gpt2_loss_decreases_and_label_formats_agree(store):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    vocab = int(np.asarray(store.tokens("train")).max()) + 1
    model = GPT2LMHeadModel(GPT2Config(vocab_size=max(vocab, 1024), n_positions=64, n_embd=64, n_layer=2, n_head=2))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    loader = store.dataloader("train", 64, 16, seed=0, label_format="hf", mask_document_boundaries=True)
    losses = []
    for step, batch in enumerate(loader):
        out = model(**batch)  # input_ids + labels: transformers shifts them itself
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(out.loss.item())
        if step == 39:
            break
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses
    # the same windows in the "shifted" format give the same loss computed by hand (last target excluded)
    hf = next(iter(store.dataloader("train", 64, 4, seed=9, label_format="hf")))
    plain = next(iter(store.dataloader("train", 64, 4, seed=9)))
    assert torch.equal(hf["input_ids"], plain["input_ids"])
    model.eval()  # no dropout: two forward passes must agree
    with torch.no_grad():
        logits = model(input_ids=plain["input_ids"]).logits
        by_hand = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)),
                                                    plain["labels"][:, :-1].reshape(-1))
        assert torch.allclose(model(**hf).loss, by_hand, atol=1e-5)

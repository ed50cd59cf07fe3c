"""Issue 12, points 1-2: dict items are never ambiguous (HF-aligned ``labels`` by default, shifted ones
only as ``next_token_labels``), and inputs / labels never share memory and are contiguous."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

import zarrtok
from zarrtok.train.dataset import SHIFTED_LABELS_KEY, TokenDataset, collate_windows
from zarrtok.train.loader import TokenLoader, collate_dict
from zarrtok.train.mixture import MixtureDataset


@pytest.fixture(scope="module")
def store(small_chunk_store):
    return zarrtok.open(small_chunk_store.url)


@pytest.fixture(scope="module")
def tokens(store) -> np.ndarray:
    return np.asarray(store.tokens("train")).astype(np.int64)


# -- 1. label formats ----------------------------------------------------------------------------------------
def test_dict_items_default_to_hf_aligned_labels(store, tokens):
    L = 50
    ds = TokenDataset(store.tokens("train"), L, as_dict=True)
    assert ds.label_format == "hf"
    for i in (0, 7, len(ds) - 1):
        for item in (ds[i], ds.__getitems__([i])[0]):
            assert set(item) == {"input_ids", "labels"}
            np.testing.assert_array_equal(item["input_ids"].numpy(), tokens[i * L : i * L + L])
            # transformers scores logits[j] against labels[j + 1]: labels are input positions, the first ignored
            np.testing.assert_array_equal(item["labels"][1:].numpy(), tokens[i * L + 1 : i * L + L])
            assert item["labels"][0] == -100


def test_shifted_dict_items_use_a_key_no_model_mistakes_for_labels(store, tokens):
    L = 50
    ds = TokenDataset(store.tokens("train"), L, as_dict=True, label_format="shifted")
    for item in (ds[3], ds.__getitems__([3])[0]):
        assert set(item) == {"input_ids", SHIFTED_LABELS_KEY} and SHIFTED_LABELS_KEY == "next_token_labels"
        np.testing.assert_array_equal(item[SHIFTED_LABELS_KEY].numpy(), tokens[3 * L + 1 : 3 * L + L + 1])
    # the loader still turns them into either format
    batch = collate_dict(ds.__getitems__([3, 4]), label_format="hf")
    np.testing.assert_array_equal(batch["labels"][:, 1:].numpy(), batch["input_ids"][:, 1:].numpy())
    batch = collate_dict(list(ds.__getitems__([3, 4])))  # plain list of dicts: key recognised
    np.testing.assert_array_equal(batch["labels"][0].numpy(), tokens[3 * L + 1 : 3 * L + L + 1])


def test_tuples_stay_shifted_unless_asked(store, tokens):
    ds = TokenDataset(store.tokens("train"), 40)
    assert ds.label_format == "shifted"
    x, y = ds[2]
    np.testing.assert_array_equal(y.numpy(), tokens[81:121])
    x, y = TokenDataset(store.tokens("train"), 40, label_format="hf")[2]
    assert y[0] == -100 and torch.equal(y[1:], x[1:])
    with pytest.raises(ValueError, match="label_format"):
        TokenDataset(store.tokens("train"), 40, label_format="next")


def test_document_items_carry_masks_into_the_hf_alignment(store):
    ds = TokenDataset(store.tokens("train"), 64, doc_offsets=store.documents("train"), document_outputs=True,
                      mask_document_boundaries=True)
    batch = ds.__getitems__(list(range(10)))
    shifted = batch.labels  # batch-level labels are always the shifted ones
    for row, item in enumerate(batch):
        assert set(item) == {"input_ids", "labels", "position_ids"}
        np.testing.assert_array_equal(item["labels"][1:].numpy(), shifted[row, :-1].numpy())
    assert (shifted == -100).any()  # there are masked boundaries to carry


def test_mixture_needs_one_label_format(store):
    a = TokenDataset(store.tokens("train"), 32, as_dict=True)
    b = TokenDataset(store.tokens("train"), 32, as_dict=True, label_format="shifted")
    with pytest.raises(ValueError, match="label_format"):
        MixtureDataset([a, b], [1, 1])
    mix = MixtureDataset([a, a], [1, 1])
    item = mix.__getitems__([0, len(a) + 1])[1]
    assert item["labels"][0] == -100 and torch.equal(item["labels"][1:], item["input_ids"][1:])


def test_tiny_gpt2_loss_on_dict_items_is_the_true_next_token_cross_entropy(store, tokenizer, tokens):
    """``model(**item_batch).loss`` (transformers shifts internally) equals cross-entropy against the token that
    really follows each input position; the old, pre-shifted ``labels`` would have scored token t + 2."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    V = len(tokenizer)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=V, n_positions=64, n_embd=32, n_layer=1, n_head=2)).eval()
    L, idx = 48, [0, 11, 23, 40]
    ds = TokenDataset(store.tokens("train"), L, as_dict=True)
    batch = default_collate(list(ds.__getitems__(idx)))
    with torch.no_grad():
        loss = model(**batch).loss
        logits = model(input_ids=batch["input_ids"]).logits
    nxt = torch.from_numpy(np.stack([tokens[i * L + 1 : i * L + L + 1] for i in idx]))  # the true next tokens
    want = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, V), nxt[:, :-1].reshape(-1))
    assert torch.allclose(loss, want, atol=1e-6)
    wrong = torch.nn.functional.cross_entropy(logits[:, :-2].reshape(-1, V), nxt[:, 1:-1].reshape(-1))
    assert not torch.allclose(loss, wrong, atol=1e-3)


# -- 2. no aliasing ------------------------------------------------------------------------------------------
def _check_independent(x: torch.Tensor, y: torch.Tensor) -> None:
    assert x.is_contiguous() and y.is_contiguous()
    assert not np.shares_memory(x.numpy(), y.numpy())
    y.view(-1)  # the nanoGPT-style loss
    before = x.clone()
    y.reshape(-1)[:3] = -100
    assert torch.equal(x, before)


def _datasets(store):
    t = store.tokens("train")
    offsets = store.documents("train")
    yield TokenDataset(t, 64)
    yield TokenDataset(t, 64, as_dict=True)
    yield TokenDataset(t, 64, as_dict=True, label_format="shifted")
    yield TokenDataset(t, 64, stride=40, bos_id=1, drop_last=False, mask_overlap=True)
    yield TokenDataset(t, 64, doc_offsets=offsets, document_outputs=True, mask_document_boundaries=True)


def _pair(item):
    if isinstance(item, dict):
        return item["input_ids"], item.get("labels", item.get(SHIFTED_LABELS_KEY))
    return item


def test_items_and_batches_never_alias(store):
    for ds in _datasets(store):
        _check_independent(*_pair(ds[5]))
        batch = ds.__getitems__([1, 5, 9])
        _check_independent(*_pair(batch[1]))
        _check_independent(*collate_windows(ds.__getitems__([1, 5, 9])))
        for fmt in ("shifted", "hf"):
            b = collate_dict(ds.__getitems__([1, 5, 9]), label_format=fmt)
            _check_independent(b["input_ids"], b["labels"])
        b = default_collate(list(ds.__getitems__([2, 3])))
        _check_independent(*_pair(b))


def test_loader_batches_never_alias(store):
    ds = TokenDataset(store.tokens("train"), 64)
    mix = MixtureDataset([ds, TokenDataset(store.tokens("train"), 64)], [1, 2])
    for data in (ds, mix):
        for fmt in ("shifted", "hf"):
            batch = next(iter(TokenLoader(data, batch_size=4, label_format=fmt)))
            _check_independent(batch["input_ids"], batch["labels"])
            batch["labels"][:, 0] = -100  # the example
            assert (batch["input_ids"][:, 0] != -100).all()

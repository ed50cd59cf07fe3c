"""The tiktoken fast path: identical ids to the Hugging Face tokenizer on adversarial text, refused for
tokenizer shapes it cannot reproduce, verified on the corpus before a build uses it, recorded in the store."""

from __future__ import annotations

import json

import datasets
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import zarrtok
from zarrtok.ingest import fast_encoding
from zarrtok.ingest.fast_encoding import TiktokenDocumentEncoder, tiktoken_compatibility
from zarrtok.ingest.tokenization import DocumentEncoder, backend_json

from ..conftest import ADVERSARIAL_DOCS, expected_tokens


@pytest.fixture(scope="module")
def fast(tokenizer):
    return TiktokenDocumentEncoder(backend_json(tokenizer), eos_token_id=tokenizer.eos_token_id,
                                   add_special_tokens=True, dtype="uint16")


def test_the_test_tokenizer_is_eligible(tokenizer):
    spec, reason = tiktoken_compatibility(backend_json(tokenizer), add_special_tokens=True)
    assert spec is not None, reason
    assert len(spec["ranks"]) + len(spec["special"]) == len(tokenizer)


def test_identical_ids_on_adversarial_and_generated_documents(fast, tokenizer, docs):
    texts = [d for d in docs + ADVERSARIAL_DOCS + fast_encoding.PROBES if d]
    for text, ids in zip(texts, fast.encode_ids(texts)):
        assert ids == tokenizer(text)["input_ids"], text[:80]
    special = f"before{tokenizer.eos_token}after {tokenizer.eos_token} {tokenizer.eos_token}{tokenizer.eos_token}"
    assert fast.encode_ids([special])[0] == tokenizer(special)["input_ids"]
    assert tokenizer.eos_token_id in fast.encode_ids([special])[0]


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_threaded_batches_give_the_tokenizers_ids(fast, tokenizer, docs, monkeypatch, threads):
    """A num_workers=1 build encodes on every core (encode_batch in threads); a worker on one."""
    monkeypatch.setattr(fast_encoding, "_encode_threads", lambda: threads)
    texts = [d for d in docs + ADVERSARIAL_DOCS + fast_encoding.PROBES if d]
    assert fast.encode_ids(texts) == [tokenizer(t)["input_ids"] for t in texts]


def test_one_thread_inside_a_worker_process():
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        assert pool.apply(fast_encoding._encode_threads) == 1
    assert fast_encoding._encode_threads() >= 1


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=60))
def test_identical_ids_on_arbitrary_unicode(fast, tokenizer, text):
    if text:
        assert fast.encode_ids([text])[0] == tokenizer(text)["input_ids"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([" ", "  ", "\n", "\t", "\r\n", "\u00a0", "\u3000", "'s", "'ll", "a", "Zz", "9",
                                 "東", "🙂", "e\u0301", "<|endoftext|>", "!", "..."]), max_size=30))
def test_identical_ids_on_whitespace_and_contraction_soup(fast, tokenizer, parts):
    text = "".join(parts)
    if text:
        assert fast.encode_ids([text])[0] == tokenizer(text)["input_ids"]


def test_encode_matches_document_encoder_output(fast, tokenizer, docs):
    hf = DocumentEncoder(backend_json(tokenizer), eos_token_id=tokenizer.eos_token_id, add_special_tokens=True,
                         dtype="uint16")
    a_tokens, a_lengths = fast.encode(docs)
    b_tokens, b_lengths = hf.encode(docs)
    np.testing.assert_array_equal(a_tokens, b_tokens)
    np.testing.assert_array_equal(a_lengths, b_lengths)
    assert a_tokens.dtype == np.uint16


def _modified(tokenizer, change) -> str:
    spec = json.loads(backend_json(tokenizer))
    change(spec)
    return json.dumps(spec)


@pytest.mark.parametrize("change,reason", [
    (lambda s: s.update(normalizer={"type": "Lowercase"}), "normalizer"),
    (lambda s: s["pre_tokenizer"].update(add_prefix_space=True), "prefix space"),
    (lambda s: s.update(pre_tokenizer={"type": "Whitespace"}), "not byte-level"),
    (lambda s: s.update(post_processor={"type": "TemplateProcessing", "single": [], "pair": [],
                                        "special_tokens": {}}), "post-processor"),
    (lambda s: s["model"].update(dropout=0.1), "dropout"),
    (lambda s: s["added_tokens"][0].update(lstrip=True), "lstrip"),
    (lambda s: s["model"]["merges"].reverse(), "merge priorities"),
    (lambda s: s["model"]["vocab"].pop(next(k for k, v in s["model"]["vocab"].items() if v == 5)), "single bytes"),
])
def test_shapes_it_cannot_reproduce_are_refused(tokenizer, change, reason):
    spec, why = tiktoken_compatibility(_modified(tokenizer, change), add_special_tokens=True)
    assert spec is None and reason in why, why


def test_build_uses_the_fast_path_and_records_it(tmp_path, tokenizer, docs, truth):
    ds = datasets.Dataset.from_dict({"text": docs})
    store = zarrtok.build(ds, tokenizer=tokenizer, output=tmp_path / "fast", progress=False, validation_split=0.0,
                          encoder="tiktoken")  # (auto prefers gigatoken: tests/ingest/test_gigatoken.py)
    assert store.manifest.encoder.startswith("tiktoken=="), store.manifest.encoder
    np.testing.assert_array_equal(np.asarray(store.tokens("train")).astype(np.int64), truth)
    hf = zarrtok.build(ds, tokenizer=tokenizer, output=tmp_path / "hf", progress=False, validation_split=0.0,
                       encoder="hf")
    assert hf.manifest.encoder.startswith("hf-tokenizers==")
    assert hf.fingerprint == store.fingerprint  # the same tokens: the encoder is not part of the fingerprint
    np.testing.assert_array_equal(np.asarray(hf.tokens("train")), np.asarray(store.tokens("train")))


def test_build_with_workers_uses_the_fast_path(tmp_path, tokenizer, docs, truth):
    ds = datasets.Dataset.from_dict({"text": docs})
    store = zarrtok.build(ds, tokenizer=tokenizer, output=tmp_path / "s", progress=False, validation_split=0.0,
                          num_workers=2, batch_size=40, chunk_size=997, encoder="tiktoken")
    assert store.manifest.encoder.startswith("tiktoken==")
    np.testing.assert_array_equal(np.asarray(store.tokens("train")).astype(np.int64), truth)


def test_verification_failure_falls_back_or_raises(tmp_path, tokenizer, docs, monkeypatch, caplog):
    """A fast path that disagrees on the corpus is never used: auto falls back to HF (and says so);
    encoder='tiktoken' refuses with the difference."""
    original = TiktokenDocumentEncoder.encode_ids

    def wrong(self, texts):
        out = original(self, texts)
        return [ids[:-1] + [ids[-1] ^ 1] if "Zürich" in t else ids for t, ids in zip(texts, out)]

    monkeypatch.setattr(TiktokenDocumentEncoder, "encode_ids", wrong)
    monkeypatch.setattr(fast_encoding, "FAST_ENCODERS", ("tiktoken",))  # auto without gigatoken
    ds = datasets.Dataset.from_dict({"text": docs})
    with caplog.at_level("WARNING", logger="zarrtok.ingest.builder"):
        store = zarrtok.build(ds, tokenizer=tokenizer, output=tmp_path / "a", progress=False, validation_split=0.0)
    assert store.manifest.encoder.startswith("hf-tokenizers==")
    assert "differs" in caplog.text
    np.testing.assert_array_equal(np.asarray(store.tokens("train")).astype(np.int64), expected_tokens(tokenizer, docs))
    with pytest.raises(ValueError, match="encoder='tiktoken': the tiktoken fast path differs from the tokenizer"):
        zarrtok.build(ds, tokenizer=tokenizer, output=tmp_path / "b", progress=False, encoder="tiktoken")


def test_forced_fast_path_on_an_incompatible_tokenizer_is_an_error(tmp_path, docs):
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    backend = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.train_from_iterator(docs, trainers.WordLevelTrainer(special_tokens=["[UNK]", "</s>"]))
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", unk_token="[UNK]")
    ds = datasets.Dataset.from_dict({"text": docs[:50]})
    with pytest.raises(ValueError, match="not BPE"):
        zarrtok.build(ds, tokenizer=tok, output=tmp_path / "x", progress=False, encoder="tiktoken")
    store = zarrtok.build(ds, tokenizer=tok, output=tmp_path / "y", progress=False)  # auto: HF, silently correct
    assert store.manifest.encoder.startswith("hf-tokenizers==")
    with pytest.raises(ValueError, match="encoder must be one of"):
        zarrtok.build(ds, tokenizer=tok, output=tmp_path / "z", progress=False, encoder="fast")

"""The gigatoken fast path: identical ids to the Hugging Face tokenizer on adversarial and generated
text, the post-processor's ids added by zarrtok, refused for tokenizer shapes it cannot reproduce
(with the reason), verified on the corpus before a build uses it (a disagreeing gigatoken falls back
or raises), preferred by ``encoder="auto"``, builds with 1 and 2 workers equal to the ground truth."""

from __future__ import annotations

import json
import pickle
import sys

import datasets
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import zarrtok
from zarrtok.ingest import fast_encoding
from zarrtok.ingest.fast_encoding import PROBES, added_token_probes, verify
from zarrtok.ingest.gigatoken_encoding import GigatokenDocumentEncoder, gigatoken_compatibility
from zarrtok.ingest.tokenization import DocumentEncoder, backend_json

from ..conftest import ADVERSARIAL_DOCS, expected_tokens

pytest.importorskip("gigatoken")


def _encoder(tokenizer_json, cls=GigatokenDocumentEncoder, *, eos=0, add_special_tokens=True, dtype="uint16"):
    return cls(tokenizer_json, eos_token_id=eos, add_special_tokens=add_special_tokens, dtype=dtype)


@pytest.fixture(scope="module")
def tok_json(tokenizer):
    return backend_json(tokenizer)


@pytest.fixture(scope="module")
def gig(tokenizer, tok_json):
    return _encoder(tok_json, eos=tokenizer.eos_token_id)


@pytest.fixture(scope="module")
def hf(tokenizer, tok_json):
    return _encoder(tok_json, DocumentEncoder, eos=tokenizer.eos_token_id)


def _modified(tok_json: str, change) -> str:
    spec = json.loads(tok_json)
    change(spec)
    return json.dumps(spec)


def test_the_test_tokenizer_is_eligible(tok_json):
    spec, reason = gigatoken_compatibility(tok_json, add_special_tokens=True)
    assert spec == {"prefix": [], "suffix": []}, reason


def test_identical_ids_on_adversarial_and_generated_documents(gig, tokenizer, tok_json, docs):
    texts = [d for d in docs + ADVERSARIAL_DOCS + PROBES + added_token_probes(tok_json) if d]
    for text, ids in zip(texts, gig.encode_ids(texts)):
        assert ids == tokenizer(text)["input_ids"], text[:80]
    special = f"before{tokenizer.eos_token}after {tokenizer.eos_token} {tokenizer.eos_token}{tokenizer.eos_token}"
    assert gig.encode_ids([special])[0] == tokenizer(special)["input_ids"]
    assert tokenizer.eos_token_id in gig.encode_ids([special])[0]


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=60))
def test_identical_ids_on_arbitrary_unicode(gig, tokenizer, text):
    if text:
        assert gig.encode_ids([text])[0] == tokenizer(text)["input_ids"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([" ", "  ", "\n", "\t", "\r\n", "\u00a0", "\u3000", "'s", "'ll", "'S", "a", "Zz",
                                 "9", "123", "東", "🙂", "e\u0301", "<|endoftext|>", "!", "...", "\x00"]), max_size=30))
def test_identical_ids_on_whitespace_and_contraction_soup(gig, tokenizer, parts):
    text = "".join(parts)
    if text:
        assert gig.encode_ids([text])[0] == tokenizer(text)["input_ids"]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(st.just(""), st.text(alphabet=st.characters(codec="utf-8"), max_size=40)), max_size=12))
def test_encode_assembles_like_the_document_encoder(gig, hf, texts):
    """(tokens, lengths) with EOS after non-empty documents, nothing for empty ones: the vectorised
    assembly equals DocumentEncoder's per-document one on any batch."""
    a_tokens, a_lengths = gig.encode(texts)
    b_tokens, b_lengths = hf.encode(texts)
    np.testing.assert_array_equal(a_lengths, b_lengths)
    np.testing.assert_array_equal(a_tokens, b_tokens)
    assert a_tokens.dtype == b_tokens.dtype == np.uint16


@pytest.mark.parametrize("eos", [None, "tok"])
@pytest.mark.parametrize("dtype", ["uint16", "uint32"])
def test_encode_matches_document_encoder_output(tokenizer, tok_json, docs, eos, dtype):
    eos_id = tokenizer.eos_token_id if eos else None
    gig = _encoder(tok_json, eos=eos_id, dtype=dtype)
    hf = _encoder(tok_json, DocumentEncoder, eos=eos_id, dtype=dtype)
    for batch in (docs, ["", "", ""], [], docs[:1], ["", *docs[:5], ""]):
        a, b = gig.encode(batch), hf.encode(batch)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
        assert a[0].dtype == np.dtype(dtype) and a[1].dtype == np.int64


def test_ids_beyond_the_dtype_are_an_overflow(tok_json, docs):
    with pytest.raises(OverflowError, match="does not fit"):
        _encoder(tok_json, eos=None, dtype="uint8").encode(docs[:20])
    with pytest.raises(OverflowError, match="does not fit"):  # the EOS id alone
        _encoder(tok_json, eos=70_000, dtype="uint16").encode(["a"])


def test_the_cache_is_reset_with_identical_ids(tok_json, hf, docs, monkeypatch):
    """The encoder drops gigatoken's (unbounded) pre-token cache every CACHE_RESET_CHARS characters."""
    from zarrtok.ingest import gigatoken_encoding

    monkeypatch.setattr(gigatoken_encoding, "CACHE_RESET_CHARS", 2_000)
    loads = []
    original = gigatoken_encoding._load
    monkeypatch.setattr(gigatoken_encoding, "_load", lambda js: loads.append(1) or original(js))
    gig = _encoder(tok_json, eos=hf.eos_token_id)
    loads.clear()  # (the shape check loads it once)
    for start in range(0, len(docs), 25):
        batch = docs[start:start + 25]
        a, b = gig.encode(batch), hf.encode(batch)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    assert len(loads) > 3  # it was rebuilt several times


def test_pickles_by_value(gig, docs):
    gig.encode(["warm"])  # the gigatoken object exists in this process
    clone = pickle.loads(pickle.dumps(gig))
    assert clone._gigatoken is None and clone.tokenizer_json == gig.tokenizer_json
    np.testing.assert_array_equal(clone.encode(docs)[0], gig.encode(docs)[0])


# -- the post-processor: gigatoken's encode_batch adds no ids, zarrtok adds the template's ----------------

def _template(single, specials):
    return {"type": "TemplateProcessing", "single": single, "pair": [], "special_tokens": specials}


def _bos_eos_template(tok_json: str) -> str:
    """The test tokenizer with a BOS (a new added token) before and its EOS after every sequence."""
    spec = json.loads(tok_json)
    bos_id = len(spec["model"]["vocab"])
    spec["added_tokens"].append({"id": bos_id, "content": "<s>", "single_word": False, "lstrip": False,
                                 "rstrip": False, "normalized": False, "special": True})
    spec["post_processor"] = {"type": "Sequence", "processors": [
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": True},
        _template([{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                   {"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}}],
                  {"<s>": {"id": "<s>", "ids": [bos_id], "tokens": ["<s>"]},
                   "<|endoftext|>": {"id": "<|endoftext|>", "ids": [0], "tokens": ["<|endoftext|>"]}}),
    ]}
    return json.dumps(spec)


@pytest.mark.parametrize("add_special_tokens", [True, False])
def test_template_post_processor_ids_are_added(tok_json, docs, add_special_tokens):
    templated = _bos_eos_template(tok_json)
    spec, reason = gigatoken_compatibility(templated, add_special_tokens=add_special_tokens)
    assert spec is not None, reason
    assert spec == ({"prefix": [1024], "suffix": [0]} if add_special_tokens else {"prefix": [], "suffix": []})
    gig = _encoder(templated, eos=0, add_special_tokens=add_special_tokens)
    hf = _encoder(templated, DocumentEncoder, eos=0, add_special_tokens=add_special_tokens)
    texts = ["", *docs[:50], "", "x"]
    assert gig.encode_ids([t for t in texts if t]) == hf.encode_ids([t for t in texts if t])
    for a, b in zip(gig.encode(texts), hf.encode(texts)):
        np.testing.assert_array_equal(a, b)
    assert verify(gig, hf, docs[:100]) == (True, "")


@pytest.mark.parametrize("change,reason", [
    (lambda s: s.update(normalizer={"type": "Lowercase"}), "normalizer (Lowercase)"),
    (lambda s: s.update(normalizer={"type": "NFC"}), "normalizer (NFC)"),
    (lambda s: s.update(model={"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                               "max_input_chars_per_word": 100, "vocab": {"[UNK]": 0, "a": 1}}), "'WordPiece', not BPE"),
    (lambda s: s["model"].update(dropout=0.1), "dropout"),
    (lambda s: s["model"].update(end_of_word_suffix="</w>"), "end_of_word_suffix"),
    (lambda s: s["model"].update(continuing_subword_prefix="##"), "continuing_subword_prefix"),
    (lambda s: s["model"].update(byte_fallback=True), "byte_fallback"),
    (lambda s: s["added_tokens"][0].update(single_word=True), "single_word"),
    (lambda s: s.update(pre_tokenizer={"type": "Whitespace"}), "not byte-level"),
    (lambda s: s.update(pre_tokenizer={"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True}, {"type": "ByteLevel", "use_regex": True}]}), "not Split(regex"),
    (lambda s: s.update(pre_tokenizer={"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": r"\w+|\W"}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}),
     "gigatoken cannot load it: Unknown pre_tokenizer Split regexes"),
    (lambda s: s.update(post_processor={"type": "BertProcessing", "sep": ["<|endoftext|>", 0], "cls": ["<|endoftext|>", 0]}),
     "post-processor (BertProcessing) may add ids"),
    (lambda s: s.update(post_processor=_template([], {})), "holds 0 sequences"),
    (lambda s: s.update(post_processor=_template([{"SpecialToken": {"id": "<nope>", "type_id": 0}},
                                                  {"Sequence": {"id": "A", "type_id": 0}}], {})), "not defined"),
])
def test_shapes_it_cannot_reproduce_are_refused(tok_json, change, reason):
    modified = _modified(tok_json, change)
    spec, why = gigatoken_compatibility(modified, add_special_tokens=True)
    assert spec is None and reason in why, why
    with pytest.raises(ValueError, match="gigatoken fast path cannot reproduce this tokenizer"):
        _encoder(modified)


def test_a_post_processor_is_irrelevant_without_special_tokens(tok_json):
    bert = _modified(tok_json, lambda s: s.update(
        post_processor={"type": "BertProcessing", "sep": ["<|endoftext|>", 0], "cls": ["<|endoftext|>", 0]}))
    assert gigatoken_compatibility(bert, add_special_tokens=False)[0] == {"prefix": [], "suffix": []}


# -- builds ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("workers", [1, 2])
def test_builds_with_gigatoken_equal_the_ground_truth(tmp_path, tokenizer, docs, truth, workers):
    ds = datasets.Dataset.from_dict({"text": docs})
    store = zarrtok.build(ds, tokenizer=tokenizer, output=tmp_path / "g", progress=False, validation_split=0.0,
                          encoder="gigatoken", num_workers=workers, batch_size=40, chunk_size=997)
    assert store.manifest.encoder.startswith("gigatoken==0.10"), store.manifest.encoder
    assert "verified against hf-tokenizers==" in store.manifest.encoder
    np.testing.assert_array_equal(np.asarray(store.tokens("train")).astype(np.int64), truth)
    hf = zarrtok.build(ds, tokenizer=tokenizer, output=tmp_path / "hf", progress=False, validation_split=0.0,
                       encoder="hf", num_workers=workers, batch_size=40, chunk_size=997)
    assert hf.fingerprint == store.fingerprint  # the encoder is not part of the fingerprint
    np.testing.assert_array_equal(np.asarray(hf.tokens("train")), np.asarray(store.tokens("train")))


def test_auto_prefers_gigatoken_also_for_json_lines_with_workers(tmp_path, jsonl_path, tokenizer_dir, tokenizer, docs):
    store = zarrtok.build("json", data_files=jsonl_path, tokenizer_name=tokenizer_dir, output=str(tmp_path / "j"),
                          progress=False, validation_split=0.2, num_workers=2, batch_size=30)
    assert store.manifest.encoder.startswith("gigatoken==")
    total = sum(store.num_tokens(s) for s in store.splits)
    assert total == len(expected_tokens(tokenizer, docs))


def _disagreeing(monkeypatch):
    """gigatoken altered: the first token of the first text containing 'Zürich' gets another id."""
    original = GigatokenDocumentEncoder._encode_flat

    def wrong(self, texts):
        ids, offsets = original(self, texts)
        hit = next((i for i, t in enumerate(texts) if "Zürich" in t), None)
        if hit is not None:
            ids = ids.copy()
            ids[offsets[hit]] ^= 1
        return ids, offsets

    monkeypatch.setattr(GigatokenDocumentEncoder, "_encode_flat", wrong)


def test_a_disagreeing_gigatoken_falls_back_or_raises(tmp_path, tokenizer, docs, truth, monkeypatch, caplog):
    _disagreeing(monkeypatch)
    ds = datasets.Dataset.from_dict({"text": docs})
    with caplog.at_level("INFO", logger="zarrtok.ingest.builder"):
        store = zarrtok.build(ds, tokenizer=tokenizer, output=tmp_path / "a", progress=False, validation_split=0.0)
    assert store.manifest.encoder.startswith("tiktoken==")  # auto: the next verified fast path
    warned = [r for r in caplog.records if r.levelname == "WARNING"]
    assert any("gigatoken fast path not used" in r.getMessage() and "differs" in r.getMessage() for r in warned)
    np.testing.assert_array_equal(np.asarray(store.tokens("train")).astype(np.int64), truth)
    with pytest.raises(ValueError, match="encoder='gigatoken': the gigatoken fast path differs from the tokenizer"):
        zarrtok.build(ds, tokenizer=tokenizer, output=tmp_path / "b", progress=False, encoder="gigatoken")
    monkeypatch.setattr(fast_encoding, "FAST_ENCODERS", ("gigatoken",))
    store = zarrtok.build(ds, tokenizer=tokenizer, output=tmp_path / "c", progress=False, validation_split=0.0)
    assert store.manifest.encoder.startswith("hf-tokenizers==")  # no verified fast path left: HF


def test_a_wrong_assembly_is_caught_by_verification(tokenizer, hf, docs, monkeypatch):
    """Ids per text agree, but encode()'s assembled output differs (e.g. EOS misplaced): refused."""
    gig = _encoder(hf.tokenizer_json, eos=tokenizer.eos_token_id)
    original = GigatokenDocumentEncoder.encode

    def misplaced(self, texts):
        tokens, lengths = original(self, texts)
        if tokens.size > 2:
            tokens = tokens.copy()
            tokens[[0, 1]] = tokens[[1, 0]]
        return tokens, lengths

    monkeypatch.setattr(GigatokenDocumentEncoder, "encode", misplaced)
    ok, why = verify(gig, hf, docs[:50])
    assert not ok and "assembled tokens of encode() differ: gigatoken" in why


def test_without_gigatoken_auto_falls_back_and_says_why(tmp_path, tokenizer, docs, truth, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "gigatoken", None)  # `import gigatoken` raises ImportError
    ds = datasets.Dataset.from_dict({"text": docs})
    with caplog.at_level("INFO", logger="zarrtok.ingest.builder"):
        store = zarrtok.build(ds, tokenizer=tokenizer, output=tmp_path / "a", progress=False, validation_split=0.0)
    assert store.manifest.encoder.startswith("tiktoken==")
    assert "gigatoken fast path not used" in caplog.text and "gigatoken is not installed" in caplog.text
    np.testing.assert_array_equal(np.asarray(store.tokens("train")).astype(np.int64), truth)
    with pytest.raises(ValueError, match="encoder='gigatoken': .*gigatoken is not installed"):
        zarrtok.build(ds, tokenizer=tokenizer, output=tmp_path / "b", progress=False, encoder="gigatoken")


def test_forced_gigatoken_on_an_incompatible_tokenizer_names_the_reason(tmp_path, docs):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.train_from_iterator(docs, trainers.WordPieceTrainer(vocab_size=300, special_tokens=["[UNK]", "</s>"]))
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", unk_token="[UNK]")
    ds = datasets.Dataset.from_dict({"text": docs[:50]})
    with pytest.raises(ValueError, match="encoder='gigatoken': .*'WordPiece', not BPE"):
        zarrtok.build(ds, tokenizer=tok, output=tmp_path / "x", progress=False, encoder="gigatoken")
    store = zarrtok.build(ds, tokenizer=tok, output=tmp_path / "y", progress=False)  # auto: HF, silently correct
    assert store.manifest.encoder.startswith("hf-tokenizers==")

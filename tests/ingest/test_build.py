"""Building stores: tokens equal direct tokenization, split rules, dtype, fingerprint reuse, plain
zarr compatibility, and bad input that fails cleanly without leaving a store behind."""

from __future__ import annotations

import json
import os

import datasets
import numpy as np
import pytest
import zarr

import zarrtok
from zarrtok.errors import IncompleteStoreError, StoreExistsError
from zarrtok.ingest.tokenization import DocumentEncoder

from ..conftest import expected_doc_lengths, expected_tokens, make_documents, write_jsonl


def _all_tokens(store, split="train") -> np.ndarray:
    return np.asarray(store.tokens(split)).astype(np.int64)


def _no_store_left(parent) -> bool:
    """Nothing (no store, no staging directory) was left behind in ``parent``."""
    return not any(name for name in os.listdir(parent))


def test_json_build_equals_direct_tokenization(tmp_path, jsonl_path, tokenizer_dir, tokenizer, docs, truth):
    store = zarrtok.build("json", data_files=jsonl_path, tokenizer_name=tokenizer_dir, output=tmp_path / "s", progress=False)
    assert store.splits == ["train"]
    np.testing.assert_array_equal(_all_tokens(store), truth)
    assert store.dtype == np.uint16
    assert store.num_documents("train") == len(docs)
    offsets = store.documents("train")
    np.testing.assert_array_equal(np.diff(offsets), expected_doc_lengths(tokenizer, docs))
    # every non-empty document ends with EOS
    ends = offsets[1:][np.diff(offsets) > 0]
    assert (store.tokens("train")[:][ends - 1] == tokenizer.eos_token_id).all()


def test_parallel_build_equals_serial(tmp_path, jsonl_path, tokenizer_dir, truth):
    store = zarrtok.build(
        "json", data_files=jsonl_path, tokenizer_name=tokenizer_dir, output=tmp_path / "s",
        num_workers=2, batch_size=37, progress=False,
    )
    np.testing.assert_array_equal(_all_tokens(store), truth)


def test_dataset_object_and_tokenizer_instance(tmp_path, tokenizer, docs, truth):
    ds = datasets.Dataset.from_dict({"text": docs, "id": list(range(len(docs)))})
    store = zarrtok.build(ds, tokenizer=tokenizer, output=tmp_path / "s", progress=False)
    np.testing.assert_array_equal(_all_tokens(store), truth)


def test_datasetdict_keeps_its_splits(tmp_path, tokenizer, docs):
    dd = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"text": docs[:300]}),
        "validation": datasets.Dataset.from_dict({"text": docs[300:350]}),
        "test": datasets.Dataset.from_dict({"text": docs[350:]}),
    })
    # validation_split is ignored because the dataset has its own validation split
    store = zarrtok.build(dd, tokenizer=tokenizer, output=tmp_path / "s", validation_split=0.2, progress=False)
    assert store.splits == ["train", "validation", "test"]
    for split, part in (("train", docs[:300]), ("validation", docs[300:350]), ("test", docs[350:])):
        np.testing.assert_array_equal(_all_tokens(store, split), expected_tokens(tokenizer, part))


def test_validation_carved_from_train_with_seed(tmp_path, tokenizer, docs):
    ds = datasets.Dataset.from_dict({"text": docs})
    a = zarrtok.build(ds, tokenizer=tokenizer, output=tmp_path / "a", validation_split=0.1, seed=7, progress=False)
    b = zarrtok.build(ds, tokenizer=tokenizer, output=tmp_path / "b", validation_split=0.1, seed=7, progress=False)
    c = zarrtok.build(ds, tokenizer=tokenizer, output=tmp_path / "c", validation_split=0.1, seed=8, progress=False)
    assert a.splits == ["train", "validation"]
    n_val = int(np.ceil(0.1 * len(docs)))
    assert a.num_documents("validation") == n_val
    assert a.num_documents("train") == len(docs) - n_val
    np.testing.assert_array_equal(_all_tokens(a, "validation"), _all_tokens(b, "validation"))
    assert a.fingerprint == b.fingerprint != c.fingerprint
    # The two parts partition the documents and keep their original order.
    perm = np.random.default_rng(7).permutation(len(docs))
    val_idx, train_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    np.testing.assert_array_equal(_all_tokens(a, "validation"), expected_tokens(tokenizer, [docs[i] for i in val_idx]))
    np.testing.assert_array_equal(_all_tokens(a, "train"), expected_tokens(tokenizer, [docs[i] for i in train_idx]))


def test_zero_validation_split_makes_no_validation(tmp_path, tokenizer, docs):
    ds = datasets.Dataset.from_dict({"text": docs})
    store = zarrtok.build(ds, tokenizer=tokenizer, output=tmp_path / "s", validation_split=0.0, progress=False)
    assert store.splits == ["train"]


def test_test_split_carved_from_train_not_validation(tmp_path, tokenizer, docs):
    dd = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"text": docs[:300]}),
        "validation": datasets.Dataset.from_dict({"text": docs[300:]}),
    })
    store = zarrtok.build(dd, tokenizer=tokenizer, output=tmp_path / "s", test_split=0.1, progress=False)
    assert store.splits == ["train", "validation", "test"]
    assert store.num_documents("validation") == len(docs) - 300  # untouched
    assert store.num_documents("test") + store.num_documents("train") == 300


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5])
def test_bad_validation_fraction(tmp_path, tokenizer, docs, bad):
    ds = datasets.Dataset.from_dict({"text": docs})
    with pytest.raises(ValueError, match="validation_split"):
        zarrtok.build(ds, tokenizer=tokenizer, output=tmp_path / "s", validation_split=bad, progress=False)
    assert _no_store_left(tmp_path)


def test_multiple_columns_joined_as_one_document(tmp_path, tokenizer):
    titles = ["Title one", "", None, "Fourth"]
    bodies = ["body one", "body two", "body three", ""]
    ds = datasets.Dataset.from_dict({"title": titles, "body": bodies})
    store = zarrtok.build(ds, tokenizer=tokenizer, output=tmp_path / "s", mapping_column_name=["title", "body"],
                          progress=False)
    joined = ["Title one\n\nbody one", "body two", "body three", "Fourth"]
    np.testing.assert_array_equal(_all_tokens(store), expected_tokens(tokenizer, joined))
    store2 = zarrtok.build(ds, tokenizer=tokenizer, output=tmp_path / "s2", columns=["title", "body"],
                           column_separator=" | ", progress=False)
    np.testing.assert_array_equal(_all_tokens(store2), expected_tokens(tokenizer, ["Title one | body one", "body two",
                                                                                   "body three", "Fourth"]))
    assert store.fingerprint != store2.fingerprint


def test_no_eos(tmp_path, tokenizer, docs):
    ds = datasets.Dataset.from_dict({"text": docs})
    store = zarrtok.build(ds, tokenizer=tokenizer, output=tmp_path / "s", use_eos_token=False, progress=False)
    np.testing.assert_array_equal(_all_tokens(store), expected_tokens(tokenizer, docs, eos=False))
    assert store.eos_token_id is None


@pytest.mark.parametrize("fmt", ["text", "csv", "parquet"])
def test_other_load_dataset_formats(tmp_path, tokenizer, tokenizer_dir, fmt):
    # one-line documents without surrounding whitespace: CSV readers (pandas) drop blank rows
    docs = [d.strip() for d in make_documents(60, seed=5) if d.strip() and not any(c in d for c in "\n\r\x00")]
    path = tmp_path / f"data.{fmt if fmt != 'text' else 'txt'}"
    if fmt == "text":
        path.write_text("\n".join(docs) + "\n", encoding="utf-8")
    else:
        ds = datasets.Dataset.from_dict({"text": docs})
        getattr(ds, f"to_{fmt}")(str(path))
    store = zarrtok.build(fmt, data_files=str(path), tokenizer_name=tokenizer_dir, output=tmp_path / "s", progress=False)
    np.testing.assert_array_equal(_all_tokens(store), expected_tokens(tokenizer, docs))


def test_uint32_when_ids_exceed_uint16(tmp_path, docs):
    from zarrtok.demo import train_tokenizer

    tok = train_tokenizer(docs[:100], vocab_size=300)
    tok.add_tokens([f"<extra_{i}>" for i in range(66_000)])
    assert tok.vocab_size < 65536 <= len(tok)  # vocab_size alone would wrongly pick uint16
    text = ["hello <extra_65999> world", "plain"]
    store = zarrtok.build(datasets.Dataset.from_dict({"text": text}), tokenizer=tok, output=tmp_path / "s",
                          progress=False)
    assert store.dtype == np.uint32
    np.testing.assert_array_equal(_all_tokens(store), expected_tokens(tok, text))
    assert _all_tokens(store).max() >= 65536


def test_id_that_does_not_fit_is_an_error():
    enc = DocumentEncoder(_tiny_backend_json(), eos_token_id=70000, add_special_tokens=False, dtype="uint16")
    with pytest.raises(OverflowError, match="does not fit"):
        enc.encode(["a"])


def _tiny_backend_json() -> str:
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok.to_str()


# -- fingerprint and reuse --------------------------------------------------------------------


def test_rebuild_reuses_store_without_encoding(tmp_path, jsonl_path, tokenizer_dir, monkeypatch):
    out = tmp_path / "s"
    first = zarrtok.build("json", data_files=jsonl_path, tokenizer_name=tokenizer_dir, output=out, progress=False)
    mtime = os.stat(out / "zarr.json").st_mtime_ns

    def boom(self, texts):
        raise AssertionError("re-encoded although the fingerprint matched")

    from zarrtok.ingest.fast_encoding import TiktokenDocumentEncoder

    monkeypatch.setattr(DocumentEncoder, "encode", boom)
    monkeypatch.setattr(TiktokenDocumentEncoder, "encode", boom)
    again = zarrtok.build("json", data_files=jsonl_path, tokenizer_name=tokenizer_dir, output=out, progress=False)
    assert again.fingerprint == first.fingerprint
    assert os.stat(out / "zarr.json").st_mtime_ns == mtime
    # overwrite=True forces a rebuild (and so calls the encoder)
    with pytest.raises(AssertionError, match="re-encoded"):
        zarrtok.build("json", data_files=jsonl_path, tokenizer_name=tokenizer_dir, output=out, overwrite=True,
                      progress=False)
    # the failed forced rebuild left the previous store intact and nothing else
    assert zarrtok.open(out).fingerprint == first.fingerprint
    assert sorted(os.listdir(tmp_path)) == ["s"]


def test_changed_input_gives_new_fingerprint(tmp_path, tokenizer_dir, tokenizer, docs):
    path = write_jsonl(docs, tmp_path / "d.jsonl")
    a = zarrtok.build("json", data_files=path, tokenizer_name=tokenizer_dir, output=tmp_path / "a", progress=False)
    write_jsonl(docs[:-1] + ["a changed last document"], tmp_path / "d.jsonl")
    with pytest.raises(StoreExistsError, match="fingerprint"):
        zarrtok.build("json", data_files=path, tokenizer_name=tokenizer_dir, output=tmp_path / "a", progress=False)
    b = zarrtok.build("json", data_files=path, tokenizer_name=tokenizer_dir, output=tmp_path / "a",
                      overwrite="changed", progress=False)
    assert a.fingerprint != b.fingerprint
    np.testing.assert_array_equal(_all_tokens(b), expected_tokens(tokenizer, docs[:-1] + ["a changed last document"]))


def test_changed_tokenizer_gives_new_fingerprint(tmp_path, jsonl_path, tokenizer, docs):
    from zarrtok.demo import train_tokenizer

    other = train_tokenizer(docs[:200], vocab_size=600)
    a = zarrtok.build("json", data_files=jsonl_path, tokenizer=tokenizer, output=tmp_path / "a", progress=False)
    b = zarrtok.build("json", data_files=jsonl_path, tokenizer=other, output=tmp_path / "b", progress=False)
    c = zarrtok.build("json", data_files=jsonl_path, tokenizer=tokenizer, output=tmp_path / "c", use_eos_token=False,
                      progress=False)
    assert len({a.fingerprint, b.fingerprint, c.fingerprint}) == 3
    # layout options do not change the tokens, so they keep the fingerprint
    d = zarrtok.build("json", data_files=jsonl_path, tokenizer=tokenizer, output=tmp_path / "d", chunk_size=100,
                      progress=False)
    assert d.fingerprint == a.fingerprint


# -- format -------------------------------------------------------------------------------------


def test_plain_zarr_reads_the_store(small_chunk_store, truth, tokenizer):
    root = zarr.open_group(small_chunk_store.url, mode="r")
    manifest = root.attrs["zarrtok"]
    assert manifest["status"] == "complete" and manifest["format_version"] == 2
    parts = []
    for shard in manifest["splits"]["train"]["shards"]:
        arr = root[f"splits/train/shards/{shard['name']}/tokens"]
        assert arr.dtype == np.uint16 and arr.shape == (shard["num_tokens"],)
        parts.append(arr[:])
    assert len(parts) > 1  # several shards
    np.testing.assert_array_equal(np.concatenate(parts).astype(np.int64), truth)
    tok_json = bytes(root["tokenizer/tokenizer.json"][:])
    assert json.loads(tok_json)["model"]["type"] == "BPE"


def test_no_pickle_anywhere(small_chunk_store):
    for dirpath, _, files in os.walk(small_chunk_store.url):
        for name in files:
            assert not name.endswith((".pkl", ".pickle")), name
            with open(os.path.join(dirpath, name), "rb") as f:
                head = f.read(2)
            assert head[:1] != b"\x80" or name.isdigit(), f"{name} looks like a pickle"


def test_chunk_files_are_raw_bytes_with_crc(small_chunk_store, truth):
    import google_crc32c

    shard = small_chunk_store.manifest.splits["train"].shards[0]
    chunk_dir = os.path.join(small_chunk_store.url, f"splits/train/shards/{shard.name}/tokens/c")
    data = open(os.path.join(chunk_dir, "1"), "rb").read()
    assert len(data) == 777 * 2 + 4
    np.testing.assert_array_equal(np.frombuffer(data[:-4], dtype="<u2").astype(np.int64), truth[777:1554])
    assert int.from_bytes(data[-4:], "little") == google_crc32c.value(data[:-4])


def test_corrupted_chunk_detected_by_zarr(tmp_path, tokenizer, docs):
    store = zarrtok.build(datasets.Dataset.from_dict({"text": docs}), tokenizer=tokenizer, output=tmp_path / "s",
                          chunk_size=500, progress=False)
    path = tmp_path / "s/splits/train/shards/000000/tokens/c/0"
    raw = bytearray(path.read_bytes())
    raw[10] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(Exception, match="[Cc]hecksum"):
        zarr.open_group(str(tmp_path / "s"), mode="r")["splits/train/shards/000000/tokens"][:500]
    assert store is not None


# -- bad input -----------------------------------------------------------------------------------


def test_missing_column(tmp_path, jsonl_path, tokenizer_dir):
    with pytest.raises(ValueError, match="column 'body' not found"):
        zarrtok.build("json", data_files=jsonl_path, tokenizer_name=tokenizer_dir, output=tmp_path / "s",
                      mapping_column_name=["body"], progress=False)
    assert _no_store_left(tmp_path)


def test_non_string_column(tmp_path, tokenizer):
    ds = datasets.Dataset.from_dict({"text": ["a", "b"], "n": [1, 2]})
    with pytest.raises(TypeError, match="column 'n'.*not string"):
        zarrtok.build(ds, tokenizer=tokenizer, output=tmp_path / "s", columns="n", progress=False)
    assert _no_store_left(tmp_path)


def test_empty_dataset(tmp_path, tokenizer):
    ds = datasets.Dataset.from_dict({"text": []}, features=datasets.Features({"text": datasets.Value("string")}))
    with pytest.raises(ValueError, match="empty"):
        zarrtok.build(ds, tokenizer=tokenizer, output=tmp_path / "s", progress=False)
    assert _no_store_left(tmp_path)


def test_all_documents_empty(tmp_path, tokenizer):
    ds = datasets.Dataset.from_dict({"text": ["", "", None]})
    with pytest.raises(ValueError, match="no tokens"):
        zarrtok.build(ds, tokenizer=tokenizer, output=tmp_path / "s", progress=False)
    assert _no_store_left(tmp_path)


def test_unknown_split(tmp_path, tokenizer, docs):
    ds = datasets.Dataset.from_dict({"text": docs})
    with pytest.raises(ValueError, match="unknown split.*'validaton'"):
        zarrtok.build(ds, tokenizer=tokenizer, output=tmp_path / "s", splits=["validaton"], progress=False)
    assert _no_store_left(tmp_path)


def test_tokenizer_without_eos(tmp_path):
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(_tiny_backend_json()))
    assert tok.eos_token_id is None
    ds = datasets.Dataset.from_dict({"text": ["a a", "a"]})
    with pytest.raises(ValueError, match="no EOS token"):
        zarrtok.build(ds, tokenizer=tok, output=tmp_path / "s", progress=False)
    assert _no_store_left(tmp_path)
    store = zarrtok.build(ds, tokenizer=tok, output=tmp_path / "ok", use_eos_token=False, progress=False)
    np.testing.assert_array_equal(_all_tokens(store), [0, 0, 0])


def test_missing_tokenizer_and_both_tokenizers(tmp_path, tokenizer, tokenizer_dir):
    ds = datasets.Dataset.from_dict({"text": ["a"]})
    with pytest.raises(ValueError, match="tokenizer is required"):
        zarrtok.build(ds, output=tmp_path / "s", progress=False)
    with pytest.raises(ValueError, match="not both"):
        zarrtok.build(ds, tokenizer=tokenizer, tokenizer_name=tokenizer_dir, output=tmp_path / "s", progress=False)
    assert _no_store_left(tmp_path)


def test_crash_mid_build_leaves_nothing(tmp_path, tokenizer, docs, monkeypatch):
    calls = {"n": 0}
    original = DocumentEncoder.encode

    def flaky(self, texts):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated crash")
        return original(self, texts)

    monkeypatch.setattr(DocumentEncoder, "encode", flaky)
    ds = datasets.Dataset.from_dict({"text": docs})
    with pytest.raises(RuntimeError, match="simulated crash"):
        zarrtok.build(ds, tokenizer=tokenizer, output=tmp_path / "s", batch_size=50, chunk_size=100, progress=False,
                      encoder="hf")  # the encoder whose encode() is made to crash
    assert _no_store_left(tmp_path)


def test_refuses_to_overwrite_foreign_directory(tmp_path, tokenizer):
    out = tmp_path / "mydata"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    ds = datasets.Dataset.from_dict({"text": ["a b c"]})
    for overwrite in (False, True):
        with pytest.raises(StoreExistsError, match="not a zarrtok store"):
            zarrtok.build(ds, tokenizer=tokenizer, output=out, overwrite=overwrite, progress=False)
    assert (out / "precious.txt").read_text() == "keep me"


def test_incomplete_store_is_refused(tmp_path, tokenizer):
    ds = datasets.Dataset.from_dict({"text": ["a b c", "d e f"]})
    store = zarrtok.build(ds, tokenizer=tokenizer, output=tmp_path / "s", progress=False)
    meta_path = tmp_path / "s" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["attributes"]["zarrtok"]["status"] = "building"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(IncompleteStoreError, match="incomplete"):
        zarrtok.open(tmp_path / "s")
    with pytest.raises(StoreExistsError):
        zarrtok.build(ds, tokenizer=tokenizer, output=tmp_path / "s", progress=False)
    rebuilt = zarrtok.build(ds, tokenizer=tokenizer, output=tmp_path / "s", overwrite=True, progress=False)
    assert rebuilt.fingerprint == store.fingerprint


def test_existing_empty_directory_is_fine(tmp_path, tokenizer):
    (tmp_path / "s").mkdir()
    ds = datasets.Dataset.from_dict({"text": ["a b c"]})
    store = zarrtok.build(ds, tokenizer=tokenizer, output=tmp_path / "s", progress=False)
    assert store.num_tokens("train") > 0

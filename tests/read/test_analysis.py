"""Analysis API (zarrtok.read.analysis): stats against brute force (hypothesis over document lengths,
chunk and shard sizes), the content-keyed cache, decode/document/explain round trips of the source
text, provenance from a manifest that records it (and the fallback when it does not), find."""

from __future__ import annotations

import itertools
import json
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import zarrtok
from zarrtok.read import analysis
from zarrtok.read.analysis import AnalysisMixin

EOS = 1


# -- stores written directly from token arrays ------------------------------------------------------
def write_token_store(path, doc_tokens: list[np.ndarray], *, chunk_size: int, shard_docs: int | None = None,
                      dtype=np.uint16, vocab: int = 300, sources=None, provenance=None) -> zarrtok.TokenStore:
    """A complete store of the given documents (one token array per document, any of them empty),
    ``shard_docs`` documents per shard; ``provenance``: per shard, its runs (manifest fields)."""
    import shutil

    import zarr

    from zarrtok.format import (
        ATTRIBUTE_KEY,
        STATUS_COMPLETE,
        Manifest,
        ShardInfo,
        SplitInfo,
        new_id,
        shard_name,
        shard_path,
    )
    from zarrtok.ingest.writer import ShardWriter

    shutil.rmtree(path, ignore_errors=True)
    manifest = Manifest(fingerprint=new_id() * 2, dtype=np.dtype(dtype).name, chunk_size=chunk_size,
                        checksum="crc32c", splits={}, tokenizer={"len": vocab, "max_id": vocab - 1}, config={},
                        encoder="test", eos_token_id=EOS, generation=new_id(), created="2026-01-01T00:00:00+00:00",
                        sources=list(sources or []))
    root = zarr.open_group(zarr.storage.LocalStore(str(path)), mode="w", attributes={ATTRIBUTE_KEY: manifest.to_json()})
    per = shard_docs or max(1, len(doc_tokens))
    shards = []
    for k, first in enumerate(range(0, max(1, len(doc_tokens)), per)):
        group = doc_tokens[first : first + per]
        info = ShardInfo(shard_name(k), 0, 0, id=new_id(), checksum="crc32c")
        writer = ShardWriter(root.create_group(shard_path("train", info.name)), dtype=np.dtype(dtype),
                             chunk_size=chunk_size, checksum="crc32c")
        lengths = np.asarray([t.size for t in group], dtype=np.int64)
        tokens = np.concatenate(group).astype(dtype) if group else np.zeros(0, dtype)
        if lengths.size:
            writer.add(tokens, lengths)
        info.num_tokens, info.num_documents = writer.close()
        info.chunk_size = writer.tokens.array_chunk_size
        if provenance is not None:
            info.provenance = provenance[k]
        shards.append(info)
    manifest.splits["train"] = SplitInfo(shards)
    manifest.status = STATUS_COMPLETE
    root.attrs[ATTRIBUTE_KEY] = manifest.to_json()
    return zarrtok.open(str(path))


def random_docs(rng: np.random.Generator, lengths: list[int], vocab: int = 300) -> list[np.ndarray]:
    """Documents of the given lengths (0 = empty); every non-empty one ends with EOS."""
    docs = []
    for n in lengths:
        t = rng.integers(2, vocab, size=n).astype(np.int64)
        if n:
            t[-1] = EOS
        docs.append(t)
    return docs


def brute_force(doc_tokens: list[np.ndarray], seq_len: int, vocab: int) -> dict:
    """Everything stats() reports, computed the slow obvious way."""
    tokens = np.concatenate(doc_tokens) if doc_tokens else np.zeros(0, np.int64)
    n = tokens.size
    owner = np.concatenate([np.full(t.size, d) for d, t in enumerate(doc_tokens)]) if n else np.zeros(0, int)
    L = seq_len
    windows = (n - 1) // L if n - 1 >= L else 0
    crossing = sum(len(set(owner[i * L : i * L + L + 1].tolist())) > 1 for i in range(windows))
    docs_touched = sum(len(set(owner[i * L : i * L + L + 1].tolist())) for i in range(windows))
    padding = sum((-t.size) % L for t in doc_tokens if t.size)
    counts = np.zeros(vocab, np.int64)
    for x in tokens.tolist():
        counts[x] += 1
    lengths = np.asarray([t.size for t in doc_tokens if t.size])
    return {"num_tokens": n, "num_documents": len(doc_tokens), "empty": sum(t.size == 0 for t in doc_tokens),
            "eos": int(np.sum(tokens == EOS)), "counts": counts, "windows": windows, "crossing": crossing,
            "docs_per_window": docs_touched / windows if windows else 0.0,
            "tail": n - windows * L - 1 if windows else n, "padding": padding, "lengths": lengths}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lengths=st.lists(st.one_of(st.just(0), st.integers(1, 90)), min_size=1, max_size=40),
       chunk_size=st.integers(1, 120), shard_docs=st.one_of(st.none(), st.integers(1, 15)),
       seq_len=st.integers(1, 64), seed=st.integers(0, 2**16))
def test_stats_equal_brute_force(tmp_path_factory, monkeypatch, lengths, chunk_size, shard_docs, seq_len, seed):
    monkeypatch.setattr(analysis, "READ_BLOCK", 7)  # many blocks, chunk-aligned where possible
    monkeypatch.setattr(analysis, "COUNT_BLOCK", 5)
    rng = np.random.default_rng(seed)
    docs = random_docs(rng, lengths)
    if sum(lengths) == 0:
        return
    store = write_token_store(tmp_path_factory.mktemp("s"), docs, chunk_size=chunk_size, shard_docs=shard_docs)
    s = store.stats("train", seq_lens=(seq_len,), progress=False, cache=False)
    truth = brute_force(docs, seq_len, 300)
    assert s["num_tokens"] == truth["num_tokens"]
    assert s["num_documents"] == truth["num_documents"]
    assert s["empty_documents"] == truth["empty"]
    assert s["eos_count"] == truth["eos"]
    np.testing.assert_array_equal(s.token_counts, truth["counts"])
    assert s["distinct_tokens"] == int(np.count_nonzero(truth["counts"]))
    w = s["seq_lens"][str(seq_len)]
    assert w["windows"] == truth["windows"]
    assert w["crossing_windows"] == truth["crossing"]
    assert w["documents_per_window"] == pytest.approx(truth["docs_per_window"])
    assert w["tail_dropped"] == truth["tail"]
    assert w["padding_per_document"] == truth["padding"]
    dl = s["document_length"]
    assert dl["max"] == truth["lengths"].max() and dl["min"] == truth["lengths"].min()
    assert dl["mean"] == pytest.approx(truth["lengths"].mean())
    assert dl["quantiles"]["0.5"] == pytest.approx(float(np.median(truth["lengths"])))
    assert sum(dl["histogram"]["counts"]) == truth["lengths"].size
    edges = np.asarray(dl["histogram"]["edges"])
    assert np.all(np.diff(edges) > 0) and edges[0] <= truth["lengths"].min() and edges[-1] > truth["lengths"].max()
    # the JSON is plain
    json.dumps(dict(s))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 400), chunk_size=st.integers(1, 50), m=st.integers(1, 4), block=st.integers(1, 40),
       seed=st.integers(0, 2**16))
def test_find_equals_brute_force(tmp_path_factory, n, chunk_size, m, block, seed):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(2, 6, size=n)  # a tiny alphabet: many matches, some across blocks
    store = write_token_store(tmp_path_factory.mktemp("f"), [tokens], chunk_size=chunk_size)
    probe = tokens[rng.integers(0, n) :][:m]
    expected = [i for i in range(n - probe.size + 1) if np.array_equal(tokens[i : i + probe.size], probe)]
    got = AnalysisMixin.find(store, "train", probe, max_hits=None, block=block)
    assert got.tolist() == expected
    assert AnalysisMixin.find(store, "train", probe, max_hits=2, block=block).tolist() == expected[:2]
    assert AnalysisMixin.find(store, "train", [70000], max_hits=None).size == 0  # not representable in uint16


def test_stats_cache_in_store_and_local(tmp_path, monkeypatch):
    monkeypatch.setenv("ZARRTOK_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(analysis, "_indices_are_store_entries", lambda: True)  # the in-store cache, whatever commit says
    docs = random_docs(np.random.default_rng(0), [30, 0, 50, 7, 100])
    store = write_token_store(tmp_path / "s", docs, chunk_size=32)
    first = store.stats("train", seq_lens=(16,), progress=False)
    path = first["cache_path"]
    assert path.startswith(os.path.join(str(tmp_path / "s"), "indices", store.manifest.generation))
    # the store stays a clean Zarr hierarchy and passes verify; the entry is readable with plain zarr
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = store.verify(progress=False)  # (this store has no tokenizer: only that may be reported)
        assert all(p.startswith("tokenizer") for p in report.problems), report.problems
        group = store.group
        blob = bytes(group[f"indices/{store.manifest.generation}/stats-train.json"][:])
    assert json.loads(blob)["num_tokens"] == first["num_tokens"]

    def boom(*a, **k):
        raise AssertionError("tokens were counted again")

    monkeypatch.setattr(analysis, "compute_token_counts", boom)
    again = zarrtok.open(str(tmp_path / "s")).stats("train", seq_lens=(16, 64), progress=False)  # 64: offsets only
    assert again["num_tokens"] == first["num_tokens"] and again["cache_path"] == path
    assert list(again["seq_lens"]) == ["16", "64"]
    monkeypatch.undo()
    monkeypatch.setenv("ZARRTOK_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(analysis, "_indices_are_store_entries", lambda: True)

    # a rebuild at the same path (new shard ids) is never served the old entry
    docs2 = random_docs(np.random.default_rng(1), [10, 20])
    store2 = write_token_store(tmp_path / "s", docs2, chunk_size=32)
    assert store2.stats("train", seq_lens=(16,), progress=False)["num_tokens"] == 30

    # read-only store: the local cache directory
    ro = tmp_path / "ro"
    store3 = write_token_store(ro, docs, chunk_size=32)
    os.chmod(ro, 0o555)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as a user that can write read-only directories")
        s3 = store3.stats("train", seq_lens=(16,), progress=False)
        assert s3["cache_path"].startswith(str(tmp_path / "cache" / "stats"))
        monkeypatch.setattr(analysis, "compute_token_counts", boom)
        assert zarrtok.open(str(ro)).stats("train", seq_lens=(16,), progress=False)["cache_path"] == s3["cache_path"]
    finally:
        os.chmod(ro, 0o755)


def test_overwrite_after_stats(tmp_path, monkeypatch, tokenizer):
    """A store that has been analysed can still be rebuilt in place (its cached stats never make it
    look like foreign data), and the rebuilt store gets fresh statistics."""
    import datasets

    monkeypatch.setenv("ZARRTOK_CACHE_DIR", str(tmp_path / "cache"))
    out = str(tmp_path / "store")
    first = zarrtok.build(datasets.Dataset.from_dict({"text": ["one two three", "four five"]}), tokenizer=tokenizer,
                          output=out, progress=False)
    assert first.stats("train", seq_lens=(2,), progress=False)["num_documents"] == 2
    again = zarrtok.build(datasets.Dataset.from_dict({"text": ["six seven", "eight", "nine ten"]}), tokenizer=tokenizer,
                          output=out, progress=False, overwrite=True)
    assert again.stats("train", seq_lens=(2,), progress=False)["num_documents"] == 3


def test_read_only_root_uses_local_cache(tmp_path, monkeypatch):
    """Even as root (who may write anywhere), a store whose in-store write fails falls back to the local cache."""
    monkeypatch.setenv("ZARRTOK_CACHE_DIR", str(tmp_path / "cache"))
    docs = random_docs(np.random.default_rng(0), [30, 50])
    store = write_token_store(tmp_path / "s", docs, chunk_size=32)
    monkeypatch.setattr(analysis, "_write_store_json", lambda *a, **k: False)
    s = store.stats("train", seq_lens=(16,), progress=False)
    assert s["cache_path"].startswith(str(tmp_path / "cache" / "stats"))
    assert os.path.exists(s["cache_path"])


def test_frames(tmp_path, monkeypatch):
    pytest.importorskip("pandas")
    monkeypatch.setenv("ZARRTOK_CACHE_DIR", str(tmp_path / "cache"))
    docs = random_docs(np.random.default_rng(0), [30, 0, 50, 7, 100])
    s = write_token_store(tmp_path / "s", docs, chunk_size=32).stats("train", seq_lens=(8, 16), progress=False)
    frames = s.frames()
    assert list(frames["seq_lens"].index) == [8, 16]
    assert frames["summary"]["num_tokens"].iloc[0] == 187
    assert frames["histogram"]["documents"].sum() == 4
    assert frames["tokens"]["count"].iloc[0] == max(s.token_counts)


# -- stores built from text ------------------------------------------------------------------------
SOURCES = ("a.jsonl", "b.jsonl", "c.jsonl")


@pytest.fixture(scope="module")
def text_store(tmp_path_factory, tokenizer, docs):
    """A multi-shard store of the conftest documents, as if built from three files (``docs`` cut in
    three); the manifest records per shard which file rows it holds."""
    import datasets
    import zarr

    from zarrtok.format import ATTRIBUTE_KEY

    out = tmp_path_factory.mktemp("analysis") / "store"
    store = zarrtok.build(datasets.Dataset.from_dict({"text": docs}), tokenizer=tokenizer, output=str(out),
                          chunk_size=500, shard_size=4000, batch_size=25, progress=False)
    cut = [0, len(docs) // 3, 2 * len(docs) // 3, len(docs)]
    files = {name: docs[cut[k] : cut[k + 1]] for k, name in enumerate(SOURCES)}
    manifest = store.manifest
    manifest.sources = [{"kind": "jsonl", "path": f"/data/{name}"} for name in SOURCES]
    base = 0
    shards = manifest.splits["train"].shards
    assert len(shards) > 3
    for shard in shards:
        runs = []
        for d in range(base, base + shard.num_documents):
            src = int(np.searchsorted(cut, d, side="right") - 1)
            row = d - cut[src]
            if runs and runs[-1][0] == src and runs[-1][1] + runs[-1][2] == row:
                runs[-1][2] += 1
            else:
                runs.append([src, row, 1])
        shard.provenance = runs
        base += shard.num_documents
    zarr.open_group(str(out), mode="r+").attrs[ATTRIBUTE_KEY] = manifest.to_json()
    return zarrtok.open(str(out)), files


def test_document_round_trips_source_text(text_store, docs):
    store, _ = text_store
    for d, doc in enumerate(docs):
        assert store.document("train", d) == doc
    assert store.document("train", -1) == docs[-1]
    with pytest.raises(IndexError):
        store.document("train", len(docs))


def test_decode_matches_tokenizer(text_store, tokenizer, truth):
    store, _ = text_store
    for a, b in [(0, 50), (123, 777), (len(truth) - 40, len(truth)), (10, 10)]:
        assert store.decode("train", a, b) == tokenizer.decode(truth[a:b].tolist(), skip_special_tokens=False,
                                                               clean_up_tokenization_spaces=False)
    assert store.decode("train", -5) == store.decode("train", len(truth) - 5, len(truth))


@pytest.mark.parametrize("seq_len", [16, 128, 1024])
def test_explain_reassembles_the_window(text_store, truth, seq_len):
    store, files = text_store
    ds_windows = (len(truth) - 1) // seq_len
    offsets = store.documents("train")
    for index in sorted({0, 1, ds_windows // 2, ds_windows - 1, -1}):
        ex = store.explain("train", seq_len, index)
        i = index % ds_windows
        assert (ex["start"], ex["stop"]) == (i * seq_len, i * seq_len + seq_len + 1)
        pieces = ex["documents"]
        # pieces tile the window's L + 1 tokens in order
        assert pieces[0]["window_start"] == 0 and pieces[-1]["window_stop"] == seq_len + 1
        for p, q in itertools.pairwise(pieces):
            assert p["window_stop"] == q["window_start"] and p["is_end"] and q["is_start"]
        ids = np.concatenate([store.tokens("train")[offsets[p["document"]] + p["doc_token_start"]:
                                                    offsets[p["document"]] + p["doc_token_stop"]] for p in pieces])
        np.testing.assert_array_equal(ids, truth[ex["start"] : ex["stop"]])
        for p in pieces:  # provenance: the named file's row is the document's text
            name = os.path.basename(p["source"]["path"])
            assert files[name][p["row"]] == store.document("train", p["document"])
    with pytest.raises(IndexError):
        store.explain("train", seq_len, ds_windows)


def test_provenance_names_file_and_row_of_every_document(text_store, docs):
    store, files = text_store
    n = len(docs)
    src, rows = store.locate_documents("train", np.arange(n))
    for d in range(n):
        name = SOURCES[src[d]]
        assert files[name][rows[d]] == docs[d]
        p = store.provenance("train", d)
        assert p["recorded"] and p["source"]["path"] == f"/data/{name}" and p["row"] == rows[d]
    hits = store.find_documents("train", store.document_tokens("train", n - 1)[:6], max_hits=3)
    assert any(h["document"] == n - 1 and h["source"]["path"].endswith("c.jsonl") for h in hits)


def test_builds_record_provenance_of_every_document(small_chunk_store, docs, jsonl_path):
    """A real build (the direct JSON Lines reader, several shards) names the file and line of every document."""
    store = small_chunk_store
    assert store.manifest.sources and all(s.provenance for s in store.manifest.splits["train"].shards)
    for d in (0, 1, 5, len(docs) // 2, len(docs) - 1):
        p = store.provenance("train", d)
        assert p["recorded"] and p["row"] == d and p["source"]["path"].endswith(os.path.basename(jsonl_path))


def _without_provenance(store, directory):
    """A copy of ``store`` whose manifest has no sources / provenance (as a store built before they existed)."""
    import shutil

    shutil.copytree(store.url, directory)
    meta_path = os.path.join(directory, "zarr.json")
    meta = json.load(open(meta_path))
    manifest = meta["attributes"]["zarrtok"]
    manifest.pop("sources", None)
    for split in manifest["splits"].values():
        for shard in split["shards"]:
            shard.pop("provenance", None)
    json.dump(meta, open(meta_path, "w"))
    return zarrtok.open(str(directory))


def test_provenance_fallback_is_the_split_row(small_chunk_store, docs, tmp_path):
    store = _without_provenance(small_chunk_store, tmp_path / "old")
    assert all(not s.provenance for s in store.manifest.splits["train"].shards)
    src, rows = store.locate_documents("train", [0, 5, len(docs) - 1])
    assert src.tolist() == [-1, -1, -1] and rows.tolist() == [0, 5, len(docs) - 1]
    p = store.provenance("train", 5)
    assert p == {"document": 5, "recorded": False, "source_index": None, "source": None, "row": 5,
                 "shard": p["shard"], "shard_document": p["shard_document"]}
    ex = store.explain("train", 64, 3, text=False)
    assert all(d["source"] is None and d["row"] == d["document"] for d in ex["documents"])


def test_inconsistent_provenance_is_ignored(tmp_path, monkeypatch):
    monkeypatch.setenv("ZARRTOK_CACHE_DIR", str(tmp_path / "cache"))
    docs = random_docs(np.random.default_rng(0), [5, 6, 7])
    store = write_token_store(tmp_path / "s", docs, chunk_size=8, sources=[{"kind": "x", "path": "p"}],
                              provenance=[[[0, 10, 2]]])  # 2 rows for 3 documents
    assert store.provenance("train", 2)["recorded"] is False


def test_find_text_probe(text_store, docs):
    store, _ = text_store
    hits = store.find_documents("train", " harbor", max_hits=None)
    expected_docs = {d for d, doc in enumerate(docs) if " harbor" in doc}
    found_docs = {h["document"] for h in hits}
    assert found_docs and found_docs <= expected_docs
    for h in hits[:5]:
        assert "harbor" in store.decode("train", h["position"], h["position"] + 1)


def test_cli_stats_and_explain(text_store, capsys, tmp_path, monkeypatch):
    from zarrtok.cli import main

    monkeypatch.setenv("ZARRTOK_CACHE_DIR", str(tmp_path / "cache"))
    store, _ = text_store
    assert main(["stats", store.url, "--seq-len", "64", "--json", "--no-progress"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["train"]["num_tokens"] == store.num_tokens("train") and "token_counts" not in out["train"]
    assert main(["stats", store.url, "--no-progress"]) == 0
    assert "documents" in capsys.readouterr().out
    assert main(["explain", store.url, "--seq-len", "64", "--index", "2"]) == 0
    assert "row" in (text := capsys.readouterr().out) and "a.jsonl" in text
    assert main(["explain", store.url, "--seq-len", "64", "--index", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["index"] == 2
    if pytest.importorskip("matplotlib"):
        png = tmp_path / "s.png"
        assert main(["stats", store.url, "--no-progress", "--plot", str(png)]) == 0
        assert png.stat().st_size > 10_000

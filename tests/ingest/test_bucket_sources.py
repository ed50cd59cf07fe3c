"""Direct readers for fsspec URLs, globs, compressed JSON Lines and Parquet, against
`datasets.load_dataset` on the same local files (ground truth), and builds from the moto bucket
against builds from the same local files."""

from __future__ import annotations

import gzip
import json
import os
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

import zarrtok
from zarrtok.ingest import file_sources
from zarrtok.ingest.jsonl import JsonLinesDocuments, plan_json_lines
from zarrtok.ingest.parquet import ParquetDocuments, plan_parquet
from zarrtok.ingest.sources import DatasetDocuments, apply_split_rules, load_source, resolve_columns

from ..conftest import expected_tokens

KW = dict(chunk_size=500, shard_size=3000, batch_size=20, progress=False, encoder="hf")


def datasets_texts(kind, data_files, columns=None, **rules):
    split_datasets = apply_split_rules(load_source(kind, data_files=data_files), **rules)
    docs = DatasetDocuments(split_datasets, resolve_columns(split_datasets, columns), "\n\n")
    return {s: docs.head(s, 10**9) for s in docs.splits}


def direct_texts(kind, data_files, columns=None, storage_options=None, *, batch_size=20, block_bytes=1500, **rules):
    kwargs = {"storage_options": storage_options} if storage_options else None
    split_rules = dict(validation_split=rules.get("validation_split"), test_split=rules.get("test_split"),
                       seed=rules.get("seed", 42), splits=rules.get("splits"))
    if kind == "json":
        files = plan_json_lines("json", data_files=data_files, columns=columns, load_dataset_kwargs=kwargs)
        assert files is not None
        cols = ["text"] if columns is None else [columns] if isinstance(columns, str) else list(columns)
        docs = JsonLinesDocuments.open(files, columns=cols, separator="\n\n", batch_size=batch_size,
                                       block_bytes=block_bytes, storage_options=storage_options, **split_rules)
    else:
        planned = plan_parquet("parquet", data_files=data_files, columns=columns, load_dataset_kwargs=kwargs)
        assert planned is not None
        files, cols = planned
        docs = ParquetDocuments.open(files, columns=cols, separator="\n\n", storage_options=storage_options,
                                     **split_rules)
    out = {}
    for s in docs.splits:
        texts = [t for task in docs.tasks(s, batch_size) for t in docs.texts(task)]
        assert len(texts) == docs.num_documents(s)
        out[s] = texts
    return out


def _jsonl_bytes(docs, blank_every=0):
    lines = []
    for i, d in enumerate(docs):
        lines.append(json.dumps({"text": d, "n": i}, ensure_ascii=bool(i % 2)))
        if blank_every and i % blank_every == 0:
            lines.append("  ")
    return ("\n".join(lines) + "\n").encode()


@pytest.fixture(scope="module")
def files(tmp_path_factory, docs):
    """JSON Lines as .gz, .zst and plain; Parquet with several row groups, nulls and extra columns."""
    root = tmp_path_factory.mktemp("sources")
    (root / "b.jsonl.gz").write_bytes(gzip.compress(_jsonl_bytes(docs[:150])))
    (root / "a.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(_jsonl_bytes(docs[150:300], 7)))
    (root / "c.jsonl").write_bytes(_jsonl_bytes(docs[300:]))
    for name, part in (("p1.parquet", docs[:200]), ("p0.parquet", docs[200:])):
        table = pa.table({
            "text": [None if i % 17 == 3 else d for i, d in enumerate(part)],
            "title": [f"title {i}" if i % 5 else None for i in range(len(part))],
            "n": list(range(len(part))),
        })
        pq.write_table(table, root / name, row_group_size=45)
    return root


@pytest.fixture(scope="module")
def bucket(s3, files):
    name = s3.make_bucket(f"src-{uuid.uuid4().hex[:10]}")
    client = s3.client()
    for f in sorted(os.listdir(files)):
        client.put_object(Bucket=name, Key=f"data/{f}", Body=(files / f).read_bytes())
    return name


def test_compressed_and_plain_jsonl_same_documents_as_datasets(files):
    spec = [str(files / "b.jsonl.gz"), str(files / "a.jsonl.zst"), str(files / "c.jsonl")]
    expected = datasets_texts("json", spec)
    assert direct_texts("json", spec) == expected
    assert direct_texts("json", spec, block_bytes=1 << 20, batch_size=1000) == expected
    rules = dict(validation_split=0.1, test_split=0.05, seed=3)
    assert direct_texts("json", spec, **rules) == datasets_texts("json", spec, **rules)
    glob = str(files / "*.jsonl*")  # sorted: a.jsonl.zst, b.jsonl.gz, c.jsonl
    assert direct_texts("json", glob) == datasets_texts("json", glob)
    assert plan_json_lines("json", data_files=glob, columns=None)["train"] == [
        str(files / n) for n in ("a.jsonl.zst", "b.jsonl.gz", "c.jsonl")]


@pytest.mark.parametrize("columns", [None, "title", ["title", "text"]])
def test_parquet_same_documents_as_datasets(files, columns):
    spec = {"train": str(files / "p*.parquet"), "validation": str(files / "p1.parquet")}
    assert direct_texts("parquet", spec, columns) == datasets_texts("parquet", spec, columns)
    rules = dict(validation_split=0.2, seed=5)
    one = str(files / "p0.parquet")
    assert direct_texts("parquet", one, columns, **rules) == datasets_texts("parquet", one, columns, **rules)


def test_parquet_reads_only_the_text_columns_of_its_row_group(files):
    planned = plan_parquet("parquet", data_files=str(files / "p1.parquet"), columns="title")
    docs = ParquetDocuments.open(planned[0], columns=planned[1], separator="\n\n", validation_split=0,
                                 test_split=0, seed=0, splits=None)
    tasks = docs.tasks("train", 10)
    assert [t[0].num_rows for t in tasks] == [45, 45, 45, 45, 20]  # one task per row group
    read = []
    original = pq.ParquetFile.read_row_group

    def spy(self, i, columns=None, **kw):
        read.append((i, tuple(columns)))
        return original(self, i, columns=columns, **kw)

    pq.ParquetFile.read_row_group = spy
    try:
        docs.texts(tasks[2])
    finally:
        pq.ParquetFile.read_row_group = original
    assert read == [(2, ("title",))]


def test_parquet_non_string_column_is_refused_naming_file_and_column(files):
    with pytest.raises(TypeError, match=r"p1\.parquet: column 'n' has type int64, not string"):
        plan_parquet("parquet", data_files=str(files / "p1.parquet"), columns=["text", "n"])


def test_bad_compressed_line_names_file_and_line(tmp_path):
    data = b'{"text": "a"}\n{"text": "b"}\n{"text": 7}\n'
    (tmp_path / "bad.jsonl.gz").write_bytes(gzip.compress(data))
    with pytest.raises(TypeError, match=r"bad\.jsonl\.gz, line 3: column 'text' holds int"):
        direct_texts("json", str(tmp_path / "bad.jsonl.gz"))


def test_compressed_blocks_read_anywhere_and_continue_a_stream(files, monkeypatch):
    path = str(files / "a.jsonl.zst")
    docs = JsonLinesDocuments.open({"train": [path]}, columns=["text"], separator="\n\n", validation_split=0,
                                   test_split=0, seed=0, splits=None, batch_size=10, block_bytes=800)
    tasks = docs.tasks("train", 10)
    assert len(tasks) > 5 and all(t[0].compression == "zstd" for t in tasks)
    in_order = [docs.texts(t) for t in tasks]
    opened = []
    real = file_sources.open_stream
    monkeypatch.setattr(file_sources, "open_stream", lambda *a: opened.append(a[0]) or real(*a))
    fresh = JsonLinesDocuments({}, {}, ["text"], "\n\n")
    assert [fresh.texts(t) for t in reversed(tasks)] == in_order[::-1]  # backwards: a new stream each time
    assert len(opened) == len(tasks)
    opened.clear()
    fresh.close()
    assert [fresh.texts(t) for t in tasks[::2]] == in_order[::2]  # forwards, skipping: one stream
    assert len(opened) == 1


def _s3(bucket, key):
    return f"s3://{bucket}/data/{key}"


def test_bucket_documents_equal_local_and_globs_resolve(s3, files, bucket):
    opts = s3.storage_options
    local = [str(files / "a.jsonl.zst"), str(files / "b.jsonl.gz"), str(files / "c.jsonl")]
    glob = f"s3://{bucket}/data/*.jsonl*"
    assert plan_json_lines("json", data_files=glob, columns=None,
                           load_dataset_kwargs={"storage_options": opts})["train"] == [
        _s3(bucket, n) for n in ("a.jsonl.zst", "b.jsonl.gz", "c.jsonl")]
    assert direct_texts("json", glob, storage_options=opts) == datasets_texts("json", local)
    pglob = f"s3://{bucket}/data/p*.parquet"
    assert direct_texts("parquet", pglob, ["title", "text"], storage_options=opts) == \
        datasets_texts("parquet", str(files / "p*.parquet"), ["title", "text"])


def _tokens(store):
    return {s: (np.asarray(store.tokens(s)), np.asarray(store.documents(s)),
                [(sh.num_tokens, sh.num_documents, sh.provenance) for sh in store.manifest.splits[s].shards])
            for s in store.splits}


def _assert_same_tokens(a, b):
    ta, tb = _tokens(a), _tokens(b)
    assert list(ta) == list(tb)
    for s in ta:
        np.testing.assert_array_equal(ta[s][0], tb[s][0])
        np.testing.assert_array_equal(ta[s][1], tb[s][1])
        assert ta[s][2] == tb[s][2]


@pytest.mark.parametrize("kind", ["json", "parquet"])
def test_bucket_build_equals_local_build(s3, files, bucket, tokenizer_dir, tokenizer, tmp_path, kind):
    opts = s3.storage_options
    if kind == "json":
        local, remote = str(files / "*.jsonl*"), f"s3://{bucket}/data/*.jsonl*"
    else:
        local, remote = str(files / "p*.parquet"), f"s3://{bucket}/data/p*.parquet"
    ref = zarrtok.build(kind, data_files=local, tokenizer_name=tokenizer_dir, output=tmp_path / "local",
                        validation_split=0.1, **KW)
    store = zarrtok.build(kind, data_files=remote, tokenizer_name=tokenizer_dir, output=tmp_path / "bucket",
                          validation_split=0.1, load_dataset_kwargs={"storage_options": opts}, **KW)
    _assert_same_tokens(store, ref)
    assert len(store.manifest.splits["train"].shards) > 1
    expected = datasets_texts(kind, local, validation_split=0.1)
    for split in ("train", "validation"):
        np.testing.assert_array_equal(np.asarray(store.tokens(split)), expected_tokens(tokenizer, expected[split]))
    # the fingerprint identifies the files by source: URL, size and ETag (local: path, size, mtime)
    assert store.fingerprint != ref.fingerprint
    entries = store.manifest.config["source"]["files"]
    assert all(e["path"].startswith(f"s3://{bucket}/") and e["size"] > 0 and e.get("ETag") for e in entries)
    assert [s["path"] for s in store.manifest.sources] == [e["path"] for e in entries]
    assert {s["kind"] for s in store.manifest.sources} == {"jsonl" if kind == "json" else "parquet"}
    assert "secret" not in json.dumps(store.manifest.config)  # credentials never recorded


def test_changed_object_changes_the_fingerprint_and_plans_hold_no_credentials(s3, files, tokenizer_dir, tmp_path):
    from zarrtok.ingest.builder import plan_build

    opts = s3.storage_options
    name = s3.make_bucket(f"chg-{uuid.uuid4().hex[:10]}")
    client = s3.client()
    client.put_object(Bucket=name, Key="d/a.jsonl.gz", Body=(files / "b.jsonl.gz").read_bytes())
    url = f"s3://{name}/d/a.jsonl.gz"
    kwargs = {"storage_options": opts}
    plan = plan_build("json", data_files=url, tokenizer_name=tokenizer_dir, output=str(tmp_path / "s"),
                      load_dataset_kwargs=kwargs, **KW)
    reader = plan.data["reader"]
    assert reader["storage_options"]["client_kwargs"]["endpoint_url"] == opts["client_kwargs"]["endpoint_url"]
    assert "key" not in reader["storage_options"] and "secret" not in reader["storage_options"]
    assert opts["secret"] not in plan.to_json()
    before = plan.fingerprint
    other = gzip.compress(gzip.decompress((files / "b.jsonl.gz").read_bytes()).replace(b'"n": 1,', b'"n": 2,'))
    client.put_object(Bucket=name, Key="d/a.jsonl.gz", Body=other)  # same size, new ETag
    again = plan_build("json", data_files=url, tokenizer_name=tokenizer_dir, output=str(tmp_path / "t"),
                       load_dataset_kwargs=kwargs, **KW)
    assert again.fingerprint != before


@pytest.mark.slow
def test_dask_cluster_reads_the_bucket_itself(s3, files, bucket, tokenizer_dir, tmp_path):
    """Dask workers (spawned processes: no driver state) open s3://.../*.jsonl.gz and the Parquet
    files themselves, with the plan's credential-free options and the environment's credentials."""
    distributed = pytest.importorskip("distributed")
    opts = s3.storage_options
    cases = [("json", f"s3://{bucket}/data/*.jsonl.gz", str(files / "*.jsonl.gz")),
             ("parquet", f"s3://{bucket}/data/p*.parquet", str(files / "p*.parquet"))]
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        for kind, remote, local in cases:
            ref = zarrtok.build(kind, data_files=local, tokenizer_name=tokenizer_dir, output=tmp_path / f"{kind}-ref",
                                **KW)
            store = zarrtok.build(kind, data_files=remote, tokenizer_name=tokenizer_dir,
                                  output=tmp_path / f"{kind}-dask", load_dataset_kwargs={"storage_options": opts},
                                  executor=client, **KW)
            assert len(store.manifest.splits["train"].shards) > 1
            _assert_same_tokens(store, ref)


# -- streaming (Iterable) datasets ---------------------------------------------------------------------------
def _jsonl_parts(files, docs):
    parts = []
    for k, (a, b) in enumerate([(0, 130), (130, 250), (250, len(docs))]):
        path = files / f"it{k}.jsonl"
        path.write_bytes(_jsonl_bytes(docs[a:b]))
        parts.append(str(path))
    return parts


def test_streaming_build_equals_the_datasets_build(files, docs, tokenizer_dir, tokenizer, tmp_path):
    parts = _jsonl_parts(tmp_path, docs)
    ref = zarrtok.build("json", data_files=parts, tokenizer_name=tokenizer_dir, output=tmp_path / "ref",
                        load_dataset_kwargs={"keep_in_memory": True}, **KW)  # the datasets path (ground truth)
    assert ref.manifest.config["source"].get("reader") is None
    store = zarrtok.build("json", data_files=parts, tokenizer_name=tokenizer_dir, output=tmp_path / "stream",
                          load_dataset_kwargs={"streaming": True}, **KW)
    _assert_same_tokens(store, ref)
    assert len(store.manifest.splits["train"].shards) > 1
    source = store.manifest.config["source"]
    assert source["reader"] == "zarrtok-iterable" and source["shard_sizes"] == {"train": [130, 120, len(docs) - 250]}
    assert store.manifest.sources == [{"kind": "iterable", "name": "json", "config": None, "split": "train"}]
    again = zarrtok.build("json", data_files=parts, tokenizer_name=tokenizer_dir, output=tmp_path / "stream",
                          load_dataset_kwargs={"streaming": True}, **KW)
    assert again.manifest.created == store.manifest.created  # same fingerprint: reused


def test_iterable_dataset_object_and_refused_rules(docs, tokenizer_dir, tokenizer, tmp_path):
    import datasets

    texts = docs[:80]
    ds = datasets.IterableDataset.from_generator(lambda: ({"text": t, "n": i} for i, t in enumerate(texts)))
    store = zarrtok.build(ds, tokenizer_name=tokenizer_dir, output=tmp_path / "gen", **KW)
    np.testing.assert_array_equal(np.asarray(store.tokens("train")), expected_tokens(tokenizer, texts))
    assert store.num_documents("train") == len(texts)
    with pytest.raises(ValueError, match="has no length, so a 'validation' split cannot be carved"):
        zarrtok.build(ds, tokenizer_name=tokenizer_dir, output=tmp_path / "v", validation_split=0.1, **KW)
    with pytest.raises(ValueError, match="shuffle=True cannot be planned"):
        zarrtok.build(ds, tokenizer_name=tokenizer_dir, output=tmp_path / "s", shuffle=True, **KW)
    bad = datasets.IterableDataset.from_generator(lambda: iter([{"text": "a"}, {"text": 5}]))
    with pytest.raises(TypeError, match=r"split 'train', shard 0, row 1: column 'text' holds int"):
        zarrtok.build(bad, tokenizer_name=tokenizer_dir, output=tmp_path / "b", **KW)
    assert not os.path.exists(tmp_path / "b")


@pytest.mark.slow
def test_streaming_build_on_spawned_workers_loads_the_source_itself(docs, tokenizer_dir, tmp_path):
    parts = _jsonl_parts(tmp_path, docs)
    kw = dict(tokenizer_name=tokenizer_dir, load_dataset_kwargs={"streaming": True}, **KW)
    ref = zarrtok.build("json", data_files=parts, output=tmp_path / "ref", **kw)
    spawned = zarrtok.build("json", data_files=parts, output=tmp_path / "spawn", num_workers=2, start_method="spawn",
                            **kw)
    _assert_same_tokens(spawned, ref)


def test_memory_and_file_urls_stand_in_for_hf_urls(files):
    """hf://datasets/... goes through huggingface_hub's fsspec filesystem, the same code path as any
    fsspec URL (glob without protocol, unstrip_protocol, info, open): memory:// and file:// here."""
    import fsspec

    fs = fsspec.filesystem("memory")
    root = f"/zarrtok-{uuid.uuid4().hex[:8]}"
    for name in ("a.jsonl.zst", "b.jsonl.gz", "p0.parquet", "p1.parquet"):
        fs.pipe(f"{root}/data/{name}", (files / name).read_bytes())
    local_json = [str(files / "a.jsonl.zst"), str(files / "b.jsonl.gz")]
    assert plan_json_lines("json", data_files=f"memory://{root}/data/*.jsonl*", columns=None)["train"] == [
        f"memory://{root}/data/a.jsonl.zst", f"memory://{root}/data/b.jsonl.gz"]
    assert direct_texts("json", f"memory://{root}/data/*.jsonl*") == datasets_texts("json", local_json)
    assert direct_texts("parquet", f"memory://{root}/data/*.parquet", "title") == \
        datasets_texts("parquet", str(files / "*.parquet"), "title")
    assert direct_texts("json", f"file://{files}/*.jsonl.gz") == datasets_texts("json", str(files / "b.jsonl.gz"))
    ident = file_sources.identity([f"memory://{root}/data/p0.parquet"], None)
    assert ident[0]["path"] == f"memory://{root}/data/p0.parquet"
    assert ident[0]["size"] == (files / "p0.parquet").stat().st_size

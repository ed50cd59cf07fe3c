"""Overwrite replaces only zarrtok stores (issue 11, points 5 and 6): user data is never deleted, a
local overwrite is atomic, a killed S3 overwrite leaves the old store intact."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import uuid

import numpy as np
import pytest
import zarr

import zarrtok
from zarrtok.errors import StoreExistsError
from zarrtok.storage import commit

from ..conftest import write_jsonl

KW = dict(chunk_size=500, shard_size=3000, batch_size=20, progress=False)


@pytest.fixture(scope="module")
def corpora(tmp_path_factory, docs):
    d = tmp_path_factory.mktemp("corpora")
    return write_jsonl(docs[:120], d / "a.jsonl"), write_jsonl(docs[120:260], d / "b.jsonl")


def _tokens(store) -> np.ndarray:
    return np.concatenate([np.asarray(store.tokens(s)) for s in store.splits])


def _build(data, tokenizer_dir, out, **kw):
    return zarrtok.build("json", data_files=data, tokenizer_name=tokenizer_dir, output=out, **{**KW, **kw})


def _user_group(path) -> np.ndarray:
    root = zarr.open_group(str(path), mode="w", attributes={"owner": "me"})
    values = np.arange(1000, dtype=np.int32)
    root.create_array("measurements", data=values, chunks=(100,))
    return values


def _snapshot(path) -> dict[str, bytes]:
    out = {}
    for dirpath, _, files in os.walk(path):
        for name in files:
            p = os.path.join(dirpath, name)
            with open(p, "rb") as f:
                out[os.path.relpath(p, path)] = f.read()
    return out


# -- point 5: only zarrtok stores are replaced -----------------------------------------------------------
@pytest.mark.parametrize("overwrite", [True, "changed"])
def test_overwrite_never_deletes_a_plain_zarr_group(tmp_path, corpora, tokenizer_dir, overwrite):
    out = tmp_path / "data"
    values = _user_group(out)
    before = _snapshot(out)
    with pytest.raises(StoreExistsError, match="without a zarrtok manifest"):
        _build(corpora[0], tokenizer_dir, out, overwrite=overwrite)
    assert _snapshot(out) == before
    np.testing.assert_array_equal(zarr.open_group(str(out), mode="r")["measurements"][:], values)
    assert sorted(os.listdir(tmp_path)) == ["data"]  # no staging left either


def test_overwrite_never_deletes_a_directory_whose_zarr_json_is_not_json(tmp_path, corpora, tokenizer_dir):
    out = tmp_path / "data"
    out.mkdir()
    (out / "zarr.json").write_text("{ this is my own file")
    (out / "notes.txt").write_text("keep me")
    before = _snapshot(out)
    for overwrite in (True, "changed"):
        with pytest.raises(StoreExistsError, match="not JSON"):
            _build(corpora[0], tokenizer_dir, out, overwrite=overwrite)
    assert _snapshot(out) == before


def test_overwrite_never_deletes_foreign_files_in_a_store(tmp_path, corpora, tokenizer_dir):
    out = tmp_path / "s"
    old = _build(corpora[0], tokenizer_dir, out)
    (out / "my-notes.txt").write_text("keep me")
    with pytest.raises(StoreExistsError, match="my-notes.txt"):
        _build(corpora[1], tokenizer_dir, out, overwrite=True)
    assert (out / "my-notes.txt").read_text() == "keep me"
    np.testing.assert_array_equal(_tokens(zarrtok.open(out)), _tokens(old))


def test_copy_overwrite_never_deletes_user_data(tmp_path, corpora, tokenizer_dir):
    src = _build(corpora[0], tokenizer_dir, tmp_path / "src")
    out = tmp_path / "data"
    _user_group(out)
    before = _snapshot(out)
    with pytest.raises(StoreExistsError, match="not a zarrtok store"):
        zarrtok.copy(src.url, str(out), overwrite=True, progress=False)
    assert _snapshot(out) == before
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreExistsError, match="file"):
        zarrtok.copy(src.url, str(tmp_path / "file"), overwrite=True, progress=False)


def test_from_hub_never_deletes_user_data(tmp_path, corpora, tokenizer_dir):
    out = tmp_path / "cache"
    _user_group(out)
    before = _snapshot(out)
    with pytest.raises(StoreExistsError):
        zarrtok.FastHfDatasetProvider.from_hub("json", data_files=corpora[0], tokenizer_name=tokenizer_dir,
                                               cache_dir=str(out))
    assert _snapshot(out) == before


def test_incomplete_zarrtok_store_is_replaced(tmp_path, corpora, tokenizer_dir):
    out = tmp_path / "s"
    _build(corpora[0], tokenizer_dir, out)
    meta = json.loads((out / "zarr.json").read_text())
    meta["attributes"]["zarrtok"]["status"] = "building"  # what a crashed build looks like
    (out / "zarr.json").write_text(json.dumps(meta))
    new = _build(corpora[1], tokenizer_dir, out, overwrite="changed")
    assert zarrtok.open(out).fingerprint == new.fingerprint
    src = _build(corpora[0], tokenizer_dir, tmp_path / "src")
    (out / "zarr.json").write_text(json.dumps(meta))
    assert zarrtok.copy(src.url, str(out), overwrite=True, progress=False).fingerprint == src.fingerprint


def test_s3_overwrite_never_deletes_a_plain_zarr_group(s3, corpora, tokenizer_dir):
    bucket = s3.make_bucket(f"u-{uuid.uuid4().hex[:12]}")
    url = f"s3://{bucket}/data"
    group = zarr.open_group(zarr.storage.FsspecStore.from_url(url, storage_options=s3.storage_options), mode="w")
    group.create_array("x", data=np.arange(10, dtype=np.int16))
    before = s3.list_keys(bucket)
    for overwrite in (True, "changed"):
        with pytest.raises(StoreExistsError, match="not a zarrtok store"):
            _build(corpora[0], tokenizer_dir, url, storage_options=s3.storage_options, overwrite=overwrite)
    assert s3.list_keys(bucket) == before


# -- point 6: atomic overwrite, locally and on S3 --------------------------------------------------------
def test_local_overwrite_is_one_exchange(tmp_path, corpora, tokenizer_dir, monkeypatch):
    """No instant without a store at the path: the commit is one renameat2(RENAME_EXCHANGE)."""
    out = tmp_path / "s"
    old = _build(corpora[0], tokenizer_dir, out)
    renames = []
    real = os.rename
    monkeypatch.setattr(os, "rename", lambda a, b: (renames.append((a, b)), real(a, b)))
    new = _build(corpora[1], tokenizer_dir, out, overwrite=True)
    assert renames == []  # no two-rename window
    assert zarrtok.open(out).fingerprint == new.fingerprint != old.fingerprint
    assert sorted(os.listdir(tmp_path)) == ["s"]


def _run(script: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300, cwd=os.getcwd())


KILL_IN_BUILD = """
    import os, signal, sys, json
    import zarrtok, zarrtok.ingest.builder as b
    from zarrtok.storage import commit
    point = os.environ["KILL_AT"]
    if point == "write":
        real = b._close_shard
        def close(*a, **k):
            real(*a, **k)
            os.kill(os.getpid(), signal.SIGKILL)
        b._close_shard = close
    elif point == "between-renames":
        commit.exchange = lambda a, b: False   # as without renameat2: the two-rename fallback
        real = os.rename
        calls = []
        def rename(a, b):
            calls.append(a)
            real(a, b)
            if len(calls) == 1:
                os.kill(os.getpid(), signal.SIGKILL)
        os.rename = rename
    elif point == "after-exchange":
        real = commit._remove_tree
        def remove(path):
            if ".zarrtok-staging-" in path:
                os.kill(os.getpid(), signal.SIGKILL)
            real(path)
        commit._remove_tree = remove
    opts = json.loads(os.environ.get("OPTS", "{}"))
    zarrtok.build("json", data_files=os.environ["DATA"], tokenizer_name=os.environ["TOK"], output=os.environ["OUT"],
                  overwrite=True, storage_options=opts, chunk_size=500, shard_size=3000, batch_size=20, progress=False)
    print("NOT KILLED")
"""


@pytest.mark.parametrize("point", ["write", "between-renames", "after-exchange"])
def test_local_overwrite_killed_leaves_old_or_new(tmp_path, corpora, tokenizer_dir, point):
    out = tmp_path / "s"
    old = _build(corpora[0], tokenizer_dir, out)
    old_tokens = _tokens(old)
    proc = _run(KILL_IN_BUILD, env=dict(KILL_AT=point, DATA=corpora[1], TOK=tokenizer_dir, OUT=str(out)))
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    commit.recover(zarrtok.storage.as_location(out))  # what the next build (or open) does first
    store = zarrtok.open(out)
    expected_new = _build(corpora[1], tokenizer_dir, tmp_path / "expected")
    got = _tokens(store)
    assert store.fingerprint in (old.fingerprint, expected_new.fingerprint)
    if store.fingerprint == old.fingerprint:
        np.testing.assert_array_equal(got, old_tokens)
    else:
        np.testing.assert_array_equal(got, _tokens(expected_new))
    # the next build sweeps what the killed one left (staging / old copy / writer record)
    _build(corpora[1], tokenizer_dir, out, overwrite="changed")
    assert sorted(os.listdir(tmp_path)) == ["expected", "s"]


def test_local_fallback_overwrite_failing_between_renames_puts_the_old_store_back(tmp_path, corpora, tokenizer_dir,
                                                                                  monkeypatch):
    out = tmp_path / "s"
    old = _build(corpora[0], tokenizer_dir, out)
    monkeypatch.setattr(commit, "exchange", lambda a, b: False)
    real = os.rename
    calls = []

    def rename(a, b):
        calls.append((a, b))
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real(a, b)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError, match="No space"):
        _build(corpora[1], tokenizer_dir, out, overwrite=True)
    np.testing.assert_array_equal(_tokens(zarrtok.open(out)), _tokens(old))
    assert sorted(os.listdir(tmp_path)) == ["s"]


def _s3_objects(s3, bucket):
    return s3.list_keys(bucket)


def test_s3_overwrite_writes_beside_and_sweeps_after(s3, corpora, tokenizer_dir, tmp_path):
    bucket = s3.make_bucket(f"o-{uuid.uuid4().hex[:12]}")
    url = f"s3://{bucket}/store"
    old = _build(corpora[0], tokenizer_dir, url, storage_options=s3.storage_options)
    old_keys = set(_s3_objects(s3, bucket))
    s3.reset_log()
    new = _build(corpora[1], tokenizer_dir, url, storage_options=s3.storage_options, overwrite=True)
    log = list(s3.requests)
    root = f"/{bucket}/store/zarr.json"
    deletes = [i for i, r in enumerate(log) if r.method in ("DELETE", "POST") and "delete" in (r.query + r.method).lower()]
    root_puts = [i for i, r in enumerate(log) if r.method == "PUT" and r.path == root]
    assert len(root_puts) == 1, "the old root is rewritten once: the switch"
    old_shard_deletes = [i for i in deletes if i < root_puts[0]]
    assert not old_shard_deletes, "nothing is deleted before the new manifest is committed"
    store = zarrtok.open(url, storage_options=s3.storage_options)
    assert store.fingerprint == new.fingerprint
    expected = _build(corpora[1], tokenizer_dir, tmp_path / "expected")
    np.testing.assert_array_equal(_tokens(store), _tokens(expected))
    names = [s.name for info in store.manifest.splits.values() for s in info.shards]
    assert all("-" in n for n in names), names  # generation-specific shard names
    keys = set(_s3_objects(s3, bucket))
    old_shards = {k for k in old_keys if "/shards/" in k and k.count("/") > 4}
    assert not (keys & old_shards), "the old generation is swept after the switch"
    assert not any(k.endswith("zarrtok-lock") for k in keys)
    del old


@pytest.mark.parametrize("point", ["write"])
def test_s3_overwrite_killed_keeps_the_old_store(s3, corpora, tokenizer_dir, point):
    bucket = s3.make_bucket(f"k-{uuid.uuid4().hex[:12]}")
    url = f"s3://{bucket}/store"
    opts = s3.storage_options
    old = _build(corpora[0], tokenizer_dir, url, storage_options=opts)
    old_tokens = _tokens(old)
    proc = _run(KILL_IN_BUILD, env=dict(KILL_AT=point, DATA=corpora[1], TOK=tokenizer_dir, OUT=url,
                                        OPTS=json.dumps(opts)))
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    store = zarrtok.open(url, storage_options=opts)  # the old store, intact
    assert store.fingerprint == old.fingerprint
    np.testing.assert_array_equal(_tokens(store), old_tokens)
    # the next overwrite takes over the dead writer's lock and sweeps its objects
    new = _build(corpora[1], tokenizer_dir, url, storage_options=opts, overwrite=True)
    store = zarrtok.open(url, storage_options=opts)
    assert store.fingerprint == new.fingerprint
    keys = set(s3.list_keys(bucket))
    referenced = {f"store/splits/{split}/shards/{s.name}/" for split, info in store.manifest.splits.items()
                  for s in info.shards}
    shard_keys = {k for k in keys if "/shards/" in k and k.count("/") > 4}
    assert all(any(k.startswith(r) for r in referenced) for k in shard_keys), sorted(shard_keys)[:5]
    assert not any(k.endswith("zarrtok-lock") for k in keys)


def test_s3_copy_overwrite_keeps_old_until_switch(s3, corpora, tokenizer_dir, tmp_path):
    bucket = s3.make_bucket(f"c-{uuid.uuid4().hex[:12]}")
    url = f"s3://{bucket}/store"
    opts = s3.storage_options
    a = _build(corpora[0], tokenizer_dir, tmp_path / "a")
    b = _build(corpora[1], tokenizer_dir, tmp_path / "b")
    zarrtok.copy(a.url, url, dst_storage_options=opts, progress=False)
    s3.reset_log()
    zarrtok.copy(b.url, url, dst_storage_options=opts, overwrite=True, progress=False)
    root = f"/{bucket}/store/zarr.json"
    puts = [r.path for r in s3.requests if r.method == "PUT" and not r.path.endswith("zarrtok-lock")]
    assert puts.count(root) == 1 and puts[-1] == root
    store = zarrtok.open(url, storage_options=opts)
    assert store.fingerprint == b.fingerprint
    np.testing.assert_array_equal(_tokens(store), _tokens(b))

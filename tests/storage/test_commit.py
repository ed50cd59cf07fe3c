"""The commit protocol (zarrtok.storage.commit): atomic renames, conditional commits of concurrent
builds, and sweeping of dead writers' leftovers (issue 11, point 6)."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest

import zarrtok
from zarrtok.errors import StoreExistsError
from zarrtok.storage import commit
from zarrtok.storage.location import as_location

from ..conftest import write_jsonl

KW = dict(chunk_size=500, shard_size=3000, batch_size=20, progress=False)


@pytest.fixture(scope="module")
def corpora(tmp_path_factory, docs):
    d = tmp_path_factory.mktemp("corpora")
    return write_jsonl(docs[:100], d / "a.jsonl"), write_jsonl(docs[100:220], d / "b.jsonl")


def _build(data, tokenizer_dir, out, **kw):
    return zarrtok.build("json", data_files=data, tokenizer_name=tokenizer_dir, output=out, **{**KW, **kw})


# -- renames ---------------------------------------------------------------------------------------------
def test_exchange_and_noreplace(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "x").write_text("a")
    (b / "x").write_text("b")
    if not commit.exchange(str(a), str(b)):
        pytest.skip("renameat2 not available here")
    assert (a / "x").read_text() == "b" and (b / "x").read_text() == "a"
    with pytest.raises(FileExistsError):
        commit.rename_noreplace(str(a), str(b))
    commit.rename_noreplace(str(a), str(tmp_path / "c"))
    assert (tmp_path / "c" / "x").read_text() == "b"
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileExistsError):  # plain rename(2) would replace an empty directory
        commit.rename_noreplace(str(b), str(tmp_path / "empty"))


# -- conditional commit: two concurrent builds with overwrite=False --------------------------------------
def _racer(barrier, data, tokenizer_dir, out, opts, results, where):
    import zarrtok.ingest.builder as builder
    from zarrtok.storage import commit as c

    if where == "commit":
        real = builder.commit_staging

        def commit_staging(*a, **k):  # both builds checked the empty output before either commits
            barrier.wait(60)
            return real(*a, **k)

        builder.commit_staging = commit_staging
    else:
        real_begin = c.begin_root

        def begin_root(*a, **k):
            barrier.wait(60)
            return real_begin(*a, **k)

        c.begin_root = begin_root
    try:
        store = zarrtok.build("json", data_files=data, tokenizer_name=tokenizer_dir, output=out,
                              storage_options=opts, **KW)
        results.put(("ok", store.fingerprint, store.manifest.generation))
    except StoreExistsError as exc:
        results.put(("exists", str(exc), ""))
    except BaseException as exc:  # noqa: BLE001
        results.put(("error", repr(exc), ""))


def _race(datas, tokenizer_dir, out, opts, where):
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_racer, args=(barrier, d, tokenizer_dir, out, opts, results, where)) for d in datas]
    for p in procs:
        p.start()
    got = [results.get(timeout=240) for _ in procs]
    for p in procs:
        p.join(60)
    return got


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_concurrent_builds_with_different_inputs_one_wins(tmp_path, s3, corpora, tokenizer_dir, backend):
    if backend == "local":
        out, opts, where = str(tmp_path / "s"), {}, "commit"
    else:
        out, opts, where = f"s3://{s3.make_bucket(f'r-{uuid.uuid4().hex[:12]}')}/s", s3.storage_options, "begin"
    got = _race(corpora, tokenizer_dir, out, opts, where)
    kinds = sorted(g[0] for g in got)
    assert kinds == ["exists", "ok"], got
    winner = next(g for g in got if g[0] == "ok")
    store = zarrtok.open(out, storage_options=opts)
    assert store.fingerprint == winner[1] and store.manifest.generation == winner[2]
    if backend == "local":
        assert sorted(os.listdir(tmp_path)) == ["s"]


def test_concurrent_identical_builds_reuse_the_winner(tmp_path, corpora, tokenizer_dir):
    out = str(tmp_path / "s")
    got = _race([corpora[0], corpora[0]], tokenizer_dir, out, {}, "commit")
    assert [g[0] for g in got] == ["ok", "ok"], got
    assert got[0][2] == got[1][2]  # the loser returned the winner's store (same generation)
    assert zarrtok.open(out).manifest.generation == got[0][2]
    assert sorted(os.listdir(tmp_path)) == ["s"]


def test_remote_lock_held_by_live_writer_refuses(s3, corpora, tokenizer_dir):
    bucket = s3.make_bucket(f"l-{uuid.uuid4().hex[:12]}")
    url = f"s3://{bucket}/s"
    _build(corpora[0], tokenizer_dir, url, storage_options=s3.storage_options)
    lock = commit.RemoteLock(as_location(url, s3.storage_options)).acquire()  # a live writer (this process)
    try:
        with pytest.raises(StoreExistsError, match="being written by another"):
            _build(corpora[1], tokenizer_dir, url, storage_options=s3.storage_options, overwrite=True)
    finally:
        lock.release()
    assert zarrtok.open(url, storage_options=s3.storage_options).fingerprint  # untouched
    assert not any(k.endswith("zarrtok-lock") for k in s3.list_keys(bucket))


# -- orphans -----------------------------------------------------------------------------------------------
def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _leftover(parent, name, token, *, kinds=("staging",), info=None, age=0.0):
    paths = []
    for kind in kinds:
        p = os.path.join(parent, f".{name}.zarrtok-{kind}-{token}")
        os.makedirs(os.path.join(p, "splits"))
        with open(os.path.join(p, "zarr.json"), "w") as f:
            f.write("{}")
        paths.append(p)
    if info is not None:
        w = os.path.join(parent, f".{name}.zarrtok-writer-{token}.json")
        with open(w, "w") as f:
            json.dump(info, f)
        paths.append(w)
    if age:
        for p in paths:
            os.utime(p, (time.time() - age, time.time() - age))
    return paths


def test_orphans_of_dead_writers_are_swept(tmp_path, corpora, tokenizer_dir):
    parent = str(tmp_path)
    _build(corpora[0], tokenizer_dir, tmp_path / "s")  # an old copy is swept only while a store is at the path
    here = commit.writer_info()
    dead = _leftover(parent, "s", "a" * 12, kinds=("staging",), info={**here, "pid": _dead_pid()})
    dead_old = _leftover(parent, "s", "b" * 12, kinds=("old",), info={**here, "pid": _dead_pid()})
    rebooted = _leftover(parent, "s", "c" * 12, info={**here, "boot_id": "another-boot"})
    live = _leftover(parent, "s", "d" * 12, info=here)  # this process: alive
    remote_young = _leftover(parent, "s", "e" * 12, info={**here, "host": "elsewhere"})
    remote_stale = _leftover(parent, "s", "f" * 12, info={**here, "host": "elsewhere"}, age=commit.STALE_SECONDS + 60)
    unknown_stale = _leftover(parent, "s", "0" * 12, age=commit.STALE_SECONDS + 60)
    other_store = _leftover(parent, "t", "1" * 12, info={**here, "pid": _dead_pid()})
    _build(corpora[0], tokenizer_dir, tmp_path / "s")
    for p in dead + dead_old + rebooted + remote_stale + unknown_stale:
        assert not os.path.lexists(p), p
    for p in live + remote_young + other_store:
        assert os.path.lexists(p), p


def test_killed_build_leftovers_swept_by_next_build(tmp_path, corpora, tokenizer_dir):
    out = tmp_path / "s"
    script = (
        "import os, signal, zarrtok, zarrtok.ingest.builder as b\n"
        "real = b._close_shard\n"
        "def close(*a, **k):\n"
        "    real(*a, **k); os.kill(os.getpid(), signal.SIGKILL)\n"
        "b._close_shard = close\n"
        f"zarrtok.build('json', data_files={corpora[0]!r}, tokenizer_name={tokenizer_dir!r}, output={str(out)!r},"
        " chunk_size=500, shard_size=3000, batch_size=20, progress=False)\n"
    )
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    left = os.listdir(tmp_path)
    assert len([n for n in left if "zarrtok-staging" in n]) == 1 and "s" not in left  # the second swept the first's
    store = _build(corpora[0], tokenizer_dir, out)
    assert sorted(os.listdir(tmp_path)) == ["s"]
    assert np.asarray(store.tokens("train")).size > 0


def test_inspect_classifies(tmp_path):
    loc = as_location(tmp_path / "x")
    assert commit.inspect(loc).kind == commit.EMPTY
    (tmp_path / "x").mkdir()
    assert commit.inspect(loc).kind == commit.EMPTY
    (tmp_path / "x" / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}}))
    with pytest.raises(commit.ForeignDataError, match="without a zarrtok manifest"):
        commit.inspect(loc)
    os.symlink(tmp_path / "x", tmp_path / "link")
    with pytest.raises(commit.ForeignDataError, match="symbolic link"):
        commit.inspect(as_location(tmp_path / "link"))

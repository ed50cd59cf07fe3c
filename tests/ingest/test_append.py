"""Appending documents to a store: old views unchanged, new tokens at the end (ground truth: the
tokenizer on the source texts), history and provenance, duplicates, resume, concurrent appenders,
refusals, the S3 path, the CLI task array."""

from __future__ import annotations

import json
import multiprocessing
import os

import numpy as np
import pytest

import zarrtok
from zarrtok.storage.commit import CommitConflictError

from ..conftest import expected_doc_lengths, expected_tokens, write_jsonl

KW = dict(chunk_size=300, batch_size=40, progress=False, encoder="hf")


@pytest.fixture()
def parts(tmp_path, docs):
    """The corpus cut into a base and two appended parts, each as a JSON Lines file."""
    cuts = [docs[:150], docs[150:260], docs[260:360]]
    return cuts, [write_jsonl(c, tmp_path / f"part{i}.jsonl") for i, c in enumerate(cuts)]


def _base(tmp_path, files, tokenizer_dir, **kw):
    return zarrtok.build("json", data_files=files[0], tokenizer_name=tokenizer_dir, output=str(tmp_path / "store"),
                         **{**KW, **kw})


def _check(store, tokenizer, texts):
    np.testing.assert_array_equal(np.asarray(store.tokens("train")), expected_tokens(tokenizer, texts))
    ends = np.concatenate([[0], np.cumsum(expected_doc_lengths(tokenizer, texts))])
    np.testing.assert_array_equal(np.asarray(store.documents("train")), ends)


def test_append_adds_new_shards_and_keeps_the_old_view(tmp_path, parts, tokenizer_dir, tokenizer):
    cuts, files = parts
    base = _base(tmp_path, files, tokenizer_dir, shard_size=1500)
    old_shards = [(s.name, s.id) for s in base.manifest.splits["train"].shards]
    before = zarrtok.open(base.location.url)
    ds = before.dataset("train", seq_len=16)
    first = [ds[i] for i in range(len(ds))]

    grown = zarrtok.append(base.location.url, "json", data_files=files[1], **KW)
    _check(grown, tokenizer, cuts[0] + cuts[1])
    shards = grown.manifest.splits["train"].shards
    assert [(s.name, s.id) for s in shards[:len(old_shards)]] == old_shards  # nothing rewritten
    assert len(shards) > len(old_shards)
    # the reader opened before keeps its view, consistently (also for chunks it had not mapped yet)
    assert before.manifest.splits["train"].num_tokens == base.manifest.splits["train"].num_tokens
    again = [ds[i] for i in range(len(ds))]
    for (x0, y0), (x1, y1) in zip(first, again):
        assert np.array_equal(x0, x1) and np.array_equal(y0, y1)
    _check(before, tokenizer, cuts[0])
    # manifest: generation, fingerprint, history, provenance of the appended rows
    m = grown.manifest
    assert m.generation != base.manifest.generation and m.fingerprint != base.manifest.fingerprint
    assert [h["action"] for h in m.history] == ["build", "append"]
    entry = m.history[-1]
    assert entry["base_generation"] == base.manifest.generation and entry["store_fingerprint"] == m.fingerprint
    assert m.sources[-1]["path"].endswith("part1.jsonl")
    assert grown.provenance("train", len(cuts[0]))["row"] == 0
    assert grown.provenance("train", len(cuts[0]))["source"]["path"].endswith("part1.jsonl")
    assert zarrtok.open(base.location.url).verify(progress=False).ok


def test_append_twice_then_duplicate_is_a_no_op(tmp_path, parts, tokenizer_dir, tokenizer):
    cuts, files = parts
    base = _base(tmp_path, files, tokenizer_dir)
    s1 = base.append("json", data_files=files[1], **KW)
    s2 = s1.append("json", data_files=files[2], num_workers=2, **KW)
    _check(s2, tokenizer, cuts[0] + cuts[1] + cuts[2])
    same = zarrtok.append(s2, "json", data_files=files[1], **KW)  # already in the store: nothing to do
    assert same.manifest.generation == s2.manifest.generation
    rerun = _base(tmp_path, files, tokenizer_dir)  # the script's build step, rerun: this build + appends
    assert rerun.manifest.generation == s2.manifest.generation
    again = zarrtok.append(s2, "json", data_files=files[0], allow_duplicate=True, **KW)  # the base's own source
    _check(again, tokenizer, cuts[0] + cuts[1] + cuts[2] + cuts[0])
    assert len(again.manifest.history) == 4


def test_append_refuses_what_would_encode_differently(tmp_path, parts, tokenizer_dir, docs):
    _cuts, files = parts
    base = _base(tmp_path, files, tokenizer_dir)
    url = base.location.url
    with pytest.raises(ValueError, match="use_eos_token"):
        zarrtok.append(url, "json", data_files=files[1], use_eos_token=False, **KW)
    with pytest.raises(ValueError, match="chunk_size"):
        zarrtok.append(url, "json", data_files=files[1], **{**KW, "chunk_size": 999})
    with pytest.raises(zarrtok.StoreExistsError, match="nothing to append to"):
        zarrtok.append(str(tmp_path / "nothing"), "json", data_files=files[1], **KW)
    with pytest.raises(ValueError, match="overwrite"):
        zarrtok.build("json", data_files=files[1], output=url, mode="append", overwrite=True, **KW)
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE(unk_token=None))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.train_from_iterator(docs[:50], trainers.BpeTrainer(vocab_size=300, special_tokens=["<|eot|>"]))
    other = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|eot|>")
    with pytest.raises(ValueError, match="different tokenizer"):
        zarrtok.append(url, "json", data_files=files[1], tokenizer=other, **KW)
    assert zarrtok.open(url).manifest.generation == base.manifest.generation


def test_append_to_a_new_split(tmp_path, parts, tokenizer_dir, tokenizer):
    cuts, files = parts
    base = _base(tmp_path, files, tokenizer_dir)
    grown = zarrtok.append(base, "json", data_files={"validation": files[2]}, **KW)
    assert set(grown.splits) == {"train", "validation"}
    np.testing.assert_array_equal(np.asarray(grown.tokens("validation")), expected_tokens(tokenizer, cuts[2]))
    _check(grown, tokenizer, cuts[0])


def test_failed_append_leaves_the_store_as_it_was(tmp_path, parts, tokenizer_dir, monkeypatch):
    _cuts, files = parts
    base = _base(tmp_path, files, tokenizer_dir)
    from zarrtok.ingest import plan as _plan

    calls = {"n": 0}
    real = _plan.run_task

    def flaky(data, index, staging, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("injected task failure")
        return real(data, index, staging, **kw)

    monkeypatch.setattr(_plan, "run_task", flaky)
    with pytest.raises(RuntimeError, match="injected"):
        zarrtok.append(base, "json", data_files=files[1], shard_size=600, **KW)
    store = zarrtok.open(base.location.url)
    assert store.manifest.generation == base.manifest.generation
    on_disk = sorted(os.listdir(os.path.join(base.location.local_path, "splits", "train", "shards")))
    assert on_disk == sorted(["zarr.json"] + [s.name for s in base.manifest.splits["train"].shards])
    assert not [e for e in os.listdir(tmp_path) if "zarrtok-build" in e]


def test_interrupted_append_resumes_without_reencoding(tmp_path, parts, tokenizer_dir, tokenizer, monkeypatch):
    cuts, files = parts
    base = _base(tmp_path, files, tokenizer_dir)
    plan = zarrtok.plan_build("json", data_files=files[1], output=base.location.url, mode="append", shard_size=600,
                              **KW)
    assert plan.data["mode"] == "append" and len(plan.tasks) >= 3
    from zarrtok.ingest.builder import run_plan_task

    done = run_plan_task(base.location.url, 0)  # one task finished, then the driver "died"
    assert zarrtok.open(base.location.url).manifest.generation == base.manifest.generation  # not visible yet
    from zarrtok.ingest import plan as _plan

    ran = []
    real = _plan.run_task
    monkeypatch.setattr(_plan, "run_task", lambda data, index, staging, **kw: ran.append(index) or
                        real(data, index, staging, **kw))
    grown = zarrtok.append(base, "json", data_files=files[1], shard_size=600, **KW)
    assert 0 not in ran and sorted(ran) == list(range(1, len(plan.tasks)))
    assert grown.manifest.splits["train"].shards[1].id == done["id"]
    _check(grown, tokenizer, cuts[0] + cuts[1])


def test_cli_task_array_append(tmp_path, parts, tokenizer_dir, tokenizer, capsys):
    from zarrtok.cli import main

    cuts, files = parts
    base = _base(tmp_path, files, tokenizer_dir)
    url = base.location.url
    assert main(["append", url, "json", "--data-files", files[1], "--chunk-size", "300", "--shard-size", "600",
                 "--batch-size", "40", "--encoder", "hf", "--no-progress", "--plan-only", "--json"]) == 0
    planned = json.loads(capsys.readouterr().out)
    for k in range(planned["tasks"]):
        assert main(["build-task", url, "--task", str(k)]) == 0
    assert main(["commit", url, "--json"]) == 0
    _check(zarrtok.open(url), tokenizer, cuts[0] + cuts[1])
    capsys.readouterr()
    assert main(["info", url]) == 0
    out = capsys.readouterr().out
    assert "history" in out and f"append" in out and f"+{len(cuts[1]):,} docs" in out


def _append_in_process(url, path, barrier):
    barrier.wait(30)
    zarrtok.append(url, "json", data_files=path, **KW)


@pytest.mark.slow
def test_two_concurrent_appenders_both_land(tmp_path, parts, tokenizer_dir, tokenizer):
    cuts, files = parts
    base = _base(tmp_path, files, tokenizer_dir)
    ctx = multiprocessing.get_context("spawn")  # fork after HF tokenizers ran threads can deadlock them
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_append_in_process, args=(base.location.url, files[i], barrier)) for i in (1, 2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    store = zarrtok.open(base.location.url)
    order = [h["source"]["data_files"] for h in store.manifest.history[1:]]
    assert len(order) == 2
    texts = cuts[0] + (cuts[1] + cuts[2] if "part1" in json.dumps(order[0]) else cuts[2] + cuts[1])
    _check(store, tokenizer, texts)
    assert store.verify(progress=False).ok


def test_append_refuses_a_store_replaced_meanwhile(tmp_path, parts, tokenizer_dir, docs):
    _cuts, files = parts
    base = _base(tmp_path, files, tokenizer_dir)
    plan = zarrtok.plan_build("json", data_files=files[1], output=base.location.url, mode="append", **KW)
    from zarrtok.ingest.builder import commit_build, run_plan_task

    for k in range(len(plan.tasks)):
        run_plan_task(base.location.url, k)
    replaced = zarrtok.build("json", data_files=files[2], tokenizer_name=tokenizer_dir,
                             output=base.location.url, overwrite=True, **KW)
    with pytest.raises(CommitConflictError, match="replaced"):
        commit_build(base.location.url)
    assert zarrtok.open(base.location.url).manifest.generation == replaced.manifest.generation
    # its writer dies; the next append sweeps its area (it can never commit now) and lands itself
    from zarrtok.ingest import plan as _plan
    from zarrtok.ingest.appending import WRITER

    dead = {"pid": 4_000_000, "host": __import__("socket").gethostname(), "created": 0}
    _plan.put_object(plan.area, WRITER, json.dumps(dead).encode())
    grown = zarrtok.append(base.location.url, "json", data_files=files[1], **KW)
    assert not os.path.exists(plan.area.local_path)
    assert [h["action"] for h in grown.manifest.history] == ["build", "append"]


@pytest.mark.slow
def test_append_on_s3_concurrently(s3, tmp_path, parts, tokenizer_dir, tokenizer):
    """Two appenders (threads) into one S3 store: both land (the remote lock serialises the commits);
    a reader opened before keeps reading the old view after them."""
    import threading
    import uuid

    cuts, files = parts
    opts = s3.storage_options
    kw = {**KW, "chunk_size": 4096}
    url = f"s3://{s3.make_bucket(f'append-{uuid.uuid4().hex[:10]}')}/store"
    base = zarrtok.build("json", data_files=files[0], tokenizer_name=tokenizer_dir, output=url,
                         storage_options=opts, **kw)
    before = zarrtok.open(url, storage_options=opts)
    errors = []

    def run(path):
        try:
            zarrtok.append(url, "json", data_files=path, storage_options=opts, shard_size=5000, **kw)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(files[i],)) for i in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    _check(before, tokenizer, cuts[0])  # the old view, read after the appends
    again = zarrtok.open(url, storage_options=opts)
    first = json.dumps(again.manifest.history[1]["source"])
    _check(again, tokenizer, cuts[0] + (cuts[1] + cuts[2] if "part1" in first else cuts[2] + cuts[1]))
    assert [h["action"] for h in again.manifest.history] == ["build", "append", "append"]
    assert base.manifest.generation == again.manifest.history[1]["base_generation"]
    assert again.verify(progress=False).ok

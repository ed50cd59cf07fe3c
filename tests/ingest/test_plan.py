"""The build plan: deterministic shard tasks, provenance, the ledger and the task-array flow."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import zarrtok
from zarrtok.ingest import builder, plan as planmod

from ..conftest import expected_tokens
from ._helpers import KW, assert_same, build, corpus


@pytest.fixture(scope="module")
def files(tmp_path_factory, docs):
    return corpus(tmp_path_factory.mktemp("plan-corpus"), docs)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, files, tokenizer_dir):
    return build(files, tokenizer_dir, tmp_path_factory.mktemp("ref") / "s", validation_split=0.1)


def test_plan_is_deterministic_and_pickle_free(tmp_path, files, tokenizer_dir):
    plans = []
    for i, workers in enumerate((1, 3)):
        p = zarrtok.plan_build("json", data_files=files, tokenizer_name=tokenizer_dir, output=str(tmp_path / f"o{i}"),
                               validation_split=0.1, num_workers=workers, **KW)
        plans.append(p)
        stored = json.loads(planmod.get_object(p.area, planmod.PLAN_FILE))  # plain JSON in the staging area
        assert stored["tasks"] == p.tasks and stored["tokenizer_json"].startswith("{")
    a, b = plans
    strip = lambda p: [{k: v for k, v in t.items() if k != "id"} for t in p.tasks]  # noqa: E731
    assert strip(a) == strip(b) and len(a.tasks) > 3  # boundaries depend on the plan only, not on workers
    assert [t["name"] for t in a.tasks if t["split"] == "train"][:2] == ["000000", "000001"]
    for t in a.tasks:  # JSON Lines units start at line starts
        for u in t["units"]:
            if u["start"]:
                with open(u["path"], "rb") as f:
                    f.seek(u["start"] - 1)
                    assert f.read(1) == b"\n"
    # planning again with the same arguments finds the same plan (resume)
    again = zarrtok.plan_build("json", data_files=files, tokenizer_name=tokenizer_dir, output=str(tmp_path / "o0"),
                               validation_split=0.1, **KW)
    assert again.key == a.key and again.tasks == a.tasks


def test_provenance_maps_documents_to_file_lines(reference, files, docs):
    store = reference
    assert [s["path"] for s in store.manifest.sources] == [os.path.abspath(f) for f in files]
    by_file = [docs[:120], docs[120:260]]
    for split in store.splits:
        texts = []
        for shard in store.manifest.splits[split].shards:
            assert sum(run[2] for run in shard.provenance) == shard.num_documents
            for src, first, count in shard.provenance:
                texts += by_file[src][first:first + count]
        # the split's documents, in order, are exactly the provenance rows
        tok = store.tokenizer
        assert len(texts) == store.num_documents(split)
        np.testing.assert_array_equal(np.asarray(store.tokens(split)), expected_tokens(tok, texts))
    assert store.manifest.history[-1]["action"] == "build"


def test_task_array_equals_in_process(tmp_path, files, tokenizer_dir, reference):
    out = tmp_path / "arr"
    p = zarrtok.plan_build("json", data_files=files, tokenizer_name=tokenizer_dir, output=str(out),
                           validation_split=0.1, **KW)
    assert not out.exists()
    for k in reversed(range(len(p.tasks))):  # any order, any process
        rec = builder.run_plan_task(str(out), k)
        assert builder.run_plan_task(str(out), k) == rec  # idempotent
    assert sorted(planmod.ledger_indices(p.area)) == list(range(len(p.tasks)))
    store = builder.commit_build(str(out))
    assert_same(store, reference)
    assert sorted(os.listdir(tmp_path)) == ["arr"]  # staging and build area gone


def test_commit_refuses_unfinished_plan(tmp_path, files, tokenizer_dir):
    out = tmp_path / "u"
    p = zarrtok.plan_build("json", data_files=files, tokenizer_name=tokenizer_dir, output=str(out), **KW)
    builder.run_plan_task(str(out), 0)
    with pytest.raises(RuntimeError, match="not finished"):
        builder.commit_build(p)
    with pytest.raises(zarrtok.ZarrtokError):
        zarrtok.open(out)


def test_datasets_source_provenance(tmp_path, tokenizer, docs):
    import datasets

    ds = datasets.Dataset.from_dict({"text": docs[:200]})
    store = zarrtok.build(ds, tokenizer=tokenizer, output=str(tmp_path / "d"), validation_split=0.2, **KW)
    assert store.manifest.sources == [{"kind": "datasets", "name": "Dataset", "config": None, "split": "train"}]
    for split in store.splits:
        rows = [r for s in store.manifest.splits[split].shards for src, a, n in s.provenance for r in range(a, a + n)]
        np.testing.assert_array_equal(np.asarray(store.tokens(split)),
                                      expected_tokens(tokenizer, [docs[r] for r in rows]))


def test_cli_task_array(tmp_path, files, tokenizer_dir, reference, capsys):
    from zarrtok.cli import main

    out = str(tmp_path / "cli")
    common = ["--tokenizer-name", tokenizer_dir, "--validation-split", "0.1", "--chunk-size", "400", "--shard-size",
              "2500", "--batch-size", "25", "--no-progress", "--encoder", "hf", "--json"]
    assert main(["build", "json", "--data-files", *files, "-o", out, "--plan-only", *common]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["pending"] == summary["tasks"] > 1
    for k in range(summary["tasks"]):
        assert main(["build-task", out, "--task", str(k)]) == 0
    assert main(["build-task", out, "--task", "0"]) == 0  # idempotent
    capsys.readouterr()
    assert main(["commit", out, "--json"]) == 0
    assert_same(zarrtok.open(out), reference)


def test_remote_ledger_is_read_in_one_round(s3):
    """The commit's ledger read on an object store: one listing, then every record in one concurrent
    round (the records come back complete and by index)."""
    import uuid

    from zarrtok.storage.location import Location

    area = Location(f"s3://{s3.make_bucket(f'ledger-{uuid.uuid4().hex[:10]}')}/.store.zarrtok-build-0123456789ab",
                    s3.storage_options)
    records = {k: {"index": k, "name": f"{k:06d}", "pad": "x" * (k % 7)} for k in range(60)}
    for k, rec in records.items():
        planmod.put_object(area, f"{planmod.LEDGER}/{k}.json", json.dumps(rec).encode())
    planmod.put_object(area, f"{planmod.LEDGER}/notes.txt", b"ignored")
    s3.settle()
    s3.reset_log()
    assert planmod.read_ledger(area) == records
    s3.settle()
    gets = [r for r in s3.requests if r.method == "GET" and "/done/" in r.path]
    assert len(gets) == 60  # each record once, nothing re-read


def test_worker_plan_cache_is_bounded():
    """Long-lived workers keep only the newest plans' contexts."""
    saved = dict(planmod._CONTEXT)
    try:
        planmod._CONTEXT.clear()
        for k in range(5):
            planmod._remember(f"key{k}", ({"key": f"key{k}"}, None, None))
        assert list(planmod._CONTEXT) == ["key3", "key4"]
        planmod._remember("key3", ({"key": "key3"}, None, None))  # re-used: becomes the newest
        assert list(planmod._CONTEXT) == ["key4", "key3"]
    finally:
        planmod._CONTEXT.clear()
        planmod._CONTEXT.update(saved)


def test_driver_commit_reads_no_ledger_record(s3, files, tokenizer_dir, reference):
    """A build run by its driver commits from the records its executor returned: no ledger GET."""
    import uuid

    url = f"s3://{s3.make_bucket(f'commit-{uuid.uuid4().hex[:10]}')}/store"
    s3.reset_log()
    store = build(files, tokenizer_dir, url, storage_options=s3.storage_options, chunk_size=4096, validation_split=0.1)
    s3.settle()
    # (each task's own idempotency check is a GET answered 404 before it writes its record)
    assert not [r for r in s3.requests if r.method == "GET" and "/done/" in r.path and r.status == 200]
    assert [r for r in s3.requests if r.method == "PUT" and "/done/" in r.path]
    assert len(store.manifest.splits["train"].shards) > 1
    np.testing.assert_array_equal(np.asarray(store.tokens("train")), np.asarray(reference.tokens("train")))


def _runs_one_by_one(pairs):
    """provenance_runs' rule written pair by pair (the reference)."""
    runs = []
    for src, row in pairs:
        if runs and runs[-1][0] == src and runs[-1][1] + runs[-1][2] == row:
            runs[-1][2] += 1
        else:
            runs.append([src, row, 1])
    return runs


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 12)), max_size=60))
def test_provenance_runs_match_the_pair_by_pair_rule(pairs):
    from zarrtok.ingest.plan import provenance_runs

    table = np.array(pairs, dtype=np.int64).reshape(-1, 2)
    assert provenance_runs(table) == _runs_one_by_one(pairs)

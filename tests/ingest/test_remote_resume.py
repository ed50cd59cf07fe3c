"""A driver SIGKILLed mid-build into an S3 store (the session's moto server on loopback), then rerun
with the same arguments: the rerun must resume the plan in the bucket's build area
(``.<name>.zarrtok-build-<key>/``), run only the tasks without a ledger record, and commit the same
store as an uninterrupted build (the local counterpart is ``test_executors``'s
``test_killed_driver_resumes_without_re_encoding``)."""

from __future__ import annotations

import signal
import subprocess
import sys
import uuid

import pytest

import zarrtok
from zarrtok.ingest import plan as planmod

from ._helpers import KILLED_BUILD, KW, assert_same, build, corpus

pytestmark = pytest.mark.slow



@pytest.fixture(scope="module")
def setup(tmp_path_factory, docs, tokenizer_dir):
    root = tmp_path_factory.mktemp("remote-resume")
    files = corpus(root, docs)
    return root, files, build(files, tokenizer_dir, root / "ref")


def _killed_remote_build(s3, files, tokenizer_dir):
    bucket = s3.make_bucket(f"resume-{uuid.uuid4().hex[:10]}")
    url = f"s3://{bucket}/store"
    code = KILLED_BUILD.format(files=files, tok=tokenizer_dir, out=url, so=s3.storage_options, kw=KW)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    return bucket, url


@pytest.mark.timeout(300)
def test_killed_remote_driver_resumes_without_re_encoding(setup, s3, tokenizer_dir, monkeypatch):
    _, files, ref = setup
    bucket, url = _killed_remote_build(s3, files, tokenizer_dir)
    # what the killed driver left in the bucket: a 'building' root, the finished shards, the build area
    # with the plan and the ledger records of tasks 0-2 (everything a resume needs)
    plan = planmod.find_plan(url, s3.storage_options)
    before = planmod.read_ledger(plan.area)
    assert sorted(before) == [0, 1, 2] and len(plan.tasks) > 3
    keys = s3.list_keys(bucket)
    assert "store/zarr.json" in keys and any(k.startswith(f".store.zarrtok-build-{plan.key}/done/") for k in keys)
    with pytest.raises(zarrtok.ZarrtokError):
        zarrtok.open(url, storage_options=s3.storage_options)  # status 'building': never mistaken for a store
    seen: dict[int, dict] = {}
    real_run = planmod.run_task

    def spy(data, index, staging, **kw):
        rec = real_run(data, index, staging, **kw)
        seen[index] = rec
        return rec

    monkeypatch.setattr(planmod, "run_task", spy)
    store = build(files, tokenizer_dir, url, storage_options=s3.storage_options)  # the same arguments
    assert sorted(seen) == [t["index"] for t in plan.tasks if t["index"] not in before]  # only the rest ran
    assert_same(store, ref)
    shards = store.manifest.splits["train"].shards
    assert [s.id for s in shards[:3]] == [before[k]["id"] for k in range(3)]  # the old shards, not re-encoded
    assert_same(zarrtok.open(url, storage_options=s3.storage_options), ref)
    keys = s3.list_keys(bucket)
    assert not any("zarrtok-build" in k or "zarrtok-lock" in k for k in keys)  # area and lock gone


def test_dask_workers_forget_a_stale_plan_of_the_same_key(monkeypatch):
    """Long-lived Dask workers cache a plan by its key (``plan._CONTEXT``; the key of an object-store
    build is in its area's name); a rebuild with the same key has a new generation, and ``_run_dask``
    first has every worker drop a cached plan of another generation (else the workers ran the old
    plan: shard ids of the previous generation, checked by hand with a LocalCluster and moto)."""
    from zarrtok.ingest import executors

    monkeypatch.setattr(planmod, "_CONTEXT", {"k1": ({"manifest": {"generation": "old"}}, None, None),
                                              "k2": ({"manifest": {"generation": "other"}}, None, None)})
    executors._forget_stale_plan("k1", "old")
    assert "k1" in planmod._CONTEXT  # the same build: kept
    executors._forget_stale_plan("k1", "new")
    assert "k1" not in planmod._CONTEXT and "k2" in planmod._CONTEXT  # only that key's stale plan goes

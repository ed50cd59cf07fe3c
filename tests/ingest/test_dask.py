"""Dask distributed (LocalCluster, 2 worker processes, loopback) writes the same store as in-process,
into a local directory and into the moto S3 bucket."""

from __future__ import annotations

import uuid

import pytest

import zarrtok
from zarrtok.testing.s3server import S3Server

from ._helpers import assert_same, build, corpus

distributed = pytest.importorskip("distributed")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as c, Client(c) as client:
        yield c, client


@pytest.fixture(scope="module")
def s3():
    server = S3Server()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def setup(tmp_path_factory, docs, tokenizer_dir):
    root = tmp_path_factory.mktemp("dask")
    files = corpus(root, docs)
    return root, files, build(files, tokenizer_dir, root / "ref", validation_split=0.1)


def test_dask_local_store_equals_in_process(setup, cluster, tokenizer_dir):
    root, files, ref = setup
    c, client = cluster
    by_address = build(files, tokenizer_dir, root / "by-address", validation_split=0.1, scheduler=c.scheduler_address)
    assert_same(by_address, ref)
    by_client = build(files, tokenizer_dir, root / "by-client", validation_split=0.1, executor=client)
    assert_same(by_client, ref)
    hosts = {h["pid"] for h in []}  # noqa: F841 (records are deleted with the build area)


def test_dask_into_s3_equals_in_process(setup, cluster, s3, tokenizer_dir):
    root, files, ref = setup
    c, client = cluster
    url = f"s3://{s3.make_bucket(f'dask-{uuid.uuid4().hex[:10]}')}/store"
    store = build(files, tokenizer_dir, url, validation_split=0.1, storage_options=s3.storage_options,
                  executor=client)
    assert_same(store, ref)
    again = zarrtok.open(url, storage_options=s3.storage_options)
    assert_same(again, ref)
    keys = s3.list_keys(url.split("/")[2])
    assert not any("zarrtok-build" in k or "zarrtok-lock" in k for k in keys)

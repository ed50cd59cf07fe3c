"""The seed-compatible facade ``FastHfDatasetProvider``: the user's notebook code, split carving,
windows against ground truth (the source documents tokenized directly), store reuse, shared
memory (DataLoader workers, cleanup, no leaked /dev/shm segments) and small pickles."""

from __future__ import annotations

import math
import os
import pickle
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import zarrtok.ingest.fast_encoding
import zarrtok.ingest.tokenization
from zarrtok import FastHfDatasetProvider
from zarrtok.train.dataset import collate_windows

from ..conftest import expected_doc_lengths, expected_tokens

SEQ_LEN = 512
SHM_DIR = "/dev/shm"


# -- helpers ---------------------------------------------------------------------------------------
def _carve_indices(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """The documented carve rule (zarrtok.sources): ceil(fraction * n) documents picked with
    numpy.random.default_rng(seed), both parts in source order. Returns (train, carved)."""
    k = math.ceil(fraction * n)
    perm = np.random.default_rng(seed).permutation(n)
    return sorted(perm[k:].tolist()), sorted(perm[:k].tolist())


def _doc_token_lists(store, split: str) -> list[tuple[int, ...]]:
    """Each stored document's tokens, read through store.documents() offsets."""
    offsets = store.documents(split)
    tokens = np.asarray(store.tokens(split)).astype(np.int64)
    return [tuple(tokens[offsets[d] : offsets[d + 1]].tolist()) for d in range(len(offsets) - 1)]


def _source_doc_tokens(tokenizer, docs: list[str]) -> list[tuple[int, ...]]:
    """Ground truth per source document: tokenizer(doc)["input_ids"] + [eos], () for empty ones."""
    eos = tokenizer.eos_token_id
    return [tuple(tokenizer(d)["input_ids"]) + (eos,) if d else () for d in docs]


def _is_ordered_subsequence(part: list, whole: list) -> bool:
    it = iter(whole)
    return all(any(x == y for y in it) for x in part)


def _truth_windows(stream: np.ndarray, seq_len: int) -> list[np.ndarray]:
    n = (len(stream) - 1) // seq_len
    return [stream[i * seq_len : i * seq_len + seq_len + 1] for i in range(n)]


def _assert_dataset_matches(ds, stream: np.ndarray, seq_len: int) -> None:
    """Every window of ``ds`` equals the ground-truth slice ``stream[i*L : i*L+L+1]``."""
    windows = _truth_windows(stream, seq_len)
    assert len(ds) == len(windows) == (len(stream) - 1) // seq_len
    assert len(ds) > 0
    for i, want in enumerate(windows):
        x, y = ds[i]
        assert x.dtype == torch.int64 and y.dtype == torch.int64
        assert x.shape == (seq_len,) and y.shape == (seq_len,)
        np.testing.assert_array_equal(x.numpy(), want[:-1], err_msg=f"inputs of window {i}")
        np.testing.assert_array_equal(y.numpy(), want[1:], err_msg=f"labels of window {i}")
    # negative indices and out-of-range
    x, y = ds[-1]
    np.testing.assert_array_equal(x.numpy(), windows[-1][:-1])
    with pytest.raises(IndexError):
        ds[len(ds)]


def _segments(prefix: str) -> list[str]:
    return sorted(name for name in os.listdir(SHM_DIR) if name.startswith(prefix))


def _wait_gone(prefix: str, timeout: float = 8.0) -> list[str]:
    """Poll /dev/shm until no segment starts with ``prefix`` (the resource tracker may lag)."""
    deadline = time.monotonic() + timeout
    left = _segments(prefix)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = _segments(prefix)
    return left


# -- the notebook ----------------------------------------------------------------------------------
class Notebook:
    """What the user's notebook produced, plus where it ran."""

    def __init__(self, workdir, provider, train, val, cached):
        self.workdir = workdir
        self.provider = provider
        self.train = train
        self.val = val
        self.cached = cached
        self.store_path = os.path.join(str(workdir), "cache", "docs")


@pytest.fixture(scope="module")
def notebook(tmp_path_factory, jsonl_path, tokenizer_dir) -> Notebook:
    """Runs the user's notebook code verbatim (only the import changed), with cwd = a fresh tmp dir."""
    workdir = tmp_path_factory.mktemp("notebook")
    shutil.copyfile(jsonl_path, workdir / "docs.jsonl")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(workdir)
        # ---- notebook code (import changed to zarrtok) ----
        provider = FastHfDatasetProvider.from_hub(
            "json",
            data_files="docs.jsonl",
            tokenizer_name=tokenizer_dir,
            mapping_column_name=["text"],
            use_shared_memory=False,
            cache_dir="cache/docs",
        )
        train = provider.get_train_dataset(seq_len=512)
        val = provider.get_val_dataset(seq_len=512)
        first_provider = provider
        provider = FastHfDatasetProvider.from_cache("cache/docs")
        # ---------------------------------------------------
    return Notebook(workdir, first_provider, train, val, provider)


@pytest.fixture(scope="module")
def split_truth(docs, tokenizer):
    """Ground-truth documents and token streams of the default carve (validation_split=0.1, seed=42)."""
    train_idx, val_idx = _carve_indices(len(docs), 0.1, 42)
    train_docs = [docs[i] for i in train_idx]
    val_docs = [docs[i] for i in val_idx]
    return {
        "train_docs": train_docs,
        "validation_docs": val_docs,
        "train": expected_tokens(tokenizer, train_docs),
        "validation": expected_tokens(tokenizer, val_docs),
    }


def test_notebook_store_layout(notebook, docs):
    store = notebook.provider.store
    assert os.path.isdir(notebook.store_path)
    assert os.path.isfile(os.path.join(notebook.store_path, "zarr.json"))
    assert store.splits == ["train", "validation"]
    # validation_split defaults to 0.1 (carved from train)
    assert store.num_documents("validation") == math.ceil(0.1 * len(docs))
    assert store.num_documents("train") + store.num_documents("validation") == len(docs)
    # nothing but the store (no staging directories) was left in the cache dir
    assert os.listdir(os.path.join(str(notebook.workdir), "cache")) == ["docs"]


def test_notebook_splits_partition_source_documents(notebook, docs, tokenizer, split_truth):
    """train + validation documents are exactly the source documents, each part in source order."""
    store = notebook.provider.store
    source = _source_doc_tokens(tokenizer, docs)
    train_docs = _doc_token_lists(store, "train")
    val_docs = _doc_token_lists(store, "validation")
    # independent of the carve rule: a partition of the source into two ordered subsequences
    assert sorted(train_docs + val_docs) == sorted(source)
    assert _is_ordered_subsequence(train_docs, source)
    assert _is_ordered_subsequence(val_docs, source)
    assert len(val_docs) > 0 and len(train_docs) > len(val_docs)
    # and exactly the documented carve
    assert train_docs == _source_doc_tokens(tokenizer, split_truth["train_docs"])
    assert val_docs == _source_doc_tokens(tokenizer, split_truth["validation_docs"])
    np.testing.assert_array_equal(np.diff(store.documents("train")), expected_doc_lengths(tokenizer, split_truth["train_docs"]))
    np.testing.assert_array_equal(
        np.diff(store.documents("validation")), expected_doc_lengths(tokenizer, split_truth["validation_docs"])
    )
    # whole streams
    for split in ("train", "validation"):
        np.testing.assert_array_equal(np.asarray(store.tokens(split)).astype(np.int64), split_truth[split])


def test_notebook_windows_equal_ground_truth(notebook, split_truth):
    assert notebook.train.seq_len == SEQ_LEN and notebook.val.seq_len == SEQ_LEN
    _assert_dataset_matches(notebook.train, split_truth["train"], SEQ_LEN)
    _assert_dataset_matches(notebook.val, split_truth["validation"], SEQ_LEN)
    # labels are inputs shifted by one
    x, y = notebook.train[3]
    assert torch.equal(x[1:], y[:-1])


def test_notebook_from_cache_identical(notebook, split_truth, tokenizer):
    cached = notebook.cached
    assert cached.fingerprint == notebook.provider.fingerprint
    assert cached.store.splits == notebook.provider.store.splits
    train = cached.get_train_dataset(seq_len=512)
    val = cached.get_val_dataset(seq_len=512)
    assert len(train) == len(notebook.train) and len(val) == len(notebook.val)
    for a, b in ((train, notebook.train), (val, notebook.val)):
        for i in range(len(a)):
            xa, ya = a[i]
            xb, yb = b[i]
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    _assert_dataset_matches(train, split_truth["train"], SEQ_LEN)
    # from an absolute path too, and with another seq_len
    again = FastHfDatasetProvider.from_cache(notebook.store_path)
    assert again.fingerprint == notebook.provider.fingerprint
    _assert_dataset_matches(again.get_val_dataset(seq_len=100), split_truth["validation"], 100)
    # the stored tokenizer encodes like the source tokenizer
    text = "A naïve café in Zürich 東京 🙂"
    assert cached.tokenizer(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert cached.tokenizer.eos_token_id == tokenizer.eos_token_id


def test_notebook_second_from_hub_reuses_store(notebook, tokenizer_dir, monkeypatch, split_truth):
    def boom(self, texts):
        raise AssertionError("the store was re-encoded although its fingerprint matches")

    monkeypatch.setattr(zarrtok.ingest.tokenization.DocumentEncoder, "encode", boom)
    monkeypatch.setattr(zarrtok.ingest.fast_encoding.TiktokenDocumentEncoder, "encode", boom)
    monkeypatch.chdir(notebook.workdir)
    manifest = os.path.join(notebook.store_path, "zarr.json")
    before = os.stat(manifest).st_mtime_ns
    provider = FastHfDatasetProvider.from_hub(
        "json",
        data_files="docs.jsonl",
        tokenizer_name=tokenizer_dir,
        mapping_column_name=["text"],
        use_shared_memory=False,
        cache_dir="cache/docs",
    )
    assert provider.fingerprint == notebook.provider.fingerprint
    assert os.stat(manifest).st_mtime_ns == before
    _assert_dataset_matches(provider.get_train_dataset(seq_len=512), split_truth["train"], SEQ_LEN)


def test_notebook_missing_test_split_is_clear(notebook):
    for provider in (notebook.provider, notebook.cached):
        with pytest.raises(ValueError, match="'test'") as info:
            provider.get_test_dataset(seq_len=512)
        assert "train" in str(info.value) and "validation" in str(info.value)  # lists the splits it has
        with pytest.raises(ValueError, match="'nope'"):
            provider.get_dataset("nope", seq_len=8)


def test_provider_seq_len_errors(notebook, split_truth):
    with pytest.raises(ValueError, match="seq_len"):
        notebook.cached.get_train_dataset(seq_len=0)
    n = len(split_truth["validation"])
    with pytest.raises(ValueError, match="seq_len"):
        notebook.cached.get_val_dataset(seq_len=n)
    # the largest allowed seq_len gives exactly one window: the whole split
    ds = notebook.cached.get_val_dataset(seq_len=n - 1)
    _assert_dataset_matches(ds, split_truth["validation"], n - 1)


def test_pickled_dataset_survives_chdir(notebook, split_truth, monkeypatch):
    """The notebook uses a relative cache_dir; a dataset pickled after a chdir (e.g. sent to a
    worker) must still read the same store."""
    ds = notebook.train  # created while cwd was the notebook dir
    monkeypatch.chdir(notebook.workdir.parent)
    clone = pickle.loads(pickle.dumps(ds))
    _assert_dataset_matches(clone, split_truth["train"], SEQ_LEN)


# -- validation_split=0.0 --------------------------------------------------------------------------
def test_validation_split_zero_makes_no_validation(tmp_path, jsonl_path, tokenizer_dir, truth, docs):
    provider = FastHfDatasetProvider.from_hub(
        "json", data_files=jsonl_path, tokenizer_name=tokenizer_dir, mapping_column_name=["text"],
        validation_split=0.0, cache_dir=str(tmp_path / "store"), progress=False,
    )
    assert provider.store.splits == ["train"]
    assert provider.store.num_documents("train") == len(docs)
    with pytest.raises(ValueError, match="'validation'"):
        provider.get_val_dataset(seq_len=16)
    _assert_dataset_matches(provider.get_train_dataset(seq_len=SEQ_LEN), truth, SEQ_LEN)
    assert provider.config["validation_split"] == 0.0


# -- shared memory -----------------------------------------------------------------------------------
@pytest.fixture
def shm_provider(notebook):
    provider = FastHfDatasetProvider.from_cache(notebook.store_path, use_shared_memory=True)
    yield provider
    provider.close()


def test_shared_memory_datasets_equal_plain(shm_provider, notebook, split_truth):
    plain = notebook.cached
    for seq_len in (SEQ_LEN, 37):
        for split in ("train", "validation"):
            shared_ds = shm_provider.get_dataset(split, seq_len)
            plain_ds = plain.get_dataset(split, seq_len)
            assert type(shared_ds.tokens).__name__ == "SharedTokens"
            assert len(shared_ds) == len(plain_ds)
            for i in range(len(plain_ds)):
                xa, ya = shared_ds[i]
                xb, yb = plain_ds[i]
                assert torch.equal(xa, xb) and torch.equal(ya, yb)
            _assert_dataset_matches(shared_ds, split_truth[split], seq_len)
            # batched path (__getitems__) agrees too
            batch = shared_ds.__getitems__([0, len(shared_ds) - 1, 1])
            inputs, labels = collate_windows(batch)
            windows = _truth_windows(split_truth[split], seq_len)
            for row, i in enumerate([0, len(shared_ds) - 1, 1]):
                np.testing.assert_array_equal(inputs[row].numpy(), windows[i][:-1])
                np.testing.assert_array_equal(labels[row].numpy(), windows[i][1:])
    # one segment per split, owned by this process, reused across seq_lens
    segments = _segments(f"zarrtok_{os.getpid()}_")
    mine = {shm_provider._shared[s].segment for s in ("train", "validation")}
    assert mine <= set(segments)


@pytest.mark.slow
@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_shared_memory_dataloader_workers(shm_provider, split_truth, context):
    seq_len = 64
    ds = shm_provider.get_train_dataset(seq_len=seq_len)
    segment = ds.tokens.segment
    assert segment.startswith(f"zarrtok_{os.getpid()}_")
    windows = _truth_windows(split_truth["train"], seq_len)
    loader = DataLoader(
        ds, batch_size=16, shuffle=False, num_workers=2, multiprocessing_context=context,
        collate_fn=collate_windows,
    )
    for epoch in range(2 if context == "fork" else 1):  # spawn workers are slow to start (imports)
        got_x, got_y = [], []
        for x, y in loader:
            assert x.dtype == torch.int64 and x.shape[1] == seq_len
            got_x.append(x)
            got_y.append(y)
        x = torch.cat(got_x).numpy()
        y = torch.cat(got_y).numpy()
        assert len(x) == len(windows), f"epoch {epoch}"
        np.testing.assert_array_equal(x, np.stack([w[:-1] for w in windows]))
        np.testing.assert_array_equal(y, np.stack([w[1:] for w in windows]))
        assert os.path.exists(os.path.join(SHM_DIR, segment)), f"segment gone after epoch {epoch}"
    # the parent's dataset still reads after the workers are gone
    np.testing.assert_array_equal(ds[len(ds) - 1][0].numpy(), windows[-1][:-1])


def test_shared_memory_close_unlinks(notebook):
    provider = FastHfDatasetProvider.from_cache(notebook.store_path, use_shared_memory=True)
    train = provider.get_train_dataset(seq_len=128)
    val = provider.get_val_dataset(seq_len=128)
    names = [train.tokens.segment, val.tokens.segment]
    assert len(set(names)) == 2
    for name in names:
        assert name.startswith(f"zarrtok_{os.getpid()}_")
        assert os.path.exists(os.path.join(SHM_DIR, name))
    provider.close()
    for name in names:
        assert not os.path.exists(os.path.join(SHM_DIR, name))
    provider.close()  # idempotent
    # a new dataset after close gets a fresh segment, and the context manager closes it
    with FastHfDatasetProvider.from_cache(notebook.store_path, use_shared_memory=True) as p2:
        seg = p2.get_train_dataset(seq_len=128).tokens.segment
        assert os.path.exists(os.path.join(SHM_DIR, seg))
    assert not os.path.exists(os.path.join(SHM_DIR, seg))


_CHILD = textwrap.dedent(
    """
    import os, sys, time
    from torch.utils.data import DataLoader
    from zarrtok import FastHfDatasetProvider

    def main():
        store, mode, context = sys.argv[1:4]
        provider = FastHfDatasetProvider.from_cache(store, use_shared_memory=True)
        train = provider.get_train_dataset(seq_len=64)
        val = provider.get_val_dataset(seq_len=64)
        n = 0
        for x, y in DataLoader(train, batch_size=32, num_workers=2, multiprocessing_context=context):
            n += len(x)
        assert n == len(train), (n, len(train))
        for seg in (train.tokens.segment, val.tokens.segment):
            assert os.path.exists("/dev/shm/" + seg), seg
        print("READY", os.getpid(), n, flush=True)
        if mode == "exit":
            sys.exit(0)
        if mode == "os_exit":
            os._exit(0)
        if mode == "kill":
            time.sleep(120)

    if __name__ == "__main__":
        main()
    """
)

CHILD_MODES = [("exit", "fork"), ("os_exit", "fork"), ("kill", "fork")]  # spawn workers: see the DataLoader test


@pytest.mark.slow
def test_no_leaked_segments_after_child_exit(notebook, tmp_path):
    """A process that used shared memory and exits without close() (normally, via os._exit, or
    SIGKILLed) leaves no /dev/shm segment behind. The children run concurrently to save time."""
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    procs = {}
    try:
        for mode, context in CHILD_MODES:
            procs[mode, context] = subprocess.Popen(
                [sys.executable, str(script), notebook.store_path, mode, context],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ), cwd=str(tmp_path),
            )
        for (mode, context), proc in procs.items():
            line = proc.stdout.readline()
            if not line.startswith("READY"):
                proc.kill()
                _, err = proc.communicate(timeout=60)
                pytest.fail(f"child ({mode}, {context}) failed: {line!r}\n{err}")
            _, pid, n = line.split()
            assert int(pid) == proc.pid and int(n) > 0
            if mode == "kill":
                # both segments (train, validation) are alive while the child runs
                assert len(_segments(f"zarrtok_{proc.pid}_")) == 2
                os.kill(proc.pid, signal.SIGKILL)
        results = {}
        for key, proc in procs.items():
            _, err = proc.communicate(timeout=60)
            results[key] = (proc.returncode, err)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    leaks = {}
    for (mode, context), proc in procs.items():
        code, err = results[mode, context]
        if mode == "kill":
            assert code == -signal.SIGKILL
        else:
            assert code == 0, f"child ({mode}, {context}) exited {code}\n{err}"
        left = _wait_gone(f"zarrtok_{proc.pid}_")
        if left:
            leaks[mode, context] = (left, err[-2000:])
    assert not leaks, f"leaked shared memory segments: {leaks}"


# -- pickling ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("shared", [False, True])
def test_pickled_dataset_is_small(notebook, shared, split_truth):
    provider = FastHfDatasetProvider.from_cache(notebook.store_path, use_shared_memory=shared)
    try:
        train = provider.get_train_dataset(seq_len=8)
        val = provider.get_val_dataset(seq_len=8)
        big = pickle.dumps(train)
        small = pickle.dumps(val)
        assert train.num_tokens * train.tokens.dtype.itemsize > 50_000  # the split itself is much larger
        assert len(big) < 10_000 and len(small) < 10_000
        assert abs(len(big) - len(small)) < 200  # independent of the split's size
        clone = pickle.loads(big)
        assert len(clone) == len(train)
        windows = _truth_windows(split_truth["train"], 8)
        for i in (0, len(clone) // 2, len(clone) - 1):
            np.testing.assert_array_equal(clone[i][0].numpy(), windows[i][:-1])
            np.testing.assert_array_equal(clone[i][1].numpy(), windows[i][1:])
        del clone
    finally:
        provider.close()


def test_pickled_dataset_small_with_many_chunks_and_shards(tmp_path, jsonl_path, tokenizer_dir, truth):
    provider = FastHfDatasetProvider.from_hub(
        "json", data_files=jsonl_path, tokenizer_name=tokenizer_dir, validation_split=0.0,
        cache_dir=str(tmp_path / "store"), chunk_size=50, shard_size=40_000, progress=False,
    )
    ds = provider.get_train_dataset(seq_len=33)
    data = pickle.dumps(ds)
    assert len(data) < 10_000
    clone = pickle.loads(data)
    _assert_dataset_matches(clone, truth, 33)


def test_from_disk_builds_from_a_saved_dataset(tmp_path, tokenizer_dir, tokenizer, docs):
    import datasets

    from zarrtok import FastHfDatasetProvider

    datasets.Dataset.from_dict({"text": docs}).save_to_disk(str(tmp_path / "saved"))
    provider = FastHfDatasetProvider.from_disk(tmp_path / "saved", tokenizer_name=tokenizer_dir,
                                               validation_split=0.0, cache_dir=tmp_path / "cache")
    assert provider.store.splits == ["train"]
    np.testing.assert_array_equal(np.asarray(provider.store.tokens("train"), dtype=np.int64),
                                  expected_tokens(tokenizer, docs))
    again = FastHfDatasetProvider.from_disk(tmp_path / "saved", tokenizer_name=tokenizer_dir,
                                            validation_split=0.0, cache_dir=tmp_path / "cache")
    assert again.fingerprint == provider.fingerprint

"""Integrity of local reads and ``verify``: corrupted bytes, edited metadata, a swapped tokenizer,
code in a store, bad names in a manifest, ids outside the vocabulary, released maps. Faults are
injected into real files of real stores."""

from __future__ import annotations

import gc
import json
import os
import shutil
import weakref

import datasets
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import zarrtok
from zarrtok.cli import main
from zarrtok.errors import ChecksumError, IncompleteStoreError
from zarrtok.format import crc32c


def _build(docs, tokenizer, out, **kw):
    return zarrtok.build(datasets.Dataset.from_dict({"text": docs}), tokenizer=tokenizer, output=str(out),
                         progress=False, **kw)


def _chunk(path, k=1, split="train", shard="000000", array="tokens"):
    return os.path.join(str(path), "splits", split, "shards", shard, array, "c", str(k))


def _flip(path, offset=6):
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x01]))


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, tokenizer, docs):
    return _build(docs, tokenizer, tmp_path_factory.mktemp("pristine") / "s", chunk_size=500)


@pytest.fixture
def store_copy(pristine, tmp_path):
    dst = tmp_path / "s"
    shutil.copytree(pristine.url, dst)
    return str(dst)


def test_flipped_byte_in_a_local_chunk_is_never_served(store_copy, truth):
    _flip(_chunk(store_copy, 1))
    store = zarrtok.open(store_copy)
    tokens = store.tokens("train")
    np.testing.assert_array_equal(tokens[0:500], truth[:500])  # chunk 0 is intact
    for _ in range(2):  # every time, not just the first
        with pytest.raises(ChecksumError, match=r"shard train/000000.*c/1"):
            tokens[600:610]
    with pytest.raises(ChecksumError):
        store.dataset("train", 100)[6]
    assert not store.verify(progress=False).ok


def test_chunk_overwritten_with_zeros_is_detected(store_copy):
    path = _chunk(store_copy, 2)
    size = os.path.getsize(path)
    with open(path, "wb") as f:
        f.write(bytes(size))
    with pytest.raises(ChecksumError):
        zarrtok.open(store_copy).tokens("train")[1000:1100]


def test_verify_opt_out_reads_unchecked(store_copy, truth):
    _flip(_chunk(store_copy, 1))
    tokens = zarrtok.open(store_copy, reader_options={"verify": False}).tokens("train")
    assert not np.array_equal(tokens[500:1000], truth[500:1000])  # explicit opt-out: what is on disk


def test_verify_clean_store(pristine, capsys):
    report = pristine.verify(progress=False)
    assert report.ok, report.problems
    assert report.chunks_checked >= pristine.tokens("train").num_chunks
    assert main(["verify", pristine.url, "--no-progress"]) == 0
    assert "OK" in capsys.readouterr().out


def test_verify_names_every_bad_object(store_copy, capsys):
    _flip(_chunk(store_copy, 1))
    _flip(_chunk(store_copy, 3))
    os.remove(_chunk(store_copy, 4))
    report = zarrtok.open(store_copy).verify(progress=False)
    text = "\n".join(report.problems)
    assert "tokens/c/1: checksum mismatch" in text and "tokens/c/3: checksum mismatch" in text
    assert "tokens/c/4: missing" in text
    assert main(["verify", store_copy, "--no-progress"]) == 1
    assert "BAD" in capsys.readouterr().out


def test_edited_chunk_shape_is_refused(store_copy):
    meta_path = os.path.join(store_copy, "splits/train/shards/000000/tokens/zarr.json")
    meta = json.load(open(meta_path))
    meta["chunk_grid"]["configuration"]["chunk_shape"] = [250]
    json.dump(meta, open(meta_path, "w"))
    with pytest.raises(IncompleteStoreError, match="disagrees with the manifest"):
        zarrtok.open(store_copy).tokens("train")
    assert any("disagrees" in p for p in zarrtok.open(store_copy).verify(progress=False).problems)


def test_ids_outside_the_vocabulary_are_reported(store_copy, tokenizer):
    path = _chunk(store_copy, 0)
    raw = bytearray(open(path, "rb").read())
    data = np.frombuffer(bytes(raw[:-4]), dtype=np.uint16).copy()
    data[3] = 60000  # a valid uint16, far outside the 1024-token vocabulary; CRC recomputed
    body = data.tobytes()
    open(path, "wb").write(body + crc32c(body).to_bytes(4, "little"))
    report = zarrtok.open(store_copy).verify(progress=False)
    assert report.max_token_id == 60000
    assert any("outside the tokenizer's vocabulary" in p for p in report.problems)


def _rewrite_tokenizer_file(store_path, name, data: bytes):
    import zarr

    group = zarr.open_group(os.path.join(store_path, "tokenizer"), mode="a")
    if name in group:
        del group[name]
    arr = group.create_array(name, shape=(len(data),), chunks=(len(data),), dtype="uint8")
    arr[:] = np.frombuffer(data, dtype=np.uint8)


def test_swapped_tokenizer_is_refused(store_copy, tmp_path):
    from zarrtok.testing.corpus import generate_documents, train_tokenizer

    other = train_tokenizer(generate_documents(200, seed=7), vocab_size=600, directory=str(tmp_path / "other"))
    _rewrite_tokenizer_file(store_copy, "tokenizer.json", other.backend_tokenizer.to_str().encode())
    store = zarrtok.open(store_copy)
    with pytest.raises(IncompleteStoreError, match="tokenizer was replaced"):
        store.tokenizer
    assert any("tokenizer" in p for p in store.verify(progress=False).problems)


def test_no_code_from_a_store(store_copy, tmp_path):
    marker = tmp_path / "ran"
    config = json.loads(bytes(np.asarray(zarrtok.open(store_copy).group["tokenizer/tokenizer_config.json"][:])))
    config["auto_map"] = {"AutoTokenizer": ["evil.EvilTokenizer", None]}
    config["tokenizer_class"] = "EvilTokenizer"
    _rewrite_tokenizer_file(store_copy, "tokenizer_config.json", json.dumps(config).encode())
    tok = zarrtok.open(store_copy).tokenizer  # loads without asking, without running anything
    assert tok.encode("hello world") and not marker.exists()
    evil = f"open({str(marker)!r}, 'w').write('x')\n".encode()
    _rewrite_tokenizer_file(store_copy, "evil.py", evil)
    with pytest.raises(IncompleteStoreError, match="unexpected tokenizer file 'evil.py'"):
        zarrtok.open(store_copy).tokenizer
    assert not marker.exists()


@pytest.mark.parametrize("name", ["../other", "a/b", "..", ".hidden"])
def test_manifest_names_are_validated_on_read(store_copy, name):
    meta_path = os.path.join(store_copy, "zarr.json")
    meta = json.load(open(meta_path))
    meta["attributes"]["zarrtok"]["splits"]["train"]["shards"][0]["name"] = name
    json.dump(meta, open(meta_path, "w"))
    with pytest.raises(IncompleteStoreError, match="malformed"):
        zarrtok.open(store_copy)


def test_missing_chunk_of_a_zarr_fallback_store_is_an_error(tmp_path, tokenizer, docs):
    import zarr

    store = _build(docs, tokenizer, tmp_path / "z", chunk_size=1000)
    group = zarr.open_group(os.path.join(store.url, "splits/train/shards/000000"), mode="a")
    data = group["tokens"][:]
    del group["tokens"]
    arr = group.create_array("tokens", shape=data.shape, chunks=(1000,), dtype=data.dtype,
                             compressors=[zarr.codecs.ZstdCodec()])
    arr[:] = data
    os.remove(_chunk(store.url, 2))
    tokens = zarrtok.open(store.url).tokens("train")
    tokens[0:100]
    with pytest.raises(IncompleteStoreError, match="missing"):
        tokens[2100:2200]  # zarr alone would return fill values (zeros) here


def test_dropping_a_store_releases_its_maps(pristine):
    store = zarrtok.open(pristine.url)
    tokens = store.tokens("train")
    for a in range(0, len(tokens) - 10, 500):
        tokens[a : a + 5]
    reader = weakref.ref(tokens.readers[0])
    del store, tokens
    gc.collect()
    assert reader() is None  # the process-wide map budget holds no strong reference


def test_cli_errors_are_one_line_with_exit_2(tmp_path, capsys):
    (tmp_path / "zarr.json").write_text("{not json")
    assert main(["info", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("zarrtok: error:") and "not valid JSON" in err[0]
    assert main(["sample", str(tmp_path / "nothing"), "--seq-len", "8"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chunk=st.integers(50, 3000), flips=st.lists(st.integers(0, 10**9), min_size=1, max_size=4),
       mode=st.sampled_from(["local", "memory-cache"]))
def test_no_corrupted_token_is_ever_returned(tmp_path_factory, tokenizer, docs, truth, chunk, flips, mode):
    """Random stores, chunk sizes and corruptions: every read returns ground truth or raises."""
    import uuid

    root = tmp_path_factory.mktemp("prop")
    store = _build(docs[:150], tokenizer, root / "s", chunk_size=chunk)
    n = store.num_tokens("train")
    files = sorted(p for p in (os.path.join(r, f) for r, _, fs in os.walk(os.path.join(store.url, "splits/train"))
                               for f in fs) if "/tokens/c/" in p)
    for flip in flips:
        path = files[flip % len(files)]
        _flip(path, (flip // len(files)) % (os.path.getsize(path) - 4))
    url = store.url
    options = {}
    if mode == "memory-cache":
        url = f"memory://prop-{uuid.uuid4().hex[:8]}/s"
        import fsspec

        fs = fsspec.filesystem("memory")
        for r, _, fs_files in os.walk(store.url):
            for f in fs_files:
                p = os.path.join(r, f)
                fs.pipe_file(url[len("memory://"):] + p[len(store.url):], open(p, "rb").read())
        options = {"mode": "cache", "readahead": 0, "cache_bytes": (8 << 20) + chunk}
    tokens = zarrtok.open(url, reader_options=options).tokens("train")
    expect = truth[:n]
    for a in range(0, n, max(1, n // 17)):
        b = min(n, a + 2 * chunk)
        try:
            got = np.asarray(tokens[a:b], dtype=np.int64)
        except ChecksumError:
            continue
        np.testing.assert_array_equal(got, expect[a:b])


def test_a_dataset_open_during_a_rebuild_never_mixes_generations(tmp_path, tokenizer, docs, truth):
    from zarrtok.errors import StoreChangedError
    from zarrtok.testing.corpus import generate_documents

    out = tmp_path / "s"
    _build(docs, tokenizer, out, chunk_size=500)
    ds = zarrtok.open(str(out)).dataset("train", 100)
    np.testing.assert_array_equal(ds[0][0].numpy(), truth[:100])  # chunk 0 mapped
    other = generate_documents(400, seed=77)
    _build(other, tokenizer, out, chunk_size=500, overwrite=True)  # another corpus at the same path
    np.testing.assert_array_equal(ds[1][0].numpy(), truth[100:200])  # still the old, mapped chunk
    with pytest.raises(StoreChangedError, match="replaced since it was opened"):
        ds[60]  # chunk 12 was never mapped: it would come from the new build
    fresh = zarrtok.open(str(out)).dataset("train", 100)
    assert not np.array_equal(fresh[60][0].numpy(), truth[6000:6100])  # the new build, opened anew


def test_a_rewritten_manifest_that_keeps_the_shard_is_not_a_change(store_copy, truth):
    ds = zarrtok.open(store_copy).dataset("train", 100)
    ds[0]
    meta_path = os.path.join(store_copy, "zarr.json")
    meta = json.load(open(meta_path))
    meta["attributes"]["zarrtok"]["history"] = [{"event": "touched"}]  # e.g. an append's manifest rewrite
    json.dump(meta, open(meta_path, "w"))
    np.testing.assert_array_equal(ds[60][0].numpy(), truth[6000:6100])


def test_symlinks_out_of_the_store_are_not_followed(store_copy, pristine, tmp_path):
    other = tmp_path / "elsewhere"
    shutil.copytree(pristine.url, other)
    chunk = _chunk(store_copy, 2)
    os.remove(chunk)
    os.symlink(_chunk(other, 2), chunk)  # a chunk file that points into another directory
    tokens = zarrtok.open(store_copy).tokens("train")
    tokens[0:10]
    with pytest.raises(IncompleteStoreError, match="symlink"):
        tokens[1000:1010]
    shard_dir = os.path.join(store_copy, "splits/train/shards/000000/tokens")
    shutil.rmtree(shard_dir)
    os.symlink(os.path.join(str(other), "splits/train/shards/000000/tokens"), shard_dir)  # a whole array
    with pytest.raises(IncompleteStoreError, match="outside the store"):
        zarrtok.open(store_copy).tokens("train")

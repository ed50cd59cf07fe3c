"""Issue 12, point 6: the details of Archai's provider API that its own tests and trainer scripts use."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import expected_tokens
from zarrtok.compat.archai import FastDataCollatorForLanguageModeling, FastHfDatasetProvider


@pytest.fixture(scope="module")
def provider(tmp_path_factory, jsonl_path, tokenizer_dir):
    out = tmp_path_factory.mktemp("facade") / "cache"
    return FastHfDatasetProvider.from_hub("json", data_files=jsonl_path, tokenizer_name=tokenizer_dir,
                                          validation_split=0.0, cache_dir=str(out), progress=False)


def test_dataset_context_manager_and_clear_error_after_close(provider):
    with provider.get_train_dataset(seq_len=64) as ds:
        x, y = ds[0]
        assert not ds.closed
    assert ds.closed
    with pytest.raises(ValueError, match="closed"):
        ds[0]
    with pytest.raises(ValueError, match="closed"):
        ds.__getitems__([0, 1])


def test_archai_dataset_attributes(provider, truth):
    ds = provider.get_train_dataset(seq_len=100)
    assert len(ds.input_ids) == truth.size
    assert ds.n_sequences == len(ds) == (truth.size - 1) // 100
    assert ds.n_input_ids == ds.n_sequences * 100 + 1


def test_missing_test_split_hint_is_about_test(provider):
    with pytest.raises(ValueError, match="'test'") as info:
        provider.get_test_dataset(seq_len=8)
    assert "test_split" in str(info.value) and "validation_split" not in str(info.value)


def test_dataset_used_after_provider_close_raises_a_clear_error(tmp_path, provider):
    for shm in (False, True):
        p = FastHfDatasetProvider.from_cache(provider.cache_dir, use_shared_memory=shm)
        ds = p.get_train_dataset(seq_len=32)
        ds[0]
        p.close()
        with pytest.raises(ValueError, match="FastHfDatasetProvider that was closed"):
            ds[0]
        assert p.get_train_dataset(seq_len=32)[0][0].numel() == 32  # a closed provider hands out new ones
        p.close()


def test_collator_exported_from_the_facade_module(provider):
    tok = provider.tokenizer
    ds = provider.get_train_dataset(seq_len=16)
    items = [ds[i] for i in range(3)]
    batch = FastDataCollatorForLanguageModeling(tokenizer=tok, mlm=False)(items)
    inputs = torch.stack([x for x, _ in items])
    assert torch.equal(batch["input_ids"], inputs)
    # HF-aligned (the model shifts): the labels are the inputs (pad/EOS ids hidden, as Archai's collator does)
    want = inputs.clone()
    if tok.pad_token_id is not None:
        want[want == tok.pad_token_id] = -100
    assert torch.equal(batch["labels"], want)
    shifted = FastDataCollatorForLanguageModeling(tokenizer=tok, mlm=False, use_shifted_labels=True)(items)
    assert torch.equal(shifted["labels"], torch.stack([y for _, y in items]))


def _shout(examples, suffix="!"):
    return {"text": [t.upper() + suffix for t in examples["text"]]}


def test_from_hub_mapping_fn_and_from_disk_dataset_file_path(tmp_path, jsonl_path, tokenizer_dir, tokenizer, docs):
    import datasets

    p = FastHfDatasetProvider.from_hub("json", data_files=jsonl_path, tokenizer_name=tokenizer_dir,
                                       mapping_fn=_shout, mapping_fn_kwargs={"suffix": "?"}, validation_split=0.0,
                                       cache_dir=str(tmp_path / "mapped"), progress=False)
    want = expected_tokens(tokenizer, [d.upper() + "?" for d in docs])
    np.testing.assert_array_equal(np.asarray(p.store.tokens("train"), dtype=np.int64), want)
    datasets.Dataset.from_dict({"text": docs[:40]}).save_to_disk(str(tmp_path / "saved"))
    q = FastHfDatasetProvider.from_disk(dataset_file_path=str(tmp_path / "saved"), tokenizer_name=tokenizer_dir,
                                        validation_split=0.0, cache_dir=str(tmp_path / "disk"), progress=False)
    np.testing.assert_array_equal(np.asarray(q.store.tokens("train"), dtype=np.int64),
                                  expected_tokens(tokenizer, docs[:40]))
    with pytest.raises(ValueError, match="input_ids"):
        FastHfDatasetProvider.from_hub("json", data_files=jsonl_path, tokenizer_name=tokenizer_dir,
                                       mapping_fn=lambda ex: {"input_ids": [[1] for _ in ex["text"]]},
                                       mapping_fn_kwargs={}, validation_split=0.0,
                                       cache_dir=str(tmp_path / "ids"), progress=False)


def test_split_file_equivalents(provider, tmp_path, jsonl_path, tokenizer_dir):
    """Archai's train_file/validation_file/test_file: the split's location in the store, None when absent."""
    import os

    import zarrtok

    train = provider.train_file
    assert train == os.path.join(provider.cache_dir, "splits", "train") and os.path.isdir(train)
    assert provider.validation_file is None and provider.test_file is None  # validation_split=0.0, no test
    assert provider.split_location("nope") is None
    store = zarrtok.open(provider.cache_dir)
    assert os.path.isfile(os.path.join(train, "zarr.json")) and len(store.tokens("train")) == \
        len(provider.get_train_dataset(seq_len=8).input_ids)  # the location holds the split the datasets read

    carved = FastHfDatasetProvider.from_hub("json", data_files=jsonl_path, tokenizer_name=tokenizer_dir,
                                            validation_split=0.1, test_split=0.1, cache_dir=str(tmp_path / "c"),
                                            progress=False)
    files = [carved.train_file, carved.validation_file, carved.test_file]
    assert len(set(files)) == 3 and all(os.path.isdir(f) for f in files)
    assert [os.path.basename(f) for f in files] == ["train", "validation", "test"]


def test_split_file_equivalents_for_a_url_store(tmp_path, provider):
    """On object storage the equivalents are URLs under the store's URL."""
    import fsspec

    src = provider.cache_dir
    fs = fsspec.filesystem("memory")
    fs.put(src, "/archai-facade-url", recursive=True)
    remote = FastHfDatasetProvider.from_cache("memory://archai-facade-url")
    try:
        assert remote.train_file == "memory://archai-facade-url/splits/train"
        assert remote.validation_file is None
        assert remote.get_train_dataset(seq_len=8)[0][0].shape == (8,)
    finally:
        fs.rm("/archai-facade-url", recursive=True)

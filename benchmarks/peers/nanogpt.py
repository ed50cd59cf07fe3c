"""nanoGPT's layout and recipe: one flat raw ``uint16`` token file per split, read with ``np.memmap``.

* :class:`MemmapWindows`: windows over one flat raw file, item ``i`` exactly Archai's
  ``FastHfDataset`` (the reference of ``random_access`` and ``local_read``).
* :func:`prepare`: nanoGPT's ``data/openwebtext/prepare.py`` with a Hugging Face tokenizer in place
  of tiktoken's GPT-2 (``build_peers``); :func:`read_splits` maps its output.

No peer library is needed: this imports only numpy / torch (and ``datasets`` / ``transformers`` inside
:func:`prepare`).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

TEST_SIZE, SEED, BATCHES = 0.0005, 2357, 1024  # prepare.py's test_size, seed and total_batches


class MemmapWindows:
    """The reference: windows over one flat raw token file opened with ``np.memmap`` (Archai's FastHfDataset).

    ``plain=True`` slices a plain ``ndarray`` view of the same map instead of the ``np.memmap``
    subclass, whose Python-level ``__getitem__`` / ``__array_finalize__`` cost a few µs per window:
    an informational lower bound for any reader of a flat memory map.
    """

    def __init__(self, path: str, dtype: np.dtype, seq_len: int, *, plain: bool = False):
        self.input_ids = np.memmap(path, dtype=dtype, mode="r")
        if plain:
            self.input_ids = self.input_ids.view(np.ndarray)
        self.seq_len = seq_len
        self._len = (len(self.input_ids) - 1) // seq_len

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, idx: int):
        import torch

        start = idx * self.seq_len
        x = torch.from_numpy(self.input_ids[start : start + self.seq_len + 1].astype(np.int64))
        return x[:-1], x[1:]


def prepare(data: str, tok_dir: str, out: str, workers: int) -> dict[str, Any]:
    """nanoGPT's data/openwebtext/prepare.py, with our HF tokenizer in place of tiktoken's GPT-2."""
    from datasets import load_dataset
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tok_dir)
    eot = tok.eos_token_id
    num_proc = workers if workers > 1 else None
    dataset = load_dataset("json", data_files=data, num_proc=num_proc)
    split_dataset = dataset["train"].train_test_split(test_size=TEST_SIZE, seed=SEED, shuffle=True)
    split_dataset["val"] = split_dataset.pop("test")

    def process(example: dict[str, Any]) -> dict[str, Any]:
        ids = tok.encode(example["text"], add_special_tokens=False)  # encode_ordinary ignores special tokens
        ids.append(eot)
        return {"ids": ids, "len": len(ids)}

    tokenized = split_dataset.map(process, remove_columns=["text"], desc="tokenizing the splits", num_proc=num_proc)
    os.makedirs(out, exist_ok=True)
    for split, dset in tokenized.items():
        arr_len = np.sum(dset["len"], dtype=np.uint64)
        arr = np.memmap(os.path.join(out, f"{split}.bin"), dtype=np.uint16, mode="w+", shape=(arr_len,))
        total_batches = min(BATCHES, len(dset))
        idx = 0
        for batch_idx in range(total_batches):
            batch = dset.shard(num_shards=total_batches, index=batch_idx, contiguous=True).with_format("numpy")
            arr_batch = np.concatenate(batch["ids"])
            arr[idx: idx + len(arr_batch)] = arr_batch
            idx += len(arr_batch)
        arr.flush()
    return {"batches": BATCHES}


def read_splits(out: str) -> dict[str, np.ndarray]:
    """The tokens of :func:`prepare`'s output, one map per split."""
    return {split: np.memmap(os.path.join(out, f"{split}.bin"), dtype=np.uint16, mode="r")
            for split in ("train", "val")}

"""zarrtok: tokenize text datasets once into chunked Zarr token stores; read windows of any seq_len.

Public API::

    store = zarrtok.build("json", data_files="docs.jsonl", tokenizer_name="path/to/tok", output="store")
    store = zarrtok.open("store")                       # or "s3://bucket/store", storage_options=...
    ds = store.dataset("train", seq_len=2048)          # torch Dataset of (inputs, labels)
    loader = store.dataloader("train", 2048, batch_size=16, num_workers=2)   # shuffled, resumable dict batches

``import zarrtok`` is light: names are imported on first use (PEP 562), so opening a store and
reading tokens never imports torch, datasets or transformers. Packages, in import order (each only
imports those before it): ``format`` ← ``storage`` ← ``read`` ← ``ingest``; ``read`` ← ``train``
(the only one that imports torch); ``compat``, ``cli`` and ``demo`` on top; ``testing`` for tests,
benchmarks and the demo.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

from .errors import (  # noqa: E402  (light: no dependencies)
    ChecksumError,
    FormatVersionError,
    IncompleteStoreError,
    ObjectIOError,
    StoreExistsError,
    StoreNotFoundError,
    ZarrtokError,
)

#: public name -> module that defines it (imported on first attribute access)
_LAZY = {
    "build": "zarrtok.ingest.builder",
    "plan_build": "zarrtok.ingest.builder",
    "append": "zarrtok.ingest.appending",
    "open": "zarrtok.read.store",
    "copy": "zarrtok.read.store",
    "TokenStore": "zarrtok.read.store",
    "TokenArray": "zarrtok.read.token_array",
    "TokenDataset": "zarrtok.train.dataset",
    "WindowBatch": "zarrtok.train.dataset",
    "collate_windows": "zarrtok.train.dataset",
    "TokenLoader": "zarrtok.train.loader",
    "collate_dict": "zarrtok.train.loader",
    "MixtureDataset": "zarrtok.train.mixture",
    "ChunkShuffleSampler": "zarrtok.train.sampler",
    "FastHfDatasetProvider": "zarrtok.compat.archai",
}

__all__ = [
    "build", "append", "open", "copy", "ChunkShuffleSampler", "TokenStore", "TokenArray", "TokenDataset", "WindowBatch",
    "collate_windows", "collate_dict", "TokenLoader", "MixtureDataset", "FastHfDatasetProvider", "ZarrtokError",
    "StoreNotFoundError", "StoreExistsError", "IncompleteStoreError", "FormatVersionError", "ChecksumError",
    "ObjectIOError", "__version__",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'zarrtok' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

"""zarrtok: tokenize text datasets once into chunked Zarr token stores; read windows of any seq_len.

Public API::

    store = zarrtok.build("json", data_files="docs.jsonl", tokenizer_name="path/to/tok", output="store")
    store = zarrtok.open("store")                       # or "s3://bucket/store", storage_options=...
    ds = store.dataset("train", seq_len=2048)          # torch Dataset of (inputs, labels)
    loader = store.dataloader("train", 2048, batch_size=16, num_workers=2)   # shuffled, resumable dict batches
"""

__version__ = "0.1.0"

from .build import build  # noqa: E402
from .chunks import TokenArray  # noqa: E402
from .copy import copy  # noqa: E402,A004
from .dataset import TokenDataset, WindowBatch, collate_windows  # noqa: E402
from .errors import (  # noqa: E402
    FormatVersionError,
    IncompleteStoreError,
    StoreExistsError,
    StoreNotFoundError,
    ZarrtokError,
)
from .loader import TokenLoader, collate_dict  # noqa: E402
from .mixture import MixtureDataset  # noqa: E402
from .provider import FastHfDatasetProvider  # noqa: E402
from .sampler import ChunkShuffleSampler  # noqa: E402
from .store import TokenStore, open  # noqa: E402,A004

__all__ = [
    "build",
    "open",
    "copy",
    "ChunkShuffleSampler",
    "TokenStore",
    "TokenArray",
    "TokenDataset",
    "WindowBatch",
    "collate_windows",
    "collate_dict",
    "TokenLoader",
    "MixtureDataset",
    "FastHfDatasetProvider",
    "ZarrtokError",
    "StoreNotFoundError",
    "StoreExistsError",
    "IncompleteStoreError",
    "FormatVersionError",
    "__version__",
]

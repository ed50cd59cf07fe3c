"""``FastHfDatasetProvider``: the seed-compatible facade (Archai's workflow, zarrtok's store).

Differences from Archai, on purpose: the tokenizer is stored as ``tokenizer.json`` (no pickle);
``from_hub`` reuses a store whose fingerprint matches instead of re-encoding; the store is written
atomically; ``validation_split=0.0`` means no validation split (Archai silently used 10%); ``test``
is never carved from validation; any fsspec URL works as ``cache_dir``.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import datasets

from ..ingest.builder import build
from ..read.shm import SharedTokens
from ..read.store import TokenStore
from ..read.store import open as open_store
from ..train.dataset import TokenDataset


class FastHfDatasetProvider:
    """Builds (or reuses) a token store and hands out train/validation/test datasets for any seq_len."""

    def __init__(self, store: TokenStore, *, use_shared_memory: bool = False):
        self.store = store
        self.use_shared_memory = bool(use_shared_memory)
        self._shared: dict[str, SharedTokens] = {}

    # -- constructors ---------------------------------------------------------------------------
    @classmethod
    def from_hub(
        cls,
        dataset_name: str,
        dataset_config_name: str | None = None,
        data_dir: str | None = None,
        data_files: Any = None,
        tokenizer: Any = None,
        tokenizer_name: str | None = None,
        mapping_column_name: str | Sequence[str] | None = None,
        validation_split: float = 0.1,
        seed: int = 42,
        num_workers: int = 1,
        use_eos_token: bool = True,
        use_shared_memory: bool = False,
        cache_dir: str | os.PathLike = "cache",
        *,
        storage_options: dict[str, Any] | None = None,
        **build_kwargs: Any,
    ) -> "FastHfDatasetProvider":
        """Load with ``datasets.load_dataset``, tokenize into the store at ``cache_dir`` (reused when
        its fingerprint matches, rebuilt when it differs) and return a provider over it.

        ``validation_split`` (default 0.1) carves a validation split from train only when the dataset
        has none; 0.0 makes none. Extra keyword arguments go to :func:`zarrtok.build`.
        """
        build_kwargs.setdefault("overwrite", "changed")
        store = build(
            dataset_name,
            output=cache_dir,
            dataset_config_name=dataset_config_name,
            data_dir=data_dir,
            data_files=data_files,
            tokenizer=tokenizer,
            tokenizer_name=tokenizer_name,
            mapping_column_name=mapping_column_name,
            validation_split=validation_split,
            seed=seed,
            num_workers=num_workers,
            use_eos_token=use_eos_token,
            storage_options=storage_options,
            **build_kwargs,
        )
        return cls(store, use_shared_memory=use_shared_memory)

    @classmethod
    def from_disk(
        cls,
        dataset_path: str | os.PathLike,
        tokenizer: Any = None,
        tokenizer_name: str | None = None,
        mapping_column_name: str | Sequence[str] | None = None,
        validation_split: float = 0.1,
        seed: int = 42,
        num_workers: int = 1,
        use_eos_token: bool = True,
        use_shared_memory: bool = False,
        cache_dir: str | os.PathLike = "cache",
        *,
        storage_options: dict[str, Any] | None = None,
        **build_kwargs: Any,
    ) -> "FastHfDatasetProvider":
        """Like :meth:`from_hub` for a dataset saved with ``Dataset.save_to_disk``."""
        return cls.from_hub(
            datasets.load_from_disk(os.fspath(dataset_path)),
            tokenizer=tokenizer,
            tokenizer_name=tokenizer_name,
            mapping_column_name=mapping_column_name,
            validation_split=validation_split,
            seed=seed,
            num_workers=num_workers,
            use_eos_token=use_eos_token,
            use_shared_memory=use_shared_memory,
            cache_dir=cache_dir,
            storage_options=storage_options,
            **build_kwargs,
        )

    @classmethod
    def from_cache(
        cls,
        cache_dir: str | os.PathLike,
        *,
        use_shared_memory: bool = False,
        storage_options: dict[str, Any] | None = None,
    ) -> "FastHfDatasetProvider":
        """Open an existing store (no dataset, no tokenizer code, nothing re-encoded)."""
        return cls(open_store(cache_dir, storage_options=storage_options), use_shared_memory=use_shared_memory)

    # -- metadata -------------------------------------------------------------------------------
    @property
    def tokenizer(self):
        """The tokenizer restored from the store's ``tokenizer.json``."""
        return self.store.tokenizer

    @property
    def config(self) -> dict[str, Any]:
        return self.store.config

    @property
    def fingerprint(self) -> str:
        return self.store.fingerprint

    @property
    def cache_dir(self) -> str:
        return self.store.url

    # -- datasets -------------------------------------------------------------------------------
    def _tokens(self, split: str):
        if split not in self.store.splits:
            raise ValueError(
                f"the store at {self.store.url} has no {split!r} split (splits: {self.store.splits}); "
                "for 'validation', build with validation_split > 0 or use a dataset that has one"
            )
        if not self.use_shared_memory:
            return self.store.tokens(split)
        shared = self._shared.get(split)
        if shared is None or shared.closed:
            shared = SharedTokens.create(self.store.tokens(split), name=split)
            self._shared[split] = shared
        return shared

    def get_dataset(self, split: str, seq_len: int = 1) -> TokenDataset:
        """Windows of ``seq_len`` over any split."""
        return TokenDataset(self._tokens(split), seq_len, split=split)

    def get_train_dataset(self, seq_len: int = 1) -> TokenDataset:
        return self.get_dataset("train", seq_len)

    def get_val_dataset(self, seq_len: int = 1) -> TokenDataset:
        return self.get_dataset("validation", seq_len)

    def get_test_dataset(self, seq_len: int = 1) -> TokenDataset:
        return self.get_dataset("test", seq_len)

    # -- lifetime -------------------------------------------------------------------------------
    def close(self) -> None:
        """Release shared-memory copies (datasets handed out before stop working)."""
        for shared in self._shared.values():
            shared.close()
        self._shared.clear()

    def __enter__(self) -> "FastHfDatasetProvider":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FastHfDatasetProvider({self.store!r}, use_shared_memory={self.use_shared_memory})"

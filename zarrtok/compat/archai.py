"""``FastHfDatasetProvider``: the seed-compatible facade (Archai's workflow, zarrtok's store).

Differences from Archai, on purpose: the tokenizer is stored as ``tokenizer.json`` (no pickle);
``from_hub`` reuses a store whose fingerprint matches instead of re-encoding; the store is written
atomically; ``validation_split=0.0`` means no validation split (Archai silently used 10%); ``test``
is never carved from validation; any fsspec URL works as ``cache_dir``.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Sequence

import datasets
import torch
from transformers import DataCollatorForLanguageModeling

from ..format.layout import SPLITS_GROUP
from ..ingest.builder import build
from ..read.shm import SharedTokens
from ..read.store import TokenStore
from ..read.store import open as open_store
from ..train.dataset import TokenDataset

__all__ = ["FastDataCollatorForLanguageModeling", "FastHfDatasetProvider"]


@dataclass
class FastDataCollatorForLanguageModeling(DataCollatorForLanguageModeling):
    """Archai's collator for ``(inputs, labels)`` items (its trainer scripts import it from this module).

    Tuples: ``input_ids`` are the stacked inputs; ``labels`` are what ``DataCollatorForLanguageModeling``
    makes of them (HF-aligned: the model shifts) unless ``use_shifted_labels=True``, which stacks the
    items' own, already shifted labels (for models that do not shift). Dict items (zarrtok's, with
    HF-aligned ``labels``) go to ``DataCollatorForLanguageModeling`` unchanged.
    """

    use_shifted_labels: bool = False

    def torch_call(self, examples: list[Any]) -> dict[str, Any]:
        if isinstance(examples[0], Mapping):
            return super().torch_call(examples)
        batch = super().torch_call([example[0] for example in examples])
        if self.use_shifted_labels:
            batch["labels"] = torch.stack([example[1] for example in examples], dim=0)
        return batch


class FastHfDatasetProvider:
    """Builds (or reuses) a token store and hands out train/validation/test datasets for any seq_len."""

    def __init__(self, store: TokenStore, *, use_shared_memory: bool = False):
        self.store = store
        self.use_shared_memory = bool(use_shared_memory)
        self._shared: dict[str, SharedTokens] = {}
        self._handed_out: weakref.WeakSet[TokenDataset] = weakref.WeakSet()

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
        mapping_fn: Any = None,
        mapping_fn_kwargs: dict[str, Any] | None = None,
        storage_options: dict[str, Any] | None = None,
        **build_kwargs: Any,
    ) -> "FastHfDatasetProvider":
        """Load with ``datasets.load_dataset``, tokenize into the store at ``cache_dir`` (reused when
        its fingerprint matches, rebuilt when it differs) and return a provider over it.

        ``validation_split`` (default 0.1) carves a validation split from train only when the dataset
        has none; 0.0 makes none. Extra keyword arguments go to :func:`zarrtok.build`.

        ``mapping_fn(examples, **mapping_fn_kwargs)`` (Archai's hook) is applied with
        ``Dataset.map(batched=True)`` before tokenizing; it must return text column(s) (zarrtok
        tokenizes itself and verifies the ids): a function returning ``input_ids`` is refused.
        """
        build_kwargs.setdefault("overwrite", "changed")
        if mapping_fn is not None:
            dataset_name = _apply_mapping_fn(dataset_name, dataset_config_name, data_dir, data_files, mapping_fn,
                                             mapping_fn_kwargs, num_workers, build_kwargs)
            dataset_config_name = data_dir = data_files = None
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
        dataset_path: str | os.PathLike | None = None,
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
        dataset_file_path: str | os.PathLike | None = None,
        mapping_fn: Any = None,
        mapping_fn_kwargs: dict[str, Any] | None = None,
        storage_options: dict[str, Any] | None = None,
        **build_kwargs: Any,
    ) -> "FastHfDatasetProvider":
        """Like :meth:`from_hub` for a dataset saved with ``Dataset.save_to_disk`` (``dataset_path``, or
        Archai's keyword ``dataset_file_path``)."""
        if (dataset_path is None) == (dataset_file_path is None):
            raise TypeError("from_disk needs the saved dataset's path: dataset_path or dataset_file_path (one)")
        path = dataset_path if dataset_path is not None else dataset_file_path
        return cls.from_hub(
            datasets.load_from_disk(os.fspath(path)),
            mapping_fn=mapping_fn,
            mapping_fn_kwargs=mapping_fn_kwargs,
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

    # -- Archai's ``train_file`` / ``validation_file`` / ``test_file`` ------------------------------
    def split_location(self, split: str) -> str | None:
        """Where ``split``'s tokens live: the split's folder (local path) or prefix (URL) inside the
        store (``<cache_dir>/splits/<split>``), holding one Zarr token array per shard (plus document offsets) — not Archai's single
        ``.npy``; read it with ``zarrtok.open(provider.cache_dir).tokens(split)``. ``None`` when the store
        has no such split (Archai's file would not exist). With ``use_shared_memory`` this is still the
        store's copy (the ``/dev/shm`` copies are private to the provider and freed by ``close()``)."""
        if split not in self.store.splits:
            return None
        location = self.store.location
        if location.is_local:
            return os.path.join(location.local_path, SPLITS_GROUP, split)
        return f"{self.store.url.rstrip('/')}/{SPLITS_GROUP}/{split}"  # the URL as the user gave it

    @property
    def train_file(self) -> str | None:
        """Archai's ``train_file`` (``<cache_dir>/train.npy``): :meth:`split_location` of ``train``."""
        return self.split_location("train")

    @property
    def validation_file(self) -> str | None:
        """Archai's ``validation_file``: :meth:`split_location` of ``validation`` (``None`` with
        ``validation_split=0.0`` and no validation split in the source)."""
        return self.split_location("validation")

    @property
    def test_file(self) -> str | None:
        """Archai's ``test_file``: :meth:`split_location` of ``test`` (``None`` unless the source has a
        test split or ``test_split=`` carved one from train)."""
        return self.split_location("test")

    # -- datasets -------------------------------------------------------------------------------
    def _tokens(self, split: str):
        if split not in self.store.splits:
            hints = {
                "validation": "build with validation_split > 0 or use a dataset that has one",
                "test": "pass test_split=<fraction> to from_hub / from_disk to carve one from train, or use a "
                        "dataset that has one (zarrtok never carves test out of validation)",
            }
            hint = hints.get(split, "choose one of the splits the store has")
            raise ValueError(f"the store at {self.store.url} has no {split!r} split (splits: {self.store.splits}); "
                             f"{hint}")
        if not self.use_shared_memory:
            return self.store.tokens(split)
        shared = self._shared.get(split)
        if shared is None or shared.closed:
            shared = SharedTokens.create(self.store.tokens(split), name=split)
            self._shared[split] = shared
        return shared

    def get_dataset(self, split: str, seq_len: int = 1) -> TokenDataset:
        """Windows of ``seq_len`` over any split."""
        ds = TokenDataset(self._tokens(split), seq_len, split=split)
        self._handed_out.add(ds)
        return ds

    def get_train_dataset(self, seq_len: int = 1) -> TokenDataset:
        return self.get_dataset("train", seq_len)

    def get_val_dataset(self, seq_len: int = 1) -> TokenDataset:
        return self.get_dataset("validation", seq_len)

    def get_test_dataset(self, seq_len: int = 1) -> TokenDataset:
        return self.get_dataset("test", seq_len)

    # -- lifetime -------------------------------------------------------------------------------
    def close(self) -> None:
        """Release shared-memory copies. Datasets handed out before stop working: using one raises a
        ``ValueError`` that says so (not a crash inside the reader). Idempotent."""
        for ds in list(self._handed_out):
            ds.close(f"{ds!r} came from a FastHfDatasetProvider that was closed (provider.close() or the end of "
                     "its with-block); get a new dataset from an open provider")
        self._handed_out = weakref.WeakSet()
        for shared in self._shared.values():
            shared.close()
        self._shared.clear()

    def __enter__(self) -> "FastHfDatasetProvider":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FastHfDatasetProvider({self.store!r}, use_shared_memory={self.use_shared_memory})"


def _apply_mapping_fn(dataset_name: Any, config: Any, data_dir: Any, data_files: Any, mapping_fn: Any,
                      mapping_fn_kwargs: dict[str, Any] | None, num_workers: int, build_kwargs: dict[str, Any]) -> Any:
    """The dataset (``Dataset`` / ``DatasetDict``) with Archai's ``mapping_fn`` applied (batched)."""
    if isinstance(dataset_name, (datasets.Dataset, datasets.DatasetDict)):
        data = dataset_name
    else:
        data = datasets.load_dataset(dataset_name, config, data_dir=data_dir, data_files=data_files,
                                     **(build_kwargs.pop("load_dataset_kwargs", None) or {}))
    mapped = data.map(mapping_fn, batched=True, fn_kwargs=dict(mapping_fn_kwargs or {}),
                      num_proc=num_workers if num_workers > 1 else None)
    names = mapped.column_names
    columns = set(next(iter(names.values())) if isinstance(names, dict) else names)
    if "input_ids" in columns:
        raise ValueError("mapping_fn returned input_ids: zarrtok tokenizes (and verifies) itself, so mapping_fn "
                         "must return text column(s) (pass mapping_column_name= to choose them)")
    return mapped

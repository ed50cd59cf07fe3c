"""Streaming sources: a ``datasets.IterableDataset`` (or ``load_dataset(..., streaming=True)``)
built in bounded memory, one unit per ``batch_size`` rows of one of its shards.

An iterable dataset has no length and no random access, so:

* **Split carving cannot be planned**: ``validation_split`` / ``test_split`` > 0 where the split
  would be carved from train, and ``shuffle=True``, are refused with a clear error (the dataset's
  own splits are kept, ``splits=`` selects among them).
* **Plan-time counting pass**: the plan streams every shard of every split once on the driver
  (bounded memory: one row at a time) to count its documents and hash them (sha256 of the
  documents in order: the fingerprint then identifies the *content*, as a ``Dataset``'s
  fingerprint does, even for a generator). This is the one pass of text through the driver; it
  makes every task's document count known in the plan, so the build's per-task check, the
  provenance and resume work as for every other source.
* **Units** are rows ``[a, b)`` of shard ``i`` (``IterableDataset.shard(num_shards=n, index=i)``,
  ``n = num_shards``: the dataset's data files / generator shards, whose concatenation is the
  split's order). A worker keeps its iterator of the shard open between consecutive units, so the
  units of a shard read in order cost one pass; a unit that starts behind the iterator reopens the
  shard and skips to it (only when ``shard_size`` cuts a shard across tasks and the tasks land on
  one worker out of order, or the process pool spreads one task's units over its workers: each
  worker then iterates each shard once, skipping the rows of the others).
* **Where workers get the dataset**: a ``load_dataset(..., streaming=True)`` call is recorded in
  the plan (credential-looking storage options dropped, see :mod:`zarrtok.ingest.file_sources`)
  and run again on remote workers; an ``IterableDataset`` object can only be read in-process or
  by the forked process pool (like an in-memory ``Dataset``).

Documents follow :mod:`zarrtok.ingest.sources` (``None`` is empty, several columns joined); a
non-string value in a text column is an error naming the split, shard and row.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
from collections.abc import Sequence
from typing import Any

import datasets

from . import file_sources
from .sources import STRING_DTYPES, _check_fraction, _jsonable, document_texts, file_stats

logger = logging.getLogger(__name__)


def is_streaming(dataset: Any, load_dataset_kwargs: dict[str, Any] | None) -> bool:
    if isinstance(dataset, (datasets.IterableDataset, datasets.IterableDatasetDict)):
        return True
    return isinstance(dataset, (str, os.PathLike)) and bool((load_dataset_kwargs or {}).get("streaming"))


def load_iterable(dataset: Any, *, dataset_config_name: str | None = None, data_dir: str | None = None,
                  data_files: Any = None, revision: str | None = None,
                  load_dataset_kwargs: dict[str, Any] | None = None) -> dict[str, datasets.IterableDataset]:
    """The source as ``{split: IterableDataset}`` (an ``IterableDataset`` becomes ``{"train": ...}``)."""
    if isinstance(dataset, datasets.IterableDatasetDict):
        return dict(dataset.items())
    if isinstance(dataset, datasets.IterableDataset):
        return {"train": dataset}
    kwargs = dict(load_dataset_kwargs or {})
    kwargs["streaming"] = True
    if revision is not None:
        kwargs["revision"] = revision
    loaded = datasets.load_dataset(os.fspath(dataset), name=dataset_config_name, data_dir=data_dir,
                                   data_files=data_files, **kwargs)
    if isinstance(loaded, datasets.IterableDataset):
        return {"train": loaded}
    return dict(loaded.items())


def _check_rules(names: list[str], validation_split: float | None, test_split: float | None, shuffle: bool,
                 splits: Sequence[str] | None) -> list[str]:
    for name, value, what in (("validation", validation_split, "validation_split"), ("test", test_split, "test_split")):
        if _check_fraction(value, what) > 0 and name not in names:
            raise ValueError(
                f"{what}={value}: a streaming (Iterable) dataset has no length, so a {name!r} split cannot be "
                f"carved from it; use the dataset's own {name!r} split, a non-streaming source, or {what}=0")
    if shuffle:
        raise ValueError("shuffle=True cannot be planned for a streaming (Iterable) dataset: it has no length")
    if splits is None:
        return names
    unknown = [s for s in splits if s not in names]
    if unknown:
        raise ValueError(f"unknown split(s) {unknown}: the dataset has {names}")
    return list(splits)


def _columns(split_datasets: dict[str, datasets.IterableDataset], columns: str | Sequence[str] | None) -> list[str]:
    first = next(iter(split_datasets.values()))
    features = first.features
    if columns is None:
        if features is None or "text" in features:
            columns = ["text"]
        else:
            strings = [c for c, f in features.items() if getattr(f, "dtype", None) in STRING_DTYPES]
            if len(strings) != 1:
                raise ValueError(f"no 'text' column; pass mapping_column_name/columns explicitly (string columns: "
                                 f"{strings}, all columns: {list(features)})")
            columns = strings
    columns = [columns] if isinstance(columns, str) else list(columns)
    if not columns:
        raise ValueError("columns must name at least one text column")
    for split, ds in split_datasets.items():
        if ds.features is None:
            continue  # unknown until read: values are checked row by row
        for c in columns:
            if c not in ds.features:
                raise ValueError(f"column {c!r} not found in split {split!r} (columns: {list(ds.features)})")
            if getattr(ds.features[c], "dtype", None) not in STRING_DTYPES:
                raise TypeError(f"column {c!r} in split {split!r} has type {ds.features[c]}, not string: "
                                "zarrtok tokenizes text columns only")
    return columns


class IterableDocuments:
    """Documents of iterable dataset splits per shard (same interface as
    :class:`zarrtok.ingest.sources.DatasetDocuments`; tasks are ``(split, shard, start, stop)``)."""

    reader = "zarrtok-iterable"

    def __init__(self, split_datasets: dict[str, datasets.IterableDataset], columns: list[str], separator: str,
                 counts: dict[str, list[int]] | None = None, digests: dict[str, str] | None = None):
        self._datasets = split_datasets
        self.columns = columns
        self.separator = separator
        self.counts = counts or {}
        self.digests = digests or {}
        self.storage_options: dict[str, Any] = {}
        self._iter: tuple[tuple[str, int], int, Any] | None = None  # ((split, shard), next row, iterator)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_iter"] = None
        return state

    @classmethod
    def open(cls, split_datasets: dict[str, datasets.IterableDataset], *, columns: str | Sequence[str] | None,
             separator: str, validation_split: float | None, test_split: float | None, seed: int, shuffle: bool,
             splits: Sequence[str] | None) -> IterableDocuments:
        """Check the rules, resolve the columns, and count (and hash) every shard's documents."""
        del seed  # nothing is carved
        names = _check_rules(list(split_datasets), validation_split, test_split, shuffle, splits)
        chosen = {s: split_datasets[s] for s in names}
        cols = _columns(chosen, columns)
        docs = cls(chosen, cols, separator)
        for split in names:
            digest = hashlib.sha256()
            counts = []
            for shard in range(chosen[split].num_shards):
                n = 0
                for text in docs._iterate(split, shard):
                    data = text.encode("utf-8", "surrogatepass")
                    digest.update(len(data).to_bytes(8, "little"))
                    digest.update(data)
                    n += 1
                counts.append(n)
            docs.counts[split] = counts
            docs.digests[split] = digest.hexdigest()
            logger.info("streamed split %r once to plan it: %d documents in %d shard(s)", split, sum(counts),
                        len(counts))
        return docs

    @property
    def splits(self) -> list[str]:
        return list(self._datasets)

    def num_documents(self, split: str) -> int:
        return sum(self.counts[split])

    def _shard(self, split: str, shard: int) -> datasets.IterableDataset:
        ds = self._datasets[split]
        return ds if ds.num_shards == 1 else ds.shard(num_shards=ds.num_shards, index=shard)

    def _iterate(self, split: str, shard: int):
        """The documents of one shard, in order, one row at a time."""
        for row, example in enumerate(self._shard(split, shard)):
            batch = {c: [example.get(c)] for c in self.columns}
            for c in self.columns:
                v = batch[c][0]
                if v is not None and not isinstance(v, str):
                    raise TypeError(f"split {split!r}, shard {shard}, row {row}: column {c!r} holds "
                                    f"{type(v).__name__}, not a string: zarrtok tokenizes text columns only")
            yield document_texts(batch, self.columns, self.separator)[0]

    def tasks(self, split: str, batch_size: int) -> list[tuple[str, int, int, int]]:
        return [(split, shard, a, min(a + batch_size, n))
                for shard, n in enumerate(self.counts[split]) for a in range(0, n, batch_size)]

    def texts(self, task: tuple[str, int, int, int]) -> list[str]:
        split, shard, a, b = task
        key = (split, shard)
        if self._iter is not None and self._iter[0] == key and self._iter[1] <= a:
            _, pos, it = self._iter
        else:
            pos, it = 0, self._iterate(split, shard)
        if a > pos:
            for _ in itertools.islice(it, a - pos):
                pass
        texts = list(itertools.islice(it, b - a))
        if len(texts) != b - a:
            raise ValueError(f"split {split!r}, shard {shard}: ended at row {a + len(texts)}, the plan counted "
                             f"{self.counts.get(split, ['?'] * (shard + 1))[shard]} (the source changed since)")
        self._iter = (key, b, it)
        return texts

    def head(self, split: str, n: int) -> list[str]:
        return list(itertools.islice((t for s in range(len(self.counts[split])) for t in self._iterate(split, s)), n))

    def identity(self, dataset: Any, *, dataset_config_name: str | None, data_dir: str | None, data_files: Any,
                 revision: str | None) -> dict[str, Any]:
        identity: dict[str, Any] = {
            "reader": self.reader,
            "split_sizes": {s: self.num_documents(s) for s in self.splits},
            "shard_sizes": {s: list(self.counts[s]) for s in self.splits},
            "content_sha256": dict(self.digests),
        }
        if isinstance(dataset, (str, os.PathLike)):
            identity.update(kind="load_dataset", path=os.fspath(dataset), config=dataset_config_name,
                            data_dir=data_dir, revision=revision, data_files=_jsonable(data_files),
                            files=file_stats(data_files))
        else:
            identity["kind"] = type(dataset).__name__
        return identity


def load_spec(dataset: Any, *, dataset_config_name: str | None, data_dir: str | None, data_files: Any,
              revision: str | None, load_dataset_kwargs: dict[str, Any] | None) -> dict[str, Any] | None:
    """The ``load_dataset`` call a remote worker repeats (``None`` for an ``IterableDataset`` object)."""
    if not isinstance(dataset, (str, os.PathLike)):
        return None
    kwargs = dict(load_dataset_kwargs or {})
    if "storage_options" in kwargs:
        kwargs["storage_options"] = file_sources.plan_options(kwargs["storage_options"])
    kwargs["streaming"] = True
    return {"path": os.fspath(dataset), "name": dataset_config_name, "data_dir": data_dir,
            "data_files": _jsonable(data_files), "revision": revision, "kwargs": kwargs}


def from_spec(spec: dict[str, Any]) -> IterableDocuments:
    """A worker's reader for a plan's ``iterable`` reader spec (the recorded call, run again)."""
    load = spec.get("load")
    if load is None:
        raise RuntimeError(
            "this plan reads an in-memory datasets.IterableDataset: run it in-process or on the local (fork) "
            "process pool (other executors need a load_dataset(..., streaming=True) source they can load)")
    split_datasets = load_iterable(load["path"], dataset_config_name=load["name"], data_dir=load["data_dir"],
                                   data_files=load["data_files"], revision=load["revision"],
                                   load_dataset_kwargs=load["kwargs"])
    for split, shards in spec["shards"].items():
        if split not in split_datasets or split_datasets[split].num_shards != shards:
            raise ValueError(f"split {split!r} of {load['path']!r} now has "
                             f"{getattr(split_datasets.get(split), 'num_shards', 0)} shard(s), the plan {shards}")
    return IterableDocuments({s: split_datasets[s] for s in spec["shards"]}, list(spec["columns"]), spec["separator"])

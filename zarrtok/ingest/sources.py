"""Sources: turning ``load_dataset`` arguments or ``Dataset`` objects into ordered documents per split.

Split rules (also in the README):

* The dataset's own splits are kept as they are, in order.
* ``validation`` is carved from ``train`` only when the dataset has no ``validation`` split and
  ``validation_split > 0``: ``ceil(validation_split * len(train))`` documents chosen with
  ``numpy.random.default_rng(seed)``; both parts keep the original document order.
  ``validation_split == 0`` means no validation split is made (never a silent default).
* ``test`` is treated the same way with ``test_split``; it is carved from ``train`` (after the
  validation carve), never from validation.
* ``shuffle=True`` additionally shuffles the document order of every split with ``seed``.

Documents: with several text columns, each row's non-empty column values are joined with
``column_separator`` (default ``"\\n\\n"``) into one document string; ``None`` counts as empty.
"""

from __future__ import annotations

import glob
import logging
import math
import os
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

if TYPE_CHECKING:  # imported where used: a JSON Lines / Parquet worker never pays for `datasets`
    import datasets

logger = logging.getLogger(__name__)

STRING_DTYPES = ("string", "large_string")
T = TypeVar("T")


def load_source(
    dataset: Any,
    *,
    dataset_config_name: str | None = None,
    data_dir: str | None = None,
    data_files: Any = None,
    revision: str | None = None,
    load_dataset_kwargs: dict[str, Any] | None = None,
) -> datasets.DatasetDict:
    """Load the source as a ``DatasetDict`` (a single ``Dataset`` becomes ``{"train": ...}``)."""
    import datasets

    if isinstance(dataset, datasets.DatasetDict):
        loaded = dataset
    elif isinstance(dataset, datasets.Dataset):
        loaded = datasets.DatasetDict({"train": dataset})
    elif isinstance(dataset, (datasets.IterableDataset, datasets.IterableDatasetDict)):
        raise TypeError("streaming (Iterable) datasets are read by zarrtok.ingest.iterable, not load_source "
                        "(the build takes them directly)")
    elif isinstance(dataset, (str, os.PathLike)):
        kwargs = dict(load_dataset_kwargs or {})
        if revision is not None:
            kwargs["revision"] = revision
        loaded = datasets.load_dataset(
            os.fspath(dataset), name=dataset_config_name, data_dir=data_dir, data_files=data_files, **kwargs
        )
        if isinstance(loaded, datasets.Dataset):
            loaded = datasets.DatasetDict({"train": loaded})
    else:
        raise TypeError(
            f"unsupported dataset {type(dataset).__name__}: pass a dataset name/path (str) or a datasets.Dataset/DatasetDict"
        )
    if not isinstance(loaded, datasets.DatasetDict):
        raise TypeError(f"load_dataset returned {type(loaded).__name__}, expected a DatasetDict")
    return loaded


def _carve_rows(n: int, fraction: float, seed: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Positions ``(rest, carved)`` of a carve of ``ceil(fraction * n)`` rows, both in ascending order."""
    k = math.ceil(fraction * n)
    if k < 1 or k >= n:
        raise ValueError(
            f"{what}={fraction} of {n} train documents gives {k} documents; "
            f"need at least 1 and fewer than {n}"
        )
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[k:]), np.sort(perm[:k])


def _check_fraction(value: float | None, what: str) -> float:
    """``value`` as a float in [0, 1) (``None`` means 0)."""
    if value is None:
        return 0.0
    value = float(value)
    if not (0.0 <= value < 1.0) or math.isnan(value):
        raise ValueError(f"{what} must be in [0, 1), got {value}")
    return value


def split_rules(
    parts: dict[str, T],
    *,
    size: Callable[[T], int],
    select: Callable[[T, np.ndarray], T],
    validation_split: float | None = 0.0,
    test_split: float | None = 0.0,
    seed: int = 42,
    shuffle: bool = False,
    splits: Sequence[str] | None = None,
) -> dict[str, T]:
    """The split rules in this module's docstring over any row container: ``parts`` maps the
    source's splits to containers, ``size(part)`` counts its rows and ``select(part, positions)``
    keeps those rows in that order. Returns ``{split: part}`` in order."""
    validation_split = _check_fraction(validation_split, "validation_split")
    test_split = _check_fraction(test_split, "test_split")
    result = dict(parts)
    for name, fraction, what in (("validation", validation_split, "validation_split"), ("test", test_split, "test_split")):
        if fraction == 0.0:
            continue
        if name in result:
            logger.info("dataset has its own %r split; %s=%s is not used", name, what, fraction)
            continue
        if "train" not in result:
            raise ValueError(f"cannot carve {name!r}: the dataset has no 'train' split (splits: {list(result)})")
        offset = 0 if name == "validation" else 1
        rest, carved = _carve_rows(size(result["train"]), fraction, seed + offset, what)
        result["train"], result[name] = select(result["train"], rest), select(result["train"], carved)
        logger.info("carved %d %s documents from train (seed %d)", len(carved), name, seed + offset)
    if shuffle:
        for i, (name, part) in enumerate(result.items()):
            result[name] = select(part, np.random.default_rng(seed + 100 + i).permutation(size(part)))
    if splits is not None:
        unknown = [s for s in splits if s not in result]
        if unknown:
            raise ValueError(f"unknown split(s) {unknown}: the dataset has {list(result)}")
        result = {s: result[s] for s in splits}
    return result


def apply_split_rules(source: datasets.DatasetDict, **rules: Any) -> dict[str, datasets.Dataset]:
    """:func:`split_rules` on a ``DatasetDict``: ``{split: Dataset}`` in order (``Dataset.select``)."""
    return split_rules(dict(source.items()), size=len, select=lambda ds, rows: ds.select(rows), **rules)


def resolve_columns(split_datasets: dict[str, datasets.Dataset], columns: str | Sequence[str] | None) -> list[str]:
    """Validate the text columns (present in every split, string typed) and return them as a list."""
    if not split_datasets:
        raise ValueError("the dataset has no splits")
    first = next(iter(split_datasets.values()))
    if columns is None:
        if "text" in first.column_names:
            columns = ["text"]
        else:
            candidates = [c for c, f in first.features.items() if getattr(f, "dtype", None) in STRING_DTYPES]
            if len(candidates) != 1:
                raise ValueError(
                    f"no 'text' column; pass mapping_column_name/columns explicitly (string columns: {candidates}, "
                    f"all columns: {first.column_names})"
                )
            columns = candidates
    elif isinstance(columns, str):
        columns = [columns]
    columns = list(columns)
    if not columns:
        raise ValueError("columns must name at least one text column")
    for split, ds in split_datasets.items():
        for column in columns:
            if column not in ds.column_names:
                raise ValueError(f"column {column!r} not found in split {split!r} (columns: {ds.column_names})")
            feature = ds.features[column]
            if getattr(feature, "dtype", None) not in STRING_DTYPES:
                raise TypeError(
                    f"column {column!r} in split {split!r} has type {feature}, not string: "
                    "zarrtok tokenizes text columns only"
                )
    return columns


def document_texts(batch: dict[str, list[Any]], columns: Sequence[str], separator: str) -> list[str]:
    """Join the text columns of a batch of rows into one document string per row."""
    if len(columns) == 1:
        return [t if t is not None else "" for t in batch[columns[0]]]
    values = [batch[c] for c in columns]
    return [separator.join(v for v in row if v) for row in zip(*values)]


def _local_paths(spec: Any) -> Iterable[str]:
    if spec is None:
        return
    if isinstance(spec, dict):
        for value in spec.values():
            yield from _local_paths(value)
        return
    if isinstance(spec, (list, tuple)):
        for value in spec:
            yield from _local_paths(value)
        return
    spec = os.fspath(spec)
    if "://" in spec:
        return
    matches = glob.glob(spec, recursive=True) if any(ch in spec for ch in "*?[") else [spec]
    for match in sorted(matches):
        if os.path.isdir(match):
            for root, _, files in os.walk(match):
                for name in sorted(files):
                    yield os.path.join(root, name)
        elif os.path.exists(match):
            yield match


def file_stats(spec: Any) -> list[dict[str, Any]]:
    """Absolute path, size and mtime of every local file a data spec refers to."""
    stats = []
    for path in _local_paths(spec):
        st = os.stat(path)
        stats.append({"path": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    return stats


def source_identity(
    dataset: Any,
    split_datasets: dict[str, datasets.Dataset],
    *,
    dataset_config_name: str | None,
    data_dir: str | None,
    data_files: Any,
    revision: str | None,
) -> dict[str, Any]:
    """Everything about the source that changes its documents, as JSON-able data for the fingerprint."""
    identity: dict[str, Any] = {
        "split_fingerprints": {name: getattr(ds, "_fingerprint", None) for name, ds in split_datasets.items()},
        "split_sizes": {name: len(ds) for name, ds in split_datasets.items()},
    }
    if isinstance(dataset, (str, os.PathLike)):
        name = os.fspath(dataset)
        local_root = name if os.path.exists(name) else None
        identity.update(
            kind="load_dataset",
            path=name,
            config=dataset_config_name,
            data_dir=data_dir,
            revision=revision,
            data_files=_jsonable(data_files),
            files=file_stats([p for p in (local_root,) if p])
            + file_stats(data_files)
            + (file_stats(os.path.join(local_root or "", data_dir)) if data_dir else []),
        )
    else:
        identity["kind"] = type(dataset).__name__
    return identity


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


class DatasetDocuments:
    """Documents of ``datasets.Dataset`` splits for the build, in row ranges of ``batch_size``.

    The interface the build uses (shared with :class:`zarrtok.jsonl.JsonLinesDocuments`):
    ``splits``, ``num_documents(split)``, ``tasks(split, batch_size)``, ``texts(task)`` and
    ``head(split, n)``. Tasks are small picklable tuples; ``texts`` runs in worker processes
    (forked workers share the datasets' memory-mapped Arrow files).
    """

    reader = "datasets"

    def __init__(self, split_datasets: dict[str, datasets.Dataset], columns: list[str], separator: str):
        self._datasets = {name: ds.select_columns(columns) for name, ds in split_datasets.items()}
        self.columns = columns
        self.separator = separator

    @property
    def splits(self) -> list[str]:
        return list(self._datasets)

    def num_documents(self, split: str) -> int:
        return len(self._datasets[split])

    def tasks(self, split: str, batch_size: int) -> list[tuple[str, int, int]]:
        n = len(self._datasets[split])
        return [(split, a, min(a + batch_size, n)) for a in range(0, n, batch_size)]

    def texts(self, task: tuple[str, int, int]) -> list[str]:
        split, a, b = task
        return document_texts(self._datasets[split][a:b], self.columns, self.separator)

    def head(self, split: str, n: int) -> list[str]:
        ds = self._datasets[split]
        return document_texts(ds[: min(len(ds), n)], self.columns, self.separator)

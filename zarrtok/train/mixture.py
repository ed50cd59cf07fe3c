"""``MixtureDataset``: windows drawn from several token datasets with given weights.

Samples are addressed by global ids ``offsets[i] + window`` (as ``torch.utils.data.ConcatDataset``
does); which id comes at which position of an epoch is decided by
:class:`~zarrtok.sampling.MixtureOrder` — deterministic from the seed and the epoch, so a mixture
resumes exactly and shards across ranks like a single split (use it with
:class:`~zarrtok.loader.TokenLoader`). A source that is small for its weight repeats (in a new
order each pass); a large one is subsampled and continues where it stopped in the next epoch.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .dataset import PlanReadAhead, TokenDataset, WindowBatch
from .sampling import MixtureOrder, WindowOrder


class MixtureDataset(PlanReadAhead, Dataset):
    """A weighted mixture of :class:`~zarrtok.dataset.TokenDataset` s with the same ``seq_len``.

    ``weights`` are relative (e.g. ``[0.7, 0.3]``); ``samples_per_epoch`` defaults to the total
    number of windows of the sources; ``seed`` seeds the interleaving (each source's own order is
    seeded from it and the source's position).
    """

    def __init__(self, datasets: Sequence[TokenDataset], weights: Sequence[float], *,
                 samples_per_epoch: int | None = None, seed: int = 0):
        datasets = list(datasets)
        if not datasets:
            raise ValueError("a mixture needs at least one dataset")
        if len(weights) != len(datasets):
            raise ValueError(f"{len(datasets)} datasets but {len(weights)} weights")
        lengths = {d.seq_len for d in datasets}
        if len(lengths) != 1:
            raise ValueError(f"all datasets of a mixture need the same seq_len, got {sorted(lengths)}")
        if len({d.as_dict for d in datasets}) != 1 or len({bool(d.document_outputs) for d in datasets}) != 1:
            raise ValueError("all datasets of a mixture need the same outputs (document_outputs / as_dict)")
        if len({d.label_format for d in datasets}) != 1 or len({d.layout.ignore_index for d in datasets}) != 1:
            raise ValueError("all datasets of a mixture need the same label_format and ignore_index")
        self.datasets = datasets
        self.weights = [float(w) for w in weights]
        self.samples_per_epoch = samples_per_epoch
        self.seed = int(seed)
        self.seq_len = datasets[0].seq_len
        self.as_dict = datasets[0].as_dict
        self.label_format = datasets[0].label_format
        self.ignore_index = datasets[0].layout.ignore_index
        self.offsets = np.concatenate([[0], np.cumsum([len(d) for d in datasets])]).astype(np.int64)
        self._plan: Any = None
        self._plan_next = (-1, -1)
        self._lookahead = 0

    def __len__(self) -> int:
        """Windows addressable by global id (the sum of the sources' lengths)."""
        return int(self.offsets[-1])

    def __repr__(self) -> str:
        parts = ", ".join(f"{d.split or '?'}:{w:g}" for d, w in zip(self.datasets, self.weights))
        return f"MixtureDataset({parts}, seq_len={self.seq_len}, windows={len(self)})"

    def window_order(self, *, shuffle: str, seed: int, block_chunks: int = 4) -> MixtureOrder:
        """The epoch order for a loader: each source ordered by ``shuffle``, interleaved by weight."""
        sources = []
        for i, d in enumerate(self.datasets):
            source_seed = int(np.random.SeedSequence([seed, i]).generate_state(1)[0])
            sources.append(WindowOrder.from_dataset(d, shuffle=shuffle, seed=source_seed, block_chunks=block_chunks))
        return MixtureOrder(sources, self.weights, seed=seed, samples_per_epoch=self.samples_per_epoch)

    def locate(self, ids: Any) -> tuple[np.ndarray, np.ndarray]:
        """``(source, window)`` of global ids."""
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= len(self)):
            raise IndexError(f"sample id out of range for {len(self)} windows")
        source = np.searchsorted(self.offsets, ids, side="right") - 1
        return source, ids - self.offsets[source]

    def __getitem__(self, index: int) -> Any:
        (source,), (window,) = self.locate([index])
        return self.datasets[int(source)][int(window)]

    def __getitems__(self, indices: Sequence[int]) -> WindowBatch:
        """A batch from several sources: each source reads its rows in one call; rows keep ``indices``' order."""
        if self._plan is not None and getattr(indices, "step", None) is not None:
            self._plan_prefetch(indices.epoch, indices.step)
        ids = np.asarray(list(indices), dtype=np.int64)
        source, window = self.locate(ids)
        L = self.seq_len
        inputs = torch.empty((ids.size, L), dtype=torch.int64)
        labels = torch.empty((ids.size, L), dtype=torch.int64)
        per_row: dict[str, torch.Tensor] = {}
        for s in np.unique(source):
            rows = np.flatnonzero(source == s)
            part = self.datasets[int(s)].__getitems__(window[rows].tolist())
            inputs[rows] = part.inputs
            labels[rows] = part.labels
            for key in ("position_ids", "attention_mask"):
                if key in part.extras:
                    if key not in per_row:
                        per_row[key] = torch.zeros((ids.size, L), dtype=part.extras[key].dtype)
                    per_row[key][rows] = part.extras[key]
        extras: dict[str, Any] = dict(per_row)
        if "position_ids" in per_row:  # segments start where position ids restart at 0
            pos = per_row["position_ids"].reshape(-1)
            starts = torch.nonzero(pos == 0).reshape(-1)
            cu = torch.cat([starts, torch.tensor([pos.numel()])]).to(torch.int32)
            extras["cu_seqlens"] = cu
            extras["max_seqlen"] = int((cu[1:] - cu[:-1]).max()) if pos.numel() else 0
        batch = WindowBatch(inputs, labels, extras=extras, indices=ids.tolist(), as_dict=self.as_dict,
                            label_format=self.label_format, ignore_index=self.ignore_index)
        batch.epoch, batch.step = getattr(indices, "epoch", -1), getattr(indices, "step", -1)
        return batch

    # -- read-ahead (see TokenDataset.set_read_ahead) ---------------------------------------------
    def set_read_ahead(self, plan: Any, *, lookahead_windows: int | None = None) -> None:
        """Prefetch the sources' chunks of the windows the batch sampler ``plan`` serves next."""
        self._plan = plan
        self._plan_next = (-1, -1)
        self._lookahead = max(d._lookahead_windows(lookahead_windows) for d in self.datasets) if plan is not None else 0

    def prefetch_windows(self, ids: Any) -> None:
        """Start fetching the chunks of these global ids (per source, in order of first use)."""
        source, window = self.locate(ids)
        for s in np.unique(source):
            self.datasets[int(s)].prefetch_windows(window[source == s])

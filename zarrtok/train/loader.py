"""``TokenLoader``: the training loader — shuffled, distributed, exactly resumable batches as dicts.

Underneath it is a plain ``torch.utils.data.DataLoader`` over a map-style dataset
(:class:`~zarrtok.dataset.TokenDataset` or :class:`~zarrtok.mixture.MixtureDataset`) whose
``batch_sampler`` is a :class:`~zarrtok.sampling.GlobalBatchSampler`:

* the epoch's order is a pure function of ``(seed, epoch)`` (:mod:`zarrtok.sampling`): a global
  permutation for local stores, a chunk-local shuffle for object storage (each chunk fetched about
  once per epoch), or sequential;
* it is cut into global batches of ``batch_size * world_size`` windows; rank ``r`` takes its slice
  of each, and the DataLoader hands whole batches to its workers in turn, so across ranks and
  workers every window of the epoch is served once (remainder policy: ``"drop"``, ``"pad"`` or
  ``"partial"``);
* the state is three numbers — ``seed``, ``epoch`` and ``consumed`` (windows of the epoch consumed
  *globally*), advanced only when the training loop receives a batch (never by what workers
  prefetched). ``load_state_dict`` continues with exactly the windows not yet consumed, also with a
  different number of workers or ranks as long as ``batch_size * world_size`` is unchanged.

Batches are dicts: ``input_ids`` and ``labels`` (int64 ``[batch, seq_len]``), plus
``position_ids`` / ``cu_seqlens`` / ``max_seqlen`` (``document_outputs=True``), ``attention_mask``
(``drop_last=False``) and ``index`` (``return_index=True``). ``label_format="shifted"``
(default): ``labels[:, j]`` is the target of ``input_ids[:, j]`` (a plain training loop).
``label_format="hf"``: ``labels`` aligned with ``input_ids`` as ``transformers`` causal LMs expect
(they shift internally): ``model(**batch)`` works; the window's last target is then not scored.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader, default_collate

from .dataset import LABEL_FORMATS, SHIFTED_LABELS_KEY, TokenDataset, WindowBatch, hf_labels
from .sampling import SHUFFLE_MODES, GlobalBatchSampler, WindowOrder

logger = logging.getLogger(__name__)

STATE_VERSION = 1


def collate_dict(batch: Any, *, label_format: str = "shifted", return_index: bool = False,
                 ignore_index: int = -100) -> dict[str, Any]:
    """DataLoader ``collate_fn`` giving a dict batch (see the module docstring); no copy for a
    :class:`~zarrtok.dataset.WindowBatch` (in the dataset's own label format, or ``"shifted"``).

    Other samples: ``(inputs, labels)`` tuples carry shifted labels; dict samples carry either
    ``next_token_labels`` (shifted) or ``labels`` (HF-aligned, zarrtok's dict convention).
    ``input_ids`` and ``labels`` of the result never share memory."""
    if label_format not in LABEL_FORMATS:
        raise ValueError(f"label_format must be one of {LABEL_FORMATS}, got {label_format!r}")
    if isinstance(batch, WindowBatch):
        out: dict[str, Any] = {"input_ids": batch.inputs, "labels": batch.labels, **batch.extras}
        if label_format == "hf" and batch.label_format == "hf":
            out["labels"] = batch.item_labels  # already computed for the items
        elif label_format == "hf":
            out["labels"] = hf_labels(batch.labels, ignore_index)
        indices = batch.indices
    else:  # a list of (inputs, labels) pairs or of dicts, from any dataset
        collated = default_collate(batch)
        if isinstance(collated, dict):
            out = dict(collated)
            if SHIFTED_LABELS_KEY in out:
                shifted = out.pop(SHIFTED_LABELS_KEY)
            else:  # HF-aligned "labels": the shifted target of slot j is labels[j + 1]
                aligned = out["labels"]
                shifted = torch.full_like(aligned, ignore_index)
                shifted[:, :-1] = aligned[:, 1:]
        else:
            out, shifted = {"input_ids": collated[0]}, collated[1]
        out["labels"] = hf_labels(shifted, ignore_index) if label_format == "hf" else shifted
    if return_index:
        if indices is None:
            raise ValueError("return_index needs batches from a zarrtok dataset's __getitems__")
        out["index"] = torch.as_tensor(indices, dtype=torch.int64)
    return out


def _collate_with_step(batch: Any, **options: Any) -> tuple[int, int, dict[str, Any]]:
    """Collate plus the batch's ``(epoch, step)``, so the loader can count consumed windows."""
    return (getattr(batch, "epoch", -1), getattr(batch, "step", -1), collate_dict(batch, **options))


def _shuffle_mode(dataset: Any, shuffle: bool | str) -> str:
    if shuffle is False:
        return "none"
    if shuffle is True or shuffle == "auto":
        return "chunk" if is_remote(dataset) else "global"
    if shuffle not in SHUFFLE_MODES:
        raise ValueError(f"shuffle must be True, False, 'auto' or one of {SHUFFLE_MODES}, got {shuffle!r}")
    return shuffle


def _token_sources(dataset: Any) -> list[Any]:
    """The token sources (:class:`~zarrtok.read.source.TokenSource`) a dataset, or each dataset of a
    mixture, reads."""
    return [d.tokens for d in getattr(dataset, "datasets", None) or [dataset]]


def is_remote(dataset: Any) -> bool:
    """Whether a dataset reads anything other than memory-mapped local chunk files (or memory)."""
    return any(not tokens.is_local for tokens in _token_sources(dataset))


def _reads_ahead(dataset: Any) -> bool:
    return any(tokens.readahead > 0 for tokens in _token_sources(dataset))


def _has_shared_disk_cache(dataset: Any) -> bool:
    return any(tokens.shared_cache for tokens in _token_sources(dataset))


def window_order(dataset: Any, *, shuffle: str, seed: int, block_chunks: int):
    """The :class:`~zarrtok.sampling.WindowOrder` (or mixture order) of a dataset."""
    if hasattr(dataset, "window_order"):
        return dataset.window_order(shuffle=shuffle, seed=seed, block_chunks=block_chunks)
    return WindowOrder.from_dataset(dataset, shuffle=shuffle, seed=seed, block_chunks=block_chunks)


class TokenLoader:
    """Shuffled, distributed, resumable batches (dicts) over a zarrtok dataset (module docstring).

    ``shuffle``: ``True``/``"auto"`` (chunk-local for remote stores, global for local ones),
    ``"global"``, ``"chunk"``, ``False``/``"none"``. ``rank``/``world_size``: from
    ``torch.distributed`` when initialised, unless given. ``remainder``: ``"drop"`` (default),
    ``"pad"`` (wrap around; every rank gets full batches) or ``"partial"`` (not for DDP). Other
    keyword arguments (``num_workers``, ``pin_memory``, ``persistent_workers``, ``prefetch_factor``,
    ``multiprocessing_context``, ``timeout``) go to the ``DataLoader``.

    Iterating yields the rest of the current epoch; once an epoch is complete the next iteration
    starts the next epoch (``set_epoch`` also works, as with ``DistributedSampler``).

    ``set_epoch(e)`` before an iteration pins it to epoch ``e``: the rest of ``e`` when it is the
    current, partly consumed epoch, *nothing* when ``e`` is the current and already complete epoch
    (a checkpoint taken at an epoch's end, ``{epoch: e, consumed: all}``), else all of ``e``. So the
    loop ``for epoch in range(state["epoch"], E): loader.set_epoch(epoch); for batch in loader:``
    gives exactly the remaining batches of the uninterrupted run, wherever the checkpoint was taken.
    Only an iteration *without* a preceding ``set_epoch`` moves on by itself after a complete epoch.
    """

    def __init__(self, dataset: Any, *, batch_size: int, shuffle: bool | str = True, seed: int = 0,
                 block_chunks: int = 4, rank: int | None = None, world_size: int | None = None,
                 num_workers: int = 0, remainder: str = "drop", return_index: bool = False,
                 label_format: str = "shifted", read_ahead: bool = True, epoch: int = 0, **dataloader_options: Any):
        if label_format not in LABEL_FORMATS:
            raise ValueError(f"label_format must be one of {LABEL_FORMATS}, got {label_format!r}")
        ignore_index = dataset.layout.ignore_index if isinstance(dataset, TokenDataset) else -100
        self.dataset = dataset
        self.shuffle = _shuffle_mode(dataset, shuffle)
        self.seed = int(seed)
        self.order = window_order(dataset, shuffle=self.shuffle, seed=self.seed, block_chunks=block_chunks)
        self.sampler = GlobalBatchSampler(self.order, batch_size=batch_size, rank=rank, world_size=world_size,
                                          remainder=remainder, epoch=epoch)
        self.read_ahead = bool(read_ahead) and _reads_ahead(dataset)
        if self.read_ahead:
            dataset.set_read_ahead(self.sampler)
        self._warm_start = self.read_ahead and (num_workers == 0 or _has_shared_disk_cache(dataset))
        collate = functools.partial(_collate_with_step, label_format=label_format, return_index=return_index,
                                    ignore_index=ignore_index)
        self.num_workers = int(num_workers)
        self._loader = DataLoader(dataset, batch_sampler=self.sampler, num_workers=self.num_workers,
                                  collate_fn=collate, **dataloader_options)
        self._epoch_pinned = False  # set_epoch was called since the last iteration started

    # -- state -----------------------------------------------------------------------------------
    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    @property
    def consumed(self) -> int:
        """Windows of the current epoch consumed globally (all ranks) by the training loop."""
        return self.sampler.consumed

    @property
    def rank(self) -> int:
        return self.sampler.rank

    @property
    def world_size(self) -> int:
        return self.sampler.world_size

    @property
    def batch_size(self) -> int:
        return self.sampler.batch_size

    def set_epoch(self, epoch: int) -> None:
        """Serve ``epoch`` in the next iteration: from its start, or the rest of it when it is the
        current epoch (nothing if that is complete: the resume-at-epoch-end case)."""
        self.sampler.set_epoch(epoch)
        self._epoch_pinned = True

    def _epoch_end(self) -> int:
        steps = self.sampler.steps_per_epoch
        return self.sampler.consumed_after(steps - 1) if steps else 0

    def _epoch_complete(self) -> bool:
        return self.sampler.steps_per_epoch == 0 or self.sampler.consumed >= self._epoch_end()

    def state_dict(self) -> dict[str, Any]:
        """Small numbers that resume this loader exactly: seed, epoch and windows consumed globally."""
        return {"version": STATE_VERSION, "seed": self.seed, "shuffle": self.shuffle, "epoch": self.sampler.epoch,
                "consumed": self.sampler.consumed, "global_batch_size": self.sampler.global_batch_size,
                "num_samples": self.sampler.num_samples}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue where ``state`` (from :meth:`state_dict`, on any rank/worker layout) left off."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported loader state version {state.get('version')!r}")
        if state["num_samples"] != self.sampler.num_samples:
            raise ValueError(f"loader state is for {state['num_samples']} windows per epoch, this loader has "
                             f"{self.sampler.num_samples} (different data, seq_len or window options)")
        for key, mine in (("seed", self.seed), ("shuffle", self.shuffle)):
            if state[key] != mine:
                raise ValueError(f"loader state has {key}={state[key]!r}, this loader {key}={mine!r}: "
                                 "resuming would not continue the same order")
        if state["global_batch_size"] != self.sampler.global_batch_size:
            logger.warning("resuming with global batch %d (state: %d): the remaining windows are served once, "
                           "but batches are not the ones an uninterrupted run would form",
                           self.sampler.global_batch_size, state["global_batch_size"])
        self.sampler.set_epoch(int(state["epoch"]))
        self.sampler.set_consumed(int(state["consumed"]))
        self._epoch_pinned = False

    # -- iteration -------------------------------------------------------------------------------
    def __len__(self) -> int:
        """Batches this rank will yield in the next iteration."""
        if self._epoch_complete() and not self._epoch_pinned:
            return len(GlobalBatchSampler(self.order, batch_size=self.sampler.batch_size, rank=self.sampler.rank,
                                          world_size=self.sampler.world_size, remainder=self.sampler.remainder,
                                          epoch=self.sampler.epoch + 1))
        return len(self.sampler)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self._epoch_complete() and not self._epoch_pinned:
            self.sampler.set_epoch(self.sampler.epoch + 1)
        self._epoch_pinned = False
        if self._warm_start:  # overlap the first chunks' download with worker start-up
            self.dataset.prefetch_plan(self.sampler.epoch, self.sampler.consumed // self.sampler.global_batch_size - 1)
        if len(self.sampler):  # (no worker start-up for an epoch with nothing left)
            for batch_epoch, step, batch in self._loader:
                self.sampler.consumed = self.sampler.consumed_after(step, batch_epoch)
                yield batch
        # A complete pass: every rank has passed every step of the epoch (a rank may get no batch
        # at a "partial" last step), so all ranks agree on the state.
        self.sampler.consumed = max(self.sampler.consumed, self._epoch_end())

    def __repr__(self) -> str:
        return (f"TokenLoader(windows={self.sampler.num_samples}, batch_size={self.batch_size}, rank={self.rank}/"
                f"{self.world_size}, shuffle={self.shuffle!r}, seed={self.seed}, epoch={self.epoch}, "
                f"consumed={self.consumed}, workers={self.num_workers})")


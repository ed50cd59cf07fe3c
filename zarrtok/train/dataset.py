"""``TokenDataset``: fixed-length ``(inputs, labels)`` windows over a split, for any ``seq_len``.

Window arithmetic (identical to Archai's ``FastHfDataset``): for ``N`` tokens and sequence length
``L`` there are ``(N - 1) // L`` windows; window ``i`` is ``x = tokens[i*L : i*L + L + 1]`` returned
as ``(x[:-1], x[1:])`` int64 tensors. Neighbouring windows share one boundary token; the tail
that cannot fill a window is dropped.
"""

from __future__ import annotations

import operator
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from ..read.source import as_token_source
from .windows import WindowLayout, document_outputs


def num_windows(num_tokens: int, seq_len: int) -> int:
    """Number of windows of ``seq_len`` (+1 label token) in ``num_tokens`` tokens."""
    return max(0, (num_tokens - 1) // seq_len)


#: ``label_format`` values: ``"shifted"`` (``labels[j]`` is the target of ``input_ids[j]``) and ``"hf"``
#: (labels aligned with ``input_ids``, as ``transformers`` causal LMs expect; they shift internally).
LABEL_FORMATS = ("shifted", "hf")
#: The key of a dict item's labels in the ``"shifted"`` format: never ``"labels"``, so a shifted target can
#: not be handed to a ``transformers`` model (which would shift it again and learn token ``t + 2``).
SHIFTED_LABELS_KEY = "next_token_labels"


def check_label_format(label_format: Any) -> str:
    if label_format not in LABEL_FORMATS:
        raise ValueError(f"label_format must be one of {LABEL_FORMATS}, got {label_format!r}")
    return label_format


def hf_labels(shifted: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """HF-aligned labels (a new contiguous tensor) from shifted ones (``[..., L]``): ``out[..., 0] =
    ignore_index``, ``out[..., j] = shifted[..., j - 1]``. ``transformers`` scores ``logits[j]`` against
    ``out[j + 1] = shifted[j]``, so the window's last target is not scored (masks carry over exactly)."""
    out = torch.empty_like(shifted, memory_format=torch.contiguous_format)
    out[..., 0] = ignore_index
    out[..., 1:] = shifted[..., :-1]
    return out


class WindowBatch(list):
    """The list of samples returned by ``__getitems__``.

    It is an ordinary list (any collate function works) of ``(inputs, labels)`` pairs, or of dicts
    when the dataset returns dicts, and also carries the whole batch as ``[batch, seq_len]`` int64
    tensors: ``.inputs`` and ``.labels`` (always the *shifted* labels: ``labels[:, j]`` is the target
    of ``inputs[:, j]``), ``.item_labels`` (the labels the items carry, in ``.label_format``),
    ``.extras`` (batch-level outputs: ``position_ids``, ``cu_seqlens``, ``max_seqlen``,
    ``attention_mask`` when requested) and ``.indices`` (the window indices), so
    :func:`collate_windows` and :func:`zarrtok.loader.collate_dict` can return them without copying.
    ``inputs`` and the label tensors never share memory and are contiguous; the samples are row views
    of them. Dict items use the keys ``input_ids`` and ``labels`` (``"hf"``) or ``input_ids`` and
    ``next_token_labels`` (``"shifted"``).
    """

    def __init__(self, inputs: torch.Tensor, labels: torch.Tensor, *, extras: dict[str, Any] | None = None,
                 indices: Sequence[int] | None = None, as_dict: bool = False, label_format: str = "shifted",
                 ignore_index: int = -100):
        self.inputs = inputs
        self.labels = labels
        self.label_format = check_label_format(label_format)
        self.item_labels = labels if label_format == "shifted" else hf_labels(labels, ignore_index)
        self.extras = extras or {}
        self.indices = list(indices) if indices is not None else None
        # where the batch sits in its epoch (set by __getitems__ from an IndexBatch): the loader's bookkeeping
        self.epoch = self.step = -1
        if as_dict:
            key = "labels" if label_format == "hf" else SHIFTED_LABELS_KEY
            per_row = {k: v for k, v in self.extras.items() if k in ("position_ids", "attention_mask")}
            super().__init__(
                {"input_ids": x, key: y, **{k: v[i] for k, v in per_row.items()}}
                for i, (x, y) in enumerate(zip(inputs, self.item_labels))
            )
        else:
            super().__init__(zip(inputs, self.item_labels))


def collate_windows(batch: Sequence[Any]) -> Any:
    """DataLoader ``collate_fn``: ``(inputs, labels)`` batch tensors, without a copy for a :class:`WindowBatch`."""
    if isinstance(batch, WindowBatch):
        return batch.inputs, batch.item_labels
    return default_collate(batch)


class _ClosedTokens:
    """Stands in for the token source of a closed dataset: any use raises a clear error."""

    def __init__(self, reason: str):
        self._reason = reason

    def __getattr__(self, name: str) -> Any:
        raise ValueError(self._reason)

    def __len__(self) -> int:
        raise ValueError(self._reason)


class PlanReadAhead:
    """Read-ahead from a batch sampler's plan (shared by :class:`TokenDataset` and the mixture).

    Needs ``_plan`` (with ``upcoming(epoch, step, count)`` and ``batch_size``), ``_plan_next``,
    ``_lookahead`` (windows) and ``prefetch_windows(windows)``. Every ``lookahead / 4`` windows'
    worth of steps it prefetches the next ``lookahead`` windows; a new epoch re-triggers it.
    """

    _plan: Any
    _plan_next: tuple[int, int]
    _lookahead: int

    def prefetch_windows(self, windows: Any) -> None:
        raise NotImplementedError

    def prefetch_plan(self, epoch: int, step: int) -> None:
        """Start fetching the chunks of the next ``lookahead`` windows the plan serves after global
        step ``step`` of ``epoch`` (``step=-1``: from the epoch's start)."""
        if self._plan is not None and self._lookahead:
            self.prefetch_windows(self._plan.upcoming(epoch, step, self._lookahead))

    def _plan_prefetch(self, epoch: int, step: int) -> None:
        if not self._lookahead:
            return
        due_epoch, due_step = self._plan_next
        if epoch == due_epoch and due_step - self._lookahead <= step < due_step:
            return
        batch = max(1, getattr(self._plan, "batch_size", 1))
        self.prefetch_plan(epoch, step)
        self._plan_next = (epoch, step + max(1, self._lookahead // (4 * batch)))


class TokenDataset(PlanReadAhead, Dataset):
    """Windows of ``seq_len`` tokens over one split (a map-style ``torch`` dataset).

    ``tokens`` is any token source with ``len()``, ``dtype``, ``read(a, b)`` and ``read_into(a, b,
    out)``: a :class:`~zarrtok.chunks.TokenArray` (memory-mapped chunk files, or ranged GETs / a
    chunk cache for remote stores) or a shared-memory copy. Pickling sends that source's small
    descriptor, never tokens.

    Default windows are Archai's (module docstring) and items are ``(inputs, labels)``. Options
    (:class:`~zarrtok.windows.WindowLayout` has the exact arithmetic):

    * ``stride`` (overlapping windows for evaluation; ``mask_overlap=True`` hides labels an earlier
      window already scored), ``drop_last=False`` (pad the last window with ``pad_id`` inputs and
      ``ignore_index`` labels), ``bos_id`` (inputs start with BOS; the window's tokens are all labels);
    * with ``doc_offsets`` (``TokenStore.documents(split)``): ``document_outputs=True`` adds
      ``position_ids`` that restart at each document start and the batch's ``cu_seqlens`` /
      ``max_seqlen`` (flash-attention varlen form); ``mask_document_boundaries=True`` sets the label
      that crosses from one document into the next to ``ignore_index``.

    With ``document_outputs`` (or ``as_dict=True``) an item is a dict ``{"input_ids", "labels",
    "position_ids"?, "attention_mask"?}``; ``attention_mask`` comes with ``drop_last=False``.

    ``label_format`` (the loader's option) says how item labels line up with the inputs, so dict
    items are never ambiguous:

    * ``"hf"`` — the default for dict items: ``labels`` aligned with ``input_ids`` as
      ``transformers`` causal LMs expect (they shift internally; ``labels[0]`` is ``ignore_index``
      and the window's last target is not scored), so ``model(**item_batch).loss`` is the next-token
      loss and ``transformers.default_data_collator`` works on the items;
    * ``"shifted"`` — the default for ``(inputs, labels)`` tuples: ``labels[j]`` is the target of
      ``inputs[j]`` (a plain ``cross_entropy(logits, labels)`` loop). Dict items then carry it as
      ``next_token_labels`` (never ``labels``, which a ``transformers`` model would shift again).

    Item tensors are contiguous and inputs never share memory with labels (writing one never
    changes the other).
    """

    def __init__(self, tokens: Any, seq_len: int, *, split: str | None = None, stride: int | None = None,
                 bos_id: int | None = None, drop_last: bool = True, pad_id: int = 0, ignore_index: int = -100,
                 mask_overlap: bool = False, doc_offsets: Any = None, document_outputs: bool = False,
                 mask_document_boundaries: bool = False, as_dict: bool = False, label_format: str | None = None):
        if isinstance(seq_len, bool) or not isinstance(seq_len, (int, np.integer)):
            raise TypeError(f"seq_len must be an integer, got {type(seq_len).__name__}")
        seq_len = int(seq_len)
        tokens = as_token_source(tokens)
        n = len(tokens)
        name = f"split {split!r}" if split else "the token stream"
        if seq_len <= 0:
            raise ValueError(f"seq_len must be positive, got {seq_len}")
        self.layout = WindowLayout(n, seq_len, stride=stride, bos_id=bos_id, drop_last=drop_last, pad_id=pad_id,
                                   ignore_index=ignore_index, mask_overlap=mask_overlap)
        if len(self.layout) == 0:
            raise ValueError(
                f"seq_len={seq_len} is larger than {name} allows: it has {n} tokens, "
                f"so seq_len can be at most {max(0, n - self.layout.read_length + seq_len)}"
                + ("" if not drop_last else " (or pass drop_last=False for one padded window)")
            )
        if (document_outputs or mask_document_boundaries) and doc_offsets is None:
            raise ValueError("document_outputs / mask_document_boundaries need doc_offsets "
                             "(TokenStore.dataset passes the split's document offsets)")
        self.doc_offsets = None if doc_offsets is None else np.asarray(doc_offsets, dtype=np.int64)
        if self.doc_offsets is not None and (self.doc_offsets.ndim != 1 or self.doc_offsets[-1] != n):
            raise ValueError(f"doc_offsets must be 1-D and end at the number of tokens ({n})")
        self.tokens = tokens
        self.seq_len = seq_len
        self.split = split
        self.num_tokens = n
        self.document_outputs = bool(document_outputs)
        self.mask_document_boundaries = bool(mask_document_boundaries)
        self.as_dict = bool(as_dict or document_outputs)
        if label_format is None:
            label_format = "hf" if self.as_dict else "shifted"
        self.label_format = check_label_format(label_format)
        self._simple = (self.layout.stride == seq_len and bos_id is None and drop_last and not mask_overlap
                        and not document_outputs and not mask_document_boundaries)
        self._len = len(self.layout)
        self._order: np.ndarray | None = None
        self._position: np.ndarray | None = None
        self._lookahead = 0
        self._next_prefetch = 0
        self._plan: Any = None
        self._plan_next: tuple[int, int] = (-1, -1)

    def __len__(self) -> int:
        return self._len

    # -- Archai's FastHfDataset attributes, and closing -------------------------------------------
    @property
    def input_ids(self) -> Any:
        """The split's token source (Archai: the memory-mapped token array)."""
        return self.tokens

    @property
    def n_sequences(self) -> int:
        """Number of windows (Archai's name for ``len(dataset)``)."""
        return self._len

    @property
    def n_input_ids(self) -> int:
        """Tokens the windows read, up to the last one read (Archai: ``n_sequences * seq_len + 1``)."""
        return min(self.num_tokens, (self._len - 1) * self.layout.stride + self.layout.read_length)

    @property
    def closed(self) -> bool:
        return isinstance(self.tokens, _ClosedTokens)

    def close(self, reason: str | None = None) -> None:
        """Drop this dataset's reference to its tokens (maps are released once nothing else uses them);
        any later read raises ``ValueError`` with ``reason``. Idempotent; also ``with dataset: ...``."""
        if not self.closed:
            self._order = self._position = None
            self._plan = None
            self._lookahead = 0
            self.tokens = _ClosedTokens(reason or f"{self!r} is closed (used after close() / its with-block)")

    def __enter__(self) -> "TokenDataset":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TokenDataset(split={self.split!r}, seq_len={self.seq_len}, windows={self._len}, tokens={self.num_tokens})"

    def _normalize(self, index: Any) -> int:
        i = operator.index(index)
        n = self._len
        if i < 0:
            i += n
            if i < 0:
                raise IndexError(f"window index {index} out of range for {n} windows")
        elif i >= n:
            raise IndexError(f"window index {index} out of range for {n} windows")
        return i

    def window(self, index: int) -> np.ndarray:
        """The raw tokens window ``index`` reads (``seq_len + 1``, or ``seq_len`` with BOS; fewer for
        a padded last window), store dtype, possibly a read-only view."""
        i = self._normalize(index)
        return self.tokens.read(self.layout.read_start(i), self.layout.read_stop(i))

    def __getitem__(self, index: int) -> Any:
        if not self._simple:
            return self.__getitems__([index])[0]
        i = operator.index(index)
        n = self._len
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"window index {index} out of range for {n} windows")
        if self._order is not None:
            self._prefetch_after(i)
        start = i * self.seq_len
        raw = self.tokens.read(start, start + self.seq_len + 1)
        x = torch.from_numpy(raw[:-1].astype(np.int64))  # two new arrays: inputs and labels never alias
        if self.label_format == "hf":
            y = x.clone()
            y[0] = self.layout.ignore_index
        else:
            y = torch.from_numpy(raw[1:].astype(np.int64))
        if self.as_dict:
            return {"input_ids": x, ("labels" if self.label_format == "hf" else SHIFTED_LABELS_KEY): y}
        return x, y

    def __getitems__(self, indices: Sequence[int]) -> WindowBatch:
        """A batch in one call: fills one preallocated int64 array (remote stores fetch the batch's
        byte ranges concurrently). ``indices`` may carry ``epoch``/``step`` (an
        :class:`~zarrtok.sampling.IndexBatch`) for plan-driven read-ahead (:meth:`set_read_ahead`)."""
        normalized = [self._normalize(index) for index in indices]
        if normalized:
            if self._order is not None:
                self._prefetch_after(normalized[-1])
            if self._plan is not None and getattr(indices, "step", None) is not None:
                self._plan_prefetch(indices.epoch, indices.step)
        if self._simple:
            L = self.seq_len
            out = np.empty((len(normalized), L + 1), dtype=self.tokens.dtype)
            self._read_rows([i * L for i in normalized], L + 1, out)
            # one read of [B, L + 1] in the store dtype, cast into two contiguous int64 halves of ONE
            # [2, B, L] buffer: they never alias (disjoint memory), and a DataLoader worker still hands the
            # batch over as one shared-memory storage (benchmarks/local_read.py, 16 x 2048, 2 workers, same
            # run vs Archai: two separate int64 arrays 1.34x, one [2, B, L] buffer 1.56x)
            pair = np.empty((2, len(normalized), L), dtype=np.int64)
            np.copyto(pair[0], out[:, :L])
            np.copyto(pair[1], out[:, 1:])
            both = torch.from_numpy(pair)
            batch = WindowBatch(both[0], both[1], indices=normalized,
                                as_dict=self.as_dict, label_format=self.label_format,
                                ignore_index=self.layout.ignore_index)
        else:
            batch = self._general_batch(np.asarray(normalized, dtype=np.int64))
        batch.epoch, batch.step = getattr(indices, "epoch", -1), getattr(indices, "step", -1)
        return batch

    def _read_rows(self, starts: Sequence[int], n: int, out: np.ndarray) -> None:
        self.tokens.read_batch_into(starts, n, out)

    def _general_batch(self, idx: np.ndarray) -> WindowBatch:
        layout = self.layout
        R, N = layout.read_length, self.num_tokens
        raw = np.zeros((idx.size, R), dtype=np.int64)
        starts = idx * layout.stride
        full = starts + R <= N
        if full.all():
            self._read_rows(starts.tolist(), R, raw)
        else:
            rows = np.flatnonzero(full)
            if rows.size:
                part = np.empty((rows.size, R), dtype=np.int64)
                self._read_rows(starts[rows].tolist(), R, part)
                raw[rows] = part
            for row in np.flatnonzero(~full):  # the padded last window reads what exists
                a = int(starts[row])
                self.tokens.read_into(a, N, raw[row, : N - a])
        inputs, labels = layout.assemble(idx, raw)
        extras: dict[str, Any] = {}
        with_docs = self.doc_offsets is not None and (self.document_outputs or self.mask_document_boundaries)
        if with_docs or not layout.drop_last:
            input_pos, label_pos = layout.positions(idx)
        if with_docs:
            docs = document_outputs(self.doc_offsets, input_pos, label_pos, ignore_index=layout.ignore_index,
                                    labels=labels if self.mask_document_boundaries else None)
            if self.mask_document_boundaries:
                labels = docs["labels"]
            if self.document_outputs:
                extras["position_ids"] = torch.from_numpy(docs["position_ids"])
                extras["cu_seqlens"] = torch.from_numpy(docs["cu_seqlens"])
                extras["max_seqlen"] = docs["max_seqlen"]
        if not layout.drop_last:  # real tokens and the BOS slot (both positions -1 only past the end / for BOS)
            mask = input_pos >= 0
            if layout.has_bos:
                mask[:, 0] = True
            extras["attention_mask"] = torch.from_numpy(mask.astype(np.int64))
        return WindowBatch(torch.from_numpy(inputs), torch.from_numpy(labels), extras=extras, indices=idx.tolist(),
                           as_dict=self.as_dict, label_format=self.label_format, ignore_index=layout.ignore_index)

    # -- read-ahead ------------------------------------------------------------------------------
    def set_access_order(self, indices: Sequence[int] | None, *, lookahead_windows: int | None = None,
                         prefetch_now: bool = False) -> None:
        """Tell the dataset the order windows will be requested in (e.g. ``list(sampler)``).

        Remote stores then prefetch the chunks of upcoming windows (``readahead`` chunks ahead) on a
        background thread pool. Call it before creating the DataLoader iterator (workers get a copy)
        and again for each epoch. ``None`` turns read-ahead off. No effect on local stores.

        ``prefetch_now=True`` starts fetching the first windows' chunks in this process at once,
        overlapping the download with DataLoader worker start-up. Use it when this process reads
        the windows itself (``num_workers=0``) or the store has a shared ``cache_dir`` (workers then
        find the chunks on disk, or wait for this fetch instead of repeating it); otherwise workers
        cannot use what this process fetched.
        """
        if indices is None:
            self._order = self._position = None
            return
        order = np.asarray(indices, dtype=np.int64)
        position = np.full(self._len, -1, dtype=np.int64)
        position[order] = np.arange(order.size, dtype=np.int64)
        self._order, self._position = order, position
        self._lookahead = self._lookahead_windows(lookahead_windows)
        self._next_prefetch = 0
        if prefetch_now and self._lookahead and order.size:
            self._prefetch_range(0)

    def set_read_ahead(self, plan: Any, *, lookahead_windows: int | None = None) -> None:
        """Read-ahead driven by the batch sampler instead of a materialised order.

        ``plan`` has ``upcoming(epoch, step, count)`` (e.g. a
        :class:`~zarrtok.sampling.GlobalBatchSampler`): when a batch arrives as an
        :class:`~zarrtok.sampling.IndexBatch` (it knows its epoch and step), the chunks of the next
        windows this rank will read, continuing into the next epoch, are prefetched. Works with
        persistent DataLoader workers (nothing to update per epoch). :meth:`prefetch_plan` starts
        it by hand (e.g. in the main process before workers start). ``None`` turns it off. No
        effect on local stores.
        """
        self._plan = plan
        self._plan_next = (-1, -1)
        self._lookahead = self._lookahead_windows(lookahead_windows) if plan is not None else 0

    def _lookahead_windows(self, requested: int | None) -> int:
        readahead = self.tokens.readahead
        if not readahead:
            return 0
        if requested is not None:
            return int(requested)
        chunk = self.tokens.chunk_size
        return min(1 << 16, max(1, readahead * max(1, chunk // self.layout.stride)))

    def prefetch_windows(self, windows: Any) -> None:
        """Start fetching the chunks of these windows (in order of first use) in the background."""
        windows = np.asarray(windows, dtype=np.int64)
        if not windows.size or not self.tokens.readahead:
            return
        starts = windows * self.layout.stride
        ends = np.minimum(starts + self.layout.read_length, self.num_tokens) - 1
        # the chunk each window starts in and the one it ends in (they differ when it straddles)
        chunks = self.tokens.chunk_of(np.stack([starts, ends], axis=1).ravel())
        _, first = np.unique(chunks, return_index=True)
        # every distinct chunk, in order of first use (cached or in-flight ones are no-ops)
        self.tokens.prefetch_chunks(chunks[np.sort(first)][: 4 * max(1, self.tokens.readahead) + 8])

    def _prefetch_after(self, index: int) -> None:
        if not self._lookahead:
            return
        p = int(self._position[index])
        if p < self._next_prefetch - self._lookahead:  # order restarted (new epoch in the same process)
            self._next_prefetch = 0
        if p < self._next_prefetch:
            return
        self._prefetch_range(p + 1)
        self._next_prefetch = p + max(1, self._lookahead // 4)

    def _prefetch_range(self, p: int) -> None:
        """Prefetch the chunks of the ``lookahead`` windows from position ``p`` of the access order."""
        self.prefetch_windows(self._order[p : p + self._lookahead])

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


def num_windows(num_tokens: int, seq_len: int) -> int:
    """Number of windows of ``seq_len`` (+1 label token) in ``num_tokens`` tokens."""
    return max(0, (num_tokens - 1) // seq_len)


def window_bounds(index: int, seq_len: int) -> tuple[int, int]:
    """Token range ``[start, stop)`` of window ``index`` (``seq_len + 1`` tokens)."""
    start = index * seq_len
    return start, start + seq_len + 1


class WindowBatch(list):
    """The list of ``(inputs, labels)`` samples returned by ``__getitems__``.

    It is an ordinary list (any collate function works), and also carries the whole batch as two
    ``[batch, seq_len]`` int64 tensors (``.inputs``, ``.labels``) that the samples are views of, so
    :func:`collate_windows` can return them without copying.
    """

    def __init__(self, inputs: torch.Tensor, labels: torch.Tensor):
        super().__init__(zip(inputs, labels))
        self.inputs = inputs
        self.labels = labels


def collate_windows(batch: Sequence[Any]) -> Any:
    """DataLoader ``collate_fn``: ``(inputs, labels)`` batch tensors, without a copy for a :class:`WindowBatch`."""
    if isinstance(batch, WindowBatch):
        return batch.inputs, batch.labels
    return default_collate(batch)


class TokenDataset(Dataset):
    """Windows of ``seq_len`` tokens over one split (a map-style ``torch`` dataset).

    ``tokens`` is any token source with ``len()``, ``dtype``, ``read(a, b)`` and ``read_into(a, b,
    out)``: a :class:`~zarrtok.chunks.TokenArray` (memory-mapped chunk files, or Zarr for remote
    stores) or a shared-memory copy. Pickling sends that source's small descriptor, never tokens.
    """

    def __init__(self, tokens: Any, seq_len: int, *, split: str | None = None):
        if isinstance(seq_len, bool) or not isinstance(seq_len, (int, np.integer)):
            raise TypeError(f"seq_len must be an integer, got {type(seq_len).__name__}")
        seq_len = int(seq_len)
        n = len(tokens)
        name = f"split {split!r}" if split else "the token stream"
        if seq_len <= 0:
            raise ValueError(f"seq_len must be positive, got {seq_len}")
        if seq_len > n - 1:
            raise ValueError(
                f"seq_len={seq_len} is larger than {name} allows: it has {n} tokens, "
                f"so seq_len can be at most {max(0, n - 1)}"
            )
        self.tokens = tokens
        self.seq_len = seq_len
        self.split = split
        self.num_tokens = n
        self._len = num_windows(n, seq_len)
        self._order: np.ndarray | None = None
        self._position: np.ndarray | None = None
        self._lookahead = 0
        self._next_prefetch = 0

    def __len__(self) -> int:
        return self._len

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
        """The ``seq_len + 1`` raw tokens of window ``index`` (store dtype, possibly a read-only view)."""
        start = self._normalize(index) * self.seq_len
        return self.tokens.read(start, start + self.seq_len + 1)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        i = operator.index(index)
        n = self._len
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"window index {index} out of range for {n} windows")
        if self._order is not None:
            self._prefetch_after(i)
        start = i * self.seq_len
        x = torch.from_numpy(self.tokens.read(start, start + self.seq_len + 1).astype(np.int64))
        return x[:-1], x[1:]

    def __getitems__(self, indices: Sequence[int]) -> WindowBatch:
        """A batch in one call: fills one preallocated ``[len(indices), seq_len + 1]`` int64 array
        (remote stores fetch the batch's byte ranges concurrently)."""
        L = self.seq_len
        out = np.empty((len(indices), L + 1), dtype=np.int64)
        normalized = [self._normalize(index) for index in indices]
        if self._order is not None and normalized:
            self._prefetch_after(normalized[-1])
        tokens = self.tokens
        if hasattr(tokens, "read_batch_into"):
            tokens.read_batch_into([i * L for i in normalized], L + 1, out)
        else:
            read_into = tokens.read_into
            for row, i in enumerate(normalized):
                read_into(i * L, i * L + L + 1, out[row])
        t = torch.from_numpy(out)
        return WindowBatch(t[:, :-1], t[:, 1:])

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
        readahead = int(getattr(self.tokens, "readahead", 0) or 0)
        chunk = max((getattr(r, "chunk_size", 0) for r in getattr(self.tokens, "readers", [])), default=0)
        if lookahead_windows is None:
            lookahead_windows = min(1 << 16, max(1, readahead * max(1, chunk // self.seq_len)))
        self._order, self._position = order, position
        self._lookahead = int(lookahead_windows) if readahead else 0
        self._next_prefetch = 0
        if prefetch_now and self._lookahead and order.size:
            self._prefetch_range(0)

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
        upcoming = self._order[p : p + self._lookahead]
        if upcoming.size:
            starts = upcoming * self.seq_len
            # the chunk each upcoming window starts in and the one it ends in (they differ when it straddles)
            chunks = self.tokens.chunk_of(np.stack([starts, starts + self.seq_len], axis=1).ravel())
            _, first = np.unique(chunks, return_index=True)
            # every distinct chunk of the upcoming windows, in order of first use (cached ones are no-ops)
            self.tokens.prefetch_chunks(chunks[np.sort(first)][: 4 * max(1, self.tokens.readahead) + 8])

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
        start = i * self.seq_len
        x = torch.from_numpy(self.tokens.read(start, start + self.seq_len + 1).astype(np.int64))
        return x[:-1], x[1:]

    def __getitems__(self, indices: Sequence[int]) -> WindowBatch:
        """A batch in one call: fills one preallocated ``[len(indices), seq_len + 1]`` int64 array."""
        L = self.seq_len
        out = np.empty((len(indices), L + 1), dtype=np.int64)
        read_into = self.tokens.read_into
        for row, index in enumerate(indices):
            start = self._normalize(index) * L
            read_into(start, start + L + 1, out[row])
        t = torch.from_numpy(out)
        return WindowBatch(t[:, :-1], t[:, 1:])

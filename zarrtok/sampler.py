"""Samplers: the order windows are served in.

``ChunkShuffleSampler`` is the object-storage friendly order: chunks are shuffled, then the
windows of a block of a few consecutive-in-the-shuffle chunks are shuffled together, so each chunk
is fetched about once per epoch while the order still looks random to the model. Deterministic
from ``(seed, epoch)``; every window is yielded exactly once per epoch.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
from torch.utils.data import Sampler


class ChunkShuffleSampler(Sampler[int]):
    """Chunk-local shuffle over a :class:`~zarrtok.dataset.TokenDataset` (see module docstring)."""

    def __init__(self, dataset, *, seed: int = 0, epoch: int = 0, block_chunks: int = 4):
        if block_chunks < 1:
            raise ValueError(f"block_chunks must be >= 1, got {block_chunks}")
        self.dataset = dataset
        self.seed = int(seed)
        self.epoch = int(epoch)
        self.block_chunks = int(block_chunks)

    def set_epoch(self, epoch: int) -> None:
        """Use the order of ``epoch`` (a new permutation for every epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def order(self) -> np.ndarray:
        """The epoch's window indices as an int64 array."""
        n = len(self.dataset)
        windows = np.arange(n, dtype=np.int64)
        chunk_of = getattr(self.dataset.tokens, "chunk_of", None)
        chunks = chunk_of(windows * self.dataset.seq_len) if chunk_of is not None else np.zeros(n, dtype=np.int64)
        rng = np.random.default_rng([self.seed, self.epoch])
        distinct = np.unique(chunks)
        shuffled = rng.permutation(distinct)
        rank = np.empty(int(distinct.max()) + 1 if distinct.size else 0, dtype=np.int64)
        rank[shuffled] = np.arange(shuffled.size)
        block = rank[chunks] // self.block_chunks
        # sort windows by (block, random key): blocks in shuffled-chunk order, windows shuffled inside
        return windows[np.lexsort((rng.random(n), block))]

    def __iter__(self) -> Iterator[int]:
        return iter(self.order().tolist())

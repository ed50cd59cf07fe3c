"""Samplers: the order windows are served in.

``ChunkShuffleSampler`` is the object-storage friendly order: chunks are shuffled, then the
windows of a block of a few consecutive-in-the-shuffle chunks are shuffled together, so each chunk
is fetched about once per epoch while the order still looks random to the model. Deterministic
from ``(seed, epoch)``; every window is yielded exactly once per epoch. For training with ranks,
workers and resume, use :class:`zarrtok.loader.TokenLoader` (``shuffle="chunk"``), which uses the
same order.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
from torch.utils.data import Sampler

from .sampling import WindowOrder


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
        """The epoch's window indices as an int64 array (:func:`zarrtok.sampling.chunk_local_order`)."""
        return np.array(WindowOrder.from_dataset(self.dataset, shuffle="chunk", seed=self.seed,
                                                 block_chunks=self.block_chunks).order(self.epoch))

    def __iter__(self) -> Iterator[int]:
        return iter(self.order().tolist())

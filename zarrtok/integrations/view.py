"""The view of a :class:`~zarrtok.train.loader.TokenLoader` that trainers (HF ``Trainer``, Lightning)
iterate: ``len()`` is a *full* epoch's batches on this rank — trainers derive epochs and step offsets
from it, while the loader's own ``len()`` counts the batches left after a resume — and the loader's
``set_epoch`` / ``state_dict`` / ``load_state_dict``. Framework-free; each integration subclasses it."""

from __future__ import annotations

from typing import Any, Iterator

from ..train.loader import TokenLoader
from ..train.sampling import GlobalBatchSampler


class FullEpochLoaderView:
    """A ``TokenLoader`` whose ``len()`` is a full epoch (see the module docstring)."""

    def __init__(self, loader: TokenLoader):
        self.loader = loader

    def __len__(self) -> int:
        s = self.loader.sampler
        return len(GlobalBatchSampler(s.order, batch_size=s.batch_size, rank=s.rank, world_size=s.world_size,
                                      remainder=s.remainder, epoch=s.epoch))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.loader)

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)

    def state_dict(self) -> dict[str, Any]:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loader.load_state_dict(state)

"""torchdata's StatefulDataLoader protocol (as torchtitan uses it): TokenLoader is a drop-in, and
StatefulDataLoader itself can serve a zarrtok dataset with zarrtok's batch sampler, in the same order."""

from __future__ import annotations

import functools
import itertools

import numpy as np
import pytest

pytest.importorskip("torchdata.stateful_dataloader")

from torch.distributed.checkpoint.stateful import Stateful as DCPStateful  # noqa: E402
from torchdata.stateful_dataloader import StatefulDataLoader  # noqa: E402
from torchdata.stateful_dataloader.stateful import Stateful as TorchdataStateful  # noqa: E402

from zarrtok.train.dataset import TokenDataset  # noqa: E402
from zarrtok.train.loader import TokenLoader, collate_dict  # noqa: E402
from zarrtok.train.sampling import GlobalBatchSampler  # noqa: E402

L, WINDOWS, B = 8, 30, 4


def _ds():
    return TokenDataset(np.arange(WINDOWS * L + 1, dtype=np.uint16), L)


def _loader(ds, workers=0):
    return TokenLoader(ds, batch_size=B, seed=7, shuffle="global", return_index=True, num_workers=workers)


def _indices(batches):
    return [b["index"].tolist() for b in batches]


class DataLoaderCheckpointer:
    """torchtitan's pattern: the checkpointer keeps any object with state_dict()/load_state_dict()."""

    def __init__(self, dataloader):
        assert isinstance(dataloader, TorchdataStateful) and isinstance(dataloader, DCPStateful)
        self.dataloader = dataloader

    def save(self):
        return {"dataloader": self.dataloader.state_dict()}

    def load(self, saved):
        self.dataloader.load_state_dict(saved["dataloader"])


def _stream(loader):
    """torchtitan's training loop: epoch after epoch over the same loader."""
    while True:
        yield from loader


@pytest.mark.parametrize("k", [0, 1, 3, 7, 9])  # 7 batches per epoch: 7 is the exact end of epoch 0
@pytest.mark.parametrize("workers", [0, 2])
def test_token_loader_round_trip_mid_epoch_as_a_stateful_dataloader(k, workers):
    ds = _ds()
    steps = 12
    full = _indices(itertools.islice(_stream(_loader(ds)), steps))
    assert sorted(w for b in full[:7] for w in b) == sorted(set(w for b in full[:7] for w in b))
    first = _loader(ds, workers)
    stream = _stream(first)
    head = _indices(itertools.islice(stream, k))
    saved = DataLoaderCheckpointer(first).save()
    del stream
    second = _loader(ds, workers)
    DataLoaderCheckpointer(second).load(saved)
    assert head + _indices(itertools.islice(_stream(second), steps - k)) == full


@pytest.mark.parametrize("workers", [0, 2])
def test_stateful_dataloader_wraps_the_dataset_and_batch_sampler(workers):
    ds = _ds()
    token_loader = _loader(ds)
    full = _indices(token_loader)
    collate = functools.partial(collate_dict, return_index=True)

    def stateful():
        sampler = GlobalBatchSampler(_loader(ds).order, batch_size=B, rank=0, world_size=1)
        return StatefulDataLoader(ds, batch_sampler=sampler, collate_fn=collate, num_workers=workers)

    sdl = stateful()
    assert _indices(sdl) == full  # the same batches, in the same order

    sdl = stateful()
    it = iter(sdl)
    head = _indices(next(it) for _ in range(3))
    state = sdl.state_dict()
    del it
    resumed = stateful()
    resumed.load_state_dict(state)
    rest = _indices(resumed)
    assert head + rest == full

    # the same checkpoint position through TokenLoader's own state gives the same remaining batches
    tl = _loader(ds, workers)
    it = iter(tl)
    for _ in range(3):
        next(it)
    again = _loader(ds)
    again.load_state_dict(tl.state_dict())
    assert _indices(again) == rest

"""Issue 12, point 3 (and the stateful protocols of point 5): a checkpoint taken anywhere, including at an
epoch's exact end, resumes with exactly the remaining batches of the uninterrupted run in the README loop
``for epoch in range(state["epoch"], E): loader.set_epoch(epoch); for batch in loader: ...``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from zarrtok.train.dataset import TokenDataset
from zarrtok.train.loader import TokenLoader

EPOCHS = 3
L = 8


def _dataset(windows: int = 30) -> TokenDataset:
    return TokenDataset(np.arange(windows * L + 1, dtype=np.uint16), L)


def _loader(ds, workers: int = 0, remainder: str = "drop") -> TokenLoader:
    return TokenLoader(ds, batch_size=4, seed=5, num_workers=workers, remainder=remainder, return_index=True)


def uninterrupted(ds, remainder="drop"):
    """Every batch of the README loop, and the checkpoint after each (index 0: before the first batch)."""
    loader = _loader(ds, remainder=remainder)
    batches, states = [], [loader.state_dict()]
    for epoch in range(EPOCHS):
        loader.set_epoch(epoch)
        for batch in loader:
            batches.append((epoch, batch["index"].tolist()))
            states.append(loader.state_dict())
    return batches, states


def resumed(ds, state, workers=0, remainder="drop"):
    loader = _loader(ds, workers, remainder)
    loader.load_state_dict(state)
    out = []
    for epoch in range(state["epoch"], EPOCHS):
        loader.set_epoch(epoch)
        for batch in loader:
            out.append((epoch, batch["index"].tolist()))
    return out


def test_checkpoint_at_the_end_of_an_epoch_does_not_train_an_extra_epoch():
    ds = _dataset()
    batches, states = uninterrupted(ds)
    per_epoch = len(batches) // EPOCHS
    end0 = states[per_epoch]
    assert (end0["epoch"], end0["consumed"]) == (0, 28)  # 30 windows, batches of 4, remainder dropped
    assert resumed(ds, end0) == batches[per_epoch:]
    # a state taken after the inner loop finished is the same
    loader = _loader(ds)
    loader.set_epoch(0)
    for _ in loader:
        pass
    assert loader.state_dict() == end0


@settings(max_examples=30, deadline=None)
@given(data=st.data(), windows=st.integers(4, 40), remainder=st.sampled_from(["drop", "pad", "partial"]))
def test_resume_from_any_checkpoint_gives_the_remaining_batches(data, windows, remainder):
    ds = _dataset(windows)
    batches, states = uninterrupted(ds, remainder)
    per_epoch = len(batches) // EPOCHS
    k = data.draw(st.sampled_from(sorted({0, per_epoch // 2, per_epoch, len(batches)}))
                  | st.integers(0, len(batches)), label="checkpoint after k batches")
    assert resumed(ds, states[k], remainder=remainder) == batches[k:]


@pytest.mark.slow
@pytest.mark.parametrize("where", ["start", "mid", "epoch_end", "run_end"])
def test_resume_with_two_workers(where):
    ds = _dataset()
    batches, states = uninterrupted(ds)
    per_epoch = len(batches) // EPOCHS
    k = {"start": 0, "mid": per_epoch + 3, "epoch_end": per_epoch, "run_end": len(batches)}[where]
    assert resumed(ds, states[k], workers=2) == batches[k:]


def test_iterating_without_set_epoch_still_moves_on_after_a_complete_epoch():
    ds = _dataset()
    loader = _loader(ds)
    first = [b["index"].tolist() for b in loader]
    second = [b["index"].tolist() for b in loader]
    assert loader.epoch == 1 and first != second and len(second) == 7
    loader.set_epoch(1)  # pinned to the complete current epoch: nothing left
    assert len(loader) == 0 and list(loader) == []
    loader.set_epoch(2)
    assert len(loader) == 7


# -- stateful-loader protocols --------------------------------------------------------------------------------
def test_torch_distributed_checkpoint_stateful_protocol(tmp_path):
    from torch.distributed.checkpoint.stateful import Stateful

    ds = _dataset()
    loader = _loader(ds)
    assert isinstance(loader, Stateful)
    it = iter(loader)
    head = [next(it)["index"].tolist() for _ in range(3)]
    import torch.distributed.checkpoint as dcp

    dcp.save({"data": loader}, checkpoint_id=str(tmp_path / "dcp"))
    fresh = _loader(ds)
    dcp.load({"data": fresh}, checkpoint_id=str(tmp_path / "dcp"))
    assert fresh.state_dict() == loader.state_dict()
    rest = [b["index"].tolist() for b in fresh]
    whole = [b["index"].tolist() for b in _loader(ds)]
    assert head + rest == whole


def test_stateful_dataloader_style_state_dict_round_trips_through_torch_save(tmp_path):
    """torchtitan-style: ``state_dict()`` of plain values, saved with ``torch.save``, restored with
    ``load_state_dict`` in a fresh loader (``weights_only`` load works: nothing but ints and strings)."""
    ds = _dataset()
    loader = _loader(ds)
    it = iter(loader)
    next(it)
    torch.save({"dataloader": loader.state_dict()}, tmp_path / "ckpt.pt")
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)["dataloader"]
    assert all(isinstance(v, (int, str)) for v in state.values())
    fresh = _loader(ds)
    fresh.load_state_dict(state)
    assert [b["index"].tolist() for b in fresh] == [b["index"].tolist() for b in it]

"""PyTorch Lightning with a zarrtok :class:`~zarrtok.train.loader.TokenLoader`: exact resume.

``ZarrtokDataModule`` is a ``LightningDataModule`` whose ``train_dataloader()`` serves a
``TokenLoader`` (shuffled, sharded over ranks by zarrtok itself: rank and world size come from the
``Trainer``), wrapped in :class:`LightningLoader`, the view Lightning's loops need:

* ``len()`` is a *full* epoch's batches on this rank (Lightning counts the batches already done in
  a resumed epoch on top of what the loader yields, so the loader's own ``len()`` — the batches
  *left* — would end a resumed epoch early);
* it is a stateful dataloader in Lightning's sense (``state_dict`` / ``load_state_dict``): the fit
  loop stores ``loader.state_dict()`` (seed, epoch, windows consumed) in every checkpoint under
  ``loops.fit_loop.state_dict.combined_loader`` and restores it on ``trainer.fit(ckpt_path=...)``;
  the DataModule's own ``state_dict`` holds the same state (restored into the loader when
  ``train_dataloader()`` builds it), so either copy resumes the position;
* Lightning's per-epoch ``set_epoch(epoch)`` (through ``.sampler``) reaches
  ``TokenLoader.set_epoch``, so a checkpoint at an epoch's end continues with the next epoch and a
  mid-epoch one with exactly the rest of its epoch. Lightning does not replace its sampler with a
  ``DistributedSampler`` (it is not a ``DataLoader``).

Validation data is not part of it: subclass and add a ``val_dataloader()`` (e.g.
``store.dataloader("validation", ..., shuffle=False)``), or pass ``val_dataloaders=`` to ``fit``.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl

from ..train.loader import TokenLoader
from .view import FullEpochLoaderView

__all__ = ["LightningLoader", "ZarrtokDataModule"]


class _EpochSetter:
    """What Lightning finds at ``dataloader.sampler``: its ``set_epoch`` goes to the TokenLoader's."""

    def __init__(self, loader: TokenLoader):
        self._loader = loader

    def set_epoch(self, epoch: int) -> None:
        self._loader.set_epoch(epoch)


class LightningLoader(FullEpochLoaderView):
    """A ``TokenLoader`` as Lightning's fit loop sees it (module docstring); ``.loader`` is the
    ``TokenLoader``, other attributes are looked up on it."""

    def __init__(self, loader: TokenLoader):
        super().__init__(loader)
        self.sampler = _EpochSetter(loader)

    def __getattr__(self, name: str) -> Any:
        if name == "loader":  # not yet set (e.g. while unpickling)
            raise AttributeError(name)
        return getattr(self.loader, name)

    def __repr__(self) -> str:
        return f"LightningLoader({self.loader!r})"


class ZarrtokDataModule(pl.LightningDataModule):
    """Training batches from a zarrtok store (or dataset, or ready loader), resumable exactly.

    Give one of:

    * ``store`` (a :class:`zarrtok.Store` or its URL) with ``seq_len`` and ``batch_size``: the loader
      is ``store.dataloader(split, seq_len, batch_size, seed=seed, rank=..., world_size=...,
      **loader_options)`` (``loader_options``: window options, ``shuffle``, ``num_workers``,
      ``label_format``, ``return_index``, ...);
    * ``train_dataset`` (a ``TokenDataset`` / ``MixtureDataset``) with ``batch_size``;
    * ``train_loader``: a ready ``TokenLoader`` (it fixes its own rank and world size).

    ``rank`` / ``world_size`` default to the attached ``Trainer``'s ``global_rank`` / ``world_size``
    (else ``torch.distributed``'s). ``datamodule.loader`` is the ``TokenLoader`` once built.
    """

    def __init__(self, store: Any = None, *, split: str = "train", seq_len: int | None = None,
                 batch_size: int | None = None, seed: int = 0, train_dataset: Any = None,
                 train_loader: TokenLoader | None = None, **loader_options: Any):
        super().__init__()
        given = sum(x is not None for x in (store, train_dataset, train_loader))
        if given != 1:
            raise ValueError("give exactly one of store=, train_dataset= or train_loader=")
        if train_loader is None and batch_size is None:
            raise ValueError("batch_size is required unless train_loader= is given")
        if store is not None and seq_len is None:
            raise ValueError("seq_len is required with store=")
        if isinstance(store, str):
            import zarrtok

            store = zarrtok.open(store)
        self.store, self.split, self.seq_len, self.batch_size, self.seed = store, split, seq_len, batch_size, seed
        self.train_dataset = train_dataset
        self.loader_options = loader_options
        self.loader: TokenLoader | None = train_loader
        self._view: LightningLoader | None = None
        self._pending: dict[str, Any] | None = None

    def _rank_world(self) -> dict[str, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return {}
        return {"rank": trainer.global_rank, "world_size": trainer.world_size}

    def _build(self) -> TokenLoader:
        if self.loader is None:
            options = {**self._rank_world(), **self.loader_options}
            if self.store is not None:
                self.loader = self.store.dataloader(self.split, self.seq_len, self.batch_size, seed=self.seed,
                                                    **options)
            else:
                self.loader = TokenLoader(self.train_dataset, batch_size=self.batch_size, seed=self.seed, **options)
        if self._pending is not None:
            self.loader.load_state_dict(self._pending)
            self._pending = None
        return self.loader

    def train_dataloader(self) -> LightningLoader:
        loader = self._build()
        if self._view is None or self._view.loader is not loader:
            self._view = LightningLoader(loader)
        return self._view

    # -- checkpoints -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """``{"train_loader": loader.state_dict()}`` once the loader exists (Lightning stores it in
        every checkpoint; the fit loop also stores the same state as the dataloader's own)."""
        if self.loader is not None:
            return {"train_loader": self.loader.state_dict()}
        return {"train_loader": self._pending} if self._pending is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = state_dict.get("train_loader")
        if state is None:
            return
        if self.loader is not None:
            self.loader.load_state_dict(state)
        else:  # Lightning restores the DataModule before it asks for train_dataloader()
            self._pending = dict(state)

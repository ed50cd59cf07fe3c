"""``transformers.Trainer`` with a zarrtok :class:`~zarrtok.train.loader.TokenLoader`: exact resume.

``ZarrtokTrainer`` is a drop-in ``transformers.Trainer`` whose training batches come from a
``TokenLoader`` (shuffled, sharded over ranks by zarrtok itself, labels in the ``"hf"`` format):

* pass ``train_dataset=`` a :class:`~zarrtok.train.dataset.TokenDataset` (or ``MixtureDataset``) and
  the loader is built from the ``TrainingArguments`` (``per_device_train_batch_size``,
  ``data_seed``/``seed``, ``dataloader_num_workers``, ``dataloader_pin_memory``, rank and world size
  from ``args.process_index`` / ``args.world_size``), or pass a ready ``train_loader=``;
* every checkpoint directory gets ``zarrtok_loader_rank{r}.json`` (``loader.state_dict()``: seed, epoch,
  windows consumed);
* ``trainer.train(resume_from_checkpoint=...)`` (a path or ``True``) restores that state in a new
  process and continues with exactly the batches the uninterrupted run would have seen next.
  Nothing is re-read to skip: where ``transformers`` would call ``accelerate.skip_first_batches``
  (which needs a plain ``DataLoader``), the loader is positioned from its saved state instead (or,
  for a checkpoint without one, from the step count: the order is a pure function of seed and epoch).

The ``Trainer``'s own per-epoch ``set_epoch(epoch)`` calls are what ``TokenLoader.set_epoch``
expects, so a checkpoint at an epoch's end resumes with the next epoch, not an extra one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from typing import Any, Iterator

import transformers
import transformers.trainer as _hf_trainer_module
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from ..train.loader import TokenLoader
from .view import FullEpochLoaderView

__all__ = ["LOADER_STATE_NAME", "TrainerLoader", "ZarrtokTrainer", "loader_state_path"]

logger = logging.getLogger(__name__)

LOADER_STATE_NAME = "zarrtok_loader_rank{rank}.json"


def loader_state_path(checkpoint_dir: str | os.PathLike, rank: int = 0) -> str:
    """Where :class:`ZarrtokTrainer` keeps rank ``rank``'s loader state in a checkpoint directory."""
    return os.path.join(os.fspath(checkpoint_dir), LOADER_STATE_NAME.format(rank=rank))


class TrainerLoader(FullEpochLoaderView):
    """The ``TokenLoader`` as the ``Trainer`` sees it: ``len()`` is a *full* epoch's batches on this
    rank (the ``Trainer`` derives epochs and steps from it), and :meth:`skip_first_batches` positions
    the loader instead of re-reading batches. Everything else is the loader's."""

    def __init__(self, loader: TokenLoader):
        super().__init__(loader)
        self.dataset = loader.dataset
        self.batch_size = loader.batch_size

    def skip_first_batches(self, num_batches: int, epoch: int, restored: bool) -> "TrainerLoader":
        """Continue after ``num_batches`` batches of ``epoch`` (the ``Trainer``'s count). A state restored
        from the checkpoint wins (it is exact also after a change of ranks); it is checked against the count."""
        s = self.loader.sampler
        if not restored:
            self.loader.set_epoch(epoch)
            s.set_consumed(s.consumed_after(num_batches - 1) if num_batches > 0 else 0)
            return self
        if s.epoch != epoch or (num_batches > 0 and s.consumed != s.consumed_after(num_batches - 1)):
            logger.warning("the restored loader state (epoch %d, %d windows consumed) is not where the Trainer's "
                           "step count puts it (epoch %d, %d batches); continuing from the loader state",
                           s.epoch, s.consumed, epoch, num_batches)
        return self


@contextlib.contextmanager
def _skip_through(trainer: "ZarrtokTrainer") -> Iterator[None]:
    """While ``trainer`` trains, ``transformers.trainer.skip_first_batches`` positions a
    :class:`TrainerLoader` (every other dataloader goes to ``accelerate`` as before)."""
    original = getattr(_hf_trainer_module, "skip_first_batches", None)
    if original is None:  # a transformers without the hook: let the loader state alone decide
        saved, trainer.args.ignore_data_skip = trainer.args.ignore_data_skip, True
        try:
            yield
        finally:
            trainer.args.ignore_data_skip = saved
        return

    def skip_first_batches(dataloader: Any, num_batches: int = 0) -> Any:
        if isinstance(dataloader, TrainerLoader):
            n, ga = len(dataloader), max(1, trainer.args.gradient_accumulation_steps)
            steps = max(n // ga + int(n % ga > 0), 1)  # the Trainer's num_update_steps_per_epoch
            epoch = trainer.state.global_step // steps
            return dataloader.skip_first_batches(num_batches, epoch, trainer._zarrtok_restored)
        return original(dataloader, num_batches)

    _hf_trainer_module.skip_first_batches = skip_first_batches
    try:
        yield
    finally:
        _hf_trainer_module.skip_first_batches = original


class ZarrtokTrainer(transformers.Trainer):
    """``transformers.Trainer`` over a zarrtok ``TokenLoader``, resumable exactly (module docstring).

    ``train_loader``: a ready :class:`~zarrtok.train.loader.TokenLoader` (use ``label_format="hf"``);
    otherwise one is built from ``train_dataset`` (``loader_options`` are passed on, e.g.
    ``shuffle``, ``remainder``, ``read_ahead``).
    """

    def __init__(self, *args: Any, train_loader: TokenLoader | None = None,
                 loader_options: dict[str, Any] | None = None, **kwargs: Any):
        if train_loader is not None and kwargs.get("train_dataset") is None:
            kwargs["train_dataset"] = train_loader.dataset
        super().__init__(*args, **kwargs)
        self._zarrtok_loader = train_loader
        self._zarrtok_options = dict(loader_options or {})
        self._zarrtok_view: TrainerLoader | None = None
        self._zarrtok_pending: dict[str, Any] | None = None
        self._zarrtok_restored = False

    # -- the loader --------------------------------------------------------------------------------
    @property
    def train_loader(self) -> TokenLoader:
        """The ``TokenLoader`` training batches come from (built on first use)."""
        if self._zarrtok_loader is None:
            args = self.args
            options = {"shuffle": True, "label_format": "hf", "num_workers": args.dataloader_num_workers,
                       "pin_memory": args.dataloader_pin_memory, **self._zarrtok_options}
            if options["num_workers"]:
                options.setdefault("persistent_workers", args.dataloader_persistent_workers)
                if args.dataloader_prefetch_factor is not None:
                    options.setdefault("prefetch_factor", args.dataloader_prefetch_factor)
            seed = args.data_seed if args.data_seed is not None else args.seed
            self._zarrtok_loader = TokenLoader(self.train_dataset, batch_size=args.per_device_train_batch_size,
                                               seed=seed, rank=args.process_index, world_size=args.world_size,
                                               **options)
        return self._zarrtok_loader

    def get_train_dataloader(self) -> TrainerLoader:
        if self._zarrtok_view is None:
            self._zarrtok_view = TrainerLoader(self.train_loader)
        if self._zarrtok_pending is not None:
            self.train_loader.load_state_dict(self._zarrtok_pending)
            self._zarrtok_pending = None
            self._zarrtok_restored = True
        return self._zarrtok_view

    # -- checkpoints -------------------------------------------------------------------------------
    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        super()._save_checkpoint(model, trial)
        folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        if self._zarrtok_loader is not None and os.path.isdir(folder):
            path = loader_state_path(folder, self.train_loader.rank)
            with open(path + ".tmp", "w") as f:
                json.dump(self.train_loader.state_dict(), f)
            os.replace(path + ".tmp", path)

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any):
        if resume_from_checkpoint is True or resume_from_checkpoint == "True":
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"no valid checkpoint found in output directory ({self.args.output_dir})")
        self._zarrtok_pending, self._zarrtok_restored = None, False
        if resume_from_checkpoint and not self.args.ignore_data_skip:
            rank = self.train_loader.rank
            for path in (loader_state_path(resume_from_checkpoint, rank), loader_state_path(resume_from_checkpoint, 0)):
                if os.path.isfile(path):
                    with open(path) as f:
                        self._zarrtok_pending = json.load(f)
                    break
            else:
                logger.warning("%s has no zarrtok loader state; positioning the loader from the step count",
                               resume_from_checkpoint)
        with _skip_through(self):
            return super().train(resume_from_checkpoint, *args, **kwargs)

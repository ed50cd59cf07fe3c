"""PyTorch Lightning with a ZarrtokDataModule: checkpoints hold the loader position, and
``trainer.fit(ckpt_path=...)`` in a new process sees exactly the uninterrupted run's remaining batches."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("lightning")

from zarrtok.integrations.lightning import LightningLoader, ZarrtokDataModule  # noqa: E402
from zarrtok.train.dataset import TokenDataset  # noqa: E402
from zarrtok.train.loader import TokenLoader  # noqa: E402

RUN = os.path.join(os.path.dirname(__file__), "lightning_run.py")
EPOCH_STEPS = 4  # 32 windows of 32 tokens, batches of 8


def _start(tokens_path, ckpt_dir, record, *, max_steps=10, resume="-", workers=0):
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen([sys.executable, RUN, tokens_path, str(ckpt_dir), str(record), str(max_steps),
                             str(resume), str(workers)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=env, text=True)


def _wait(proc):
    output, _ = proc.communicate(timeout=170)
    assert proc.returncode == 0, output[-4000:]


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_lightning_resume_in_a_new_process_sees_the_uninterrupted_batches(tmp_path):
    tokens = np.random.default_rng(0).integers(0, 1000, 32 * 32 + 1).astype(np.uint16)
    path = str(tmp_path / "tokens.npy")
    np.save(path, tokens)
    full = _start(path, tmp_path / "full", tmp_path / "full.json")
    cut = _start(path, tmp_path / "run", tmp_path / "cut.json", max_steps=6)  # the "interrupted" run
    _wait(full)
    _wait(cut)
    want = json.load(open(tmp_path / "full.json"))
    assert want["steps_per_epoch"] == EPOCH_STEPS and len(want["batches"]) == 10
    windows = [w for b in want["batches"][:EPOCH_STEPS] for w in b]
    assert sorted(windows) == list(range(32))  # an epoch serves every window once
    assert json.load(open(tmp_path / "cut.json"))["batches"] == want["batches"][:6]

    # the checkpoint holds the loader state twice: the fit loop's stateful dataloader and the DataModule's
    ckpt = torch.load(tmp_path / "run" / "step=6.ckpt", weights_only=False)
    loops = ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert [(s["epoch"], s["consumed"]) for s in loops] == [(1, 16)]
    assert ckpt["ZarrtokDataModule"]["train_loader"] == loops[0]

    # resume at the exact end of epoch 0, mid epoch 1 (with 2 workers: any worker count resumes)
    procs = {k: _start(path, tmp_path / f"again{k}", tmp_path / f"resume{k}.json",
                       resume=tmp_path / "run" / f"step={k}.ckpt", workers=2 if k == 6 else 0) for k in (4, 6)}
    for p in procs.values():
        _wait(p)
    for k in procs:
        got = json.load(open(tmp_path / f"resume{k}.json"))
        assert got["batches"] == want["batches"][k:], f"resume from step={k}"
        assert got["final_state"] == want["final_state"]


def _ds():
    return TokenDataset(np.arange(32 * 8 + 1, dtype=np.uint16), 8)


def test_datamodule_state_restored_before_the_loader_exists():
    """Lightning restores the DataModule before it calls train_dataloader(): the state waits for the loader."""
    first = ZarrtokDataModule(train_dataset=_ds(), batch_size=4, seed=1, return_index=True)
    it = iter(first.train_dataloader())
    seen = [next(it)["index"].tolist() for _ in range(3)]
    state = first.state_dict()
    assert (state["train_loader"]["epoch"], state["train_loader"]["consumed"]) == (0, 12)
    rest = [b["index"].tolist() for b in it]

    second = ZarrtokDataModule(train_dataset=_ds(), batch_size=4, seed=1, return_index=True)
    second.load_state_dict(state)
    assert second.state_dict() == state
    view = second.train_dataloader()
    assert isinstance(view, LightningLoader) and isinstance(second.loader, TokenLoader)
    assert len(view) == 8  # a full epoch for Lightning's counting, whatever the position
    view.sampler.set_epoch(0)  # what Lightning's _set_sampler_epoch does at each epoch start
    assert [b["index"].tolist() for b in view] == rest
    assert len(seen) + len(rest) == 8


def test_datamodule_from_a_store(small_chunk_store):
    import zarrtok

    dm = ZarrtokDataModule(small_chunk_store.url, seq_len=16, batch_size=4, seed=2)
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape == (4, 16)
    assert dm.loader.seed == 2 and dm.loader.world_size == 1
    assert ZarrtokDataModule(zarrtok.open(small_chunk_store.url), seq_len=16, batch_size=4).train_dataloader()
    with pytest.raises(ValueError, match="exactly one"):
        ZarrtokDataModule(batch_size=4)
    with pytest.raises(ValueError, match="seq_len"):
        ZarrtokDataModule(small_chunk_store.url, batch_size=4)

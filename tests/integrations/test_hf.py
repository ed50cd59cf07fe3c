"""transformers.Trainer + accelerate with a zarrtok TokenLoader: exact resume across processes, HF labels."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("accelerate")
transformers = pytest.importorskip("transformers")

from zarrtok.train.dataset import TokenDataset  # noqa: E402
from zarrtok.train.loader import TokenLoader  # noqa: E402

RUN = os.path.join(os.path.dirname(__file__), "hf_trainer_run.py")
EPOCH_STEPS = 4  # 32 windows of 32 tokens, batches of 8


def _start(tokens_path, out, record, *, resume="-", stop_at=0, max_steps=10):
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen([sys.executable, RUN, tokens_path, str(out), str(record), str(max_steps), str(resume),
                             str(stop_at)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)


def _wait(proc):
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output[-4000:]


@pytest.mark.slow
def test_trainer_resume_in_a_new_process_sees_the_uninterrupted_batches(tmp_path):
    tokens = np.random.default_rng(0).integers(0, 1000, 32 * 32 + 1).astype(np.uint16)
    path = str(tmp_path / "tokens.npy")
    np.save(path, tokens)
    full, killed = _start(path, tmp_path / "full", tmp_path / "full.json"), \
        _start(path, tmp_path / "run", tmp_path / "killed.json", stop_at=6)
    _wait(full)
    _wait(killed)
    want = json.load(open(tmp_path / "full.json"))
    assert want["steps_per_epoch"] == EPOCH_STEPS and len(want["batches"]) == 10
    head = json.load(open(tmp_path / "killed.json"))["batches"]
    assert head == want["batches"][:6]  # the killed run saw the same first 6 batches, then died
    # resume from the kill point (mid epoch 1) and from checkpoint-4 (the exact end of epoch 0)
    procs = {k: _start(path, tmp_path / "run", tmp_path / f"resume{k}.json", resume=tmp_path / "run" / f"checkpoint-{k}")
             for k in (4, 6)}
    for p in procs.values():
        _wait(p)
    for k in procs:
        got = json.load(open(tmp_path / f"resume{k}.json"))["batches"]
        assert got == want["batches"][k:], f"resume from checkpoint-{k}"
    state = json.load(open(tmp_path / "run" / "checkpoint-4" / "zarrtok_loader_rank0.json"))
    assert (state["epoch"], state["consumed"]) == (0, 32)


def test_plain_trainer_cannot_skip_through_a_token_loader_but_zarrtok_trainer_can(tmp_path):
    """The crash of the issue, and the view ZarrtokTrainer hands the Trainer instead."""
    from accelerate import skip_first_batches

    from zarrtok.integrations.hf import TrainerLoader

    ds = TokenDataset(np.arange(1025, dtype=np.uint16), 32, as_dict=True)
    loader = TokenLoader(ds, batch_size=8, seed=1, label_format="hf")
    with pytest.raises(AttributeError, match="batch_sampler"):
        skip_first_batches(loader, 1)
    full = [b["input_ids"] for b in TokenLoader(ds, batch_size=8, seed=1, label_format="hf")]
    view = TrainerLoader(TokenLoader(ds, batch_size=8, seed=1, label_format="hf"))
    assert len(view) == 4
    view.skip_first_batches(3, epoch=0, restored=False)
    view.set_epoch(0)
    rest = [b["input_ids"] for b in view]
    assert len(rest) == 1 and torch.equal(rest[0], full[3])
    assert len(view) == 4  # a full epoch, whatever the position


def test_default_data_collator_on_dict_items_gives_the_next_token_loss():
    from transformers import GPT2Config, GPT2LMHeadModel, default_data_collator

    tokens = np.random.default_rng(1).integers(0, 300, 4000).astype(np.uint16)
    ds = TokenDataset(tokens, 16, as_dict=True)
    items = ds.__getitems__([0, 5, 9])
    batch = default_data_collator(list(items))
    assert set(batch) == {"input_ids", "labels"}
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=300, n_positions=16, n_embd=32, n_layer=1, n_head=2)).eval()
    with torch.no_grad():
        loss = model(**batch).loss
        logits = model(input_ids=batch["input_ids"]).logits
    target = torch.from_numpy(np.stack([tokens[i * 16 + 1 : i * 16 + 17] for i in (0, 5, 9)]).astype(np.int64))
    by_hand = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 300), target[:, :-1].reshape(-1))
    assert torch.allclose(loss, by_hand, atol=1e-6)

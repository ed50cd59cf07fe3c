"""Every ```python snippet of the README's "Training with ..." sections runs (``store``: a small store, ``out``: a temp dir); the
torchrun one as ``train.py`` of a two-rank ``torchrun`` (gloo) job, launched twice (the second resumes)."""

from __future__ import annotations

import os
import pathlib
import re
import socket
import subprocess
import sys

import pytest

import zarrtok

DOC = pathlib.Path(__file__).resolve().parents[2] / "README.md"
SNIPPETS = re.findall(r"^## (Training with [^\n]+)\n.*?```python\n(.*?)```", DOC.read_text(), re.S | re.M)
TORCHRUN = "Training with torchrun"
IN_PROCESS = [(t, c) for t, c in SNIPPETS if t != TORCHRUN]
NEEDS = {"Training with the Hugging Face Trainer": "accelerate", "Training with PyTorch Lightning": "lightning"}


def test_the_doc_has_snippets():
    titles = [t for t, _ in SNIPPETS]
    assert {"Training with a plain loop", "Training with the Hugging Face Trainer",
            "Training with PyTorch Lightning", TORCHRUN} <= set(titles)


@pytest.mark.slow
@pytest.mark.parametrize("title,code", IN_PROCESS, ids=[t for t, _ in IN_PROCESS])
def test_training_snippet_runs(title, code, small_chunk_store, tmp_path):
    if title in NEEDS:
        pytest.importorskip(NEEDS[title])
    exec(compile(code, f"README.md: {title}", "exec"),
         {"store": zarrtok.open(small_chunk_store.url), "out": str(tmp_path / "out")})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_torchrun_snippet_runs_on_two_ranks_and_resumes(small_chunk_store, tmp_path):
    import torch

    code = dict(SNIPPETS)[TORCHRUN]
    script = tmp_path / "train.py"
    script.write_text("import sys, zarrtok\nstore, out = zarrtok.open(sys.argv[1]), sys.argv[2]\n" + code)
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    states = []
    for _ in range(2):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
               "--master_addr=127.0.0.1", f"--master_port={_free_port()}", str(script), small_chunk_store.url,
               str(out)]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True, timeout=80)
        assert proc.returncode == 0, proc.stdout[-4000:]
        states.append(torch.load(out / "data.pt")["data"])
    # 3 steps of a global batch of 2 ranks x 4 windows per launch; the second launch continued the first
    loader = zarrtok.open(small_chunk_store.url).dataloader("train", 32, 8, seed=0)
    per_epoch = len(loader)
    total = [(s["epoch"] * per_epoch * 8 + s["consumed"]) for s in states]
    assert total == [24, 48] and states[0]["global_batch_size"] == 8

"""``torchrun`` with two gloo ranks on one machine: together the ranks see every window exactly once per
epoch, and a second launch resumes from a saved loader state with exactly the remaining batches."""

from __future__ import annotations

import collections
import json
import os
import socket
import subprocess
import sys

import pytest

import zarrtok

RUN = os.path.join(os.path.dirname(__file__), "torchrun_run.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(url, out, *, stop_at=0, resume="-"):
    os.makedirs(out, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
           "--master_addr=127.0.0.1", f"--master_port={_free_port()}", RUN, url, str(out), str(stop_at), str(resume)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)


def _wait(proc):
    output, _ = proc.communicate(timeout=150)
    assert proc.returncode == 0, output[-4000:]


def _records(out):
    return [json.load(open(os.path.join(out, f"rank{r}.json"))) for r in (0, 1)]


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_two_gloo_ranks_cover_each_epoch_once_and_resume_exactly(small_chunk_store, tmp_path):
    windows = len(zarrtok.open(small_chunk_store.url).dataset("train", 32))
    steps_epoch0 = -(-windows // 8)  # global batches of 2 ranks x 4 ("partial": the last one is smaller)
    stop_at = steps_epoch0 + 2  # mid epoch 1
    full, cut = _launch(small_chunk_store.url, tmp_path / "full"), \
        _launch(small_chunk_store.url, tmp_path / "cut", stop_at=stop_at)
    _wait(full)
    _wait(cut)
    want = _records(tmp_path / "full")
    for epoch in (0, 1):
        served = collections.Counter(w for rec in want for e, batch in rec["batches"] if e == epoch for w in batch)
        assert sorted(served) == list(range(windows)) and set(served.values()) == {1}, f"epoch {epoch}"
    assert want[0]["windows_all_ranks"] == 2 * windows

    cut_records = _records(tmp_path / "cut")
    for r in (0, 1):
        assert cut_records[r]["batches"] == want[r]["batches"][:stop_at]
    assert cut_records[0]["state"] == cut_records[1]["state"]  # every rank holds the same global state
    assert (cut_records[0]["state"]["epoch"], cut_records[0]["state"]["consumed"]) == (1, 16)
    state_file = tmp_path / "state.json"
    state_file.write_text(json.dumps(cut_records[0]["state"]))

    _wait(_launch(small_chunk_store.url, tmp_path / "resumed", resume=state_file))
    resumed = _records(tmp_path / "resumed")
    for r in (0, 1):
        assert resumed[r]["batches"] == want[r]["batches"][stop_at:], f"rank {r}"
        assert resumed[r]["state"] == want[r]["state"]

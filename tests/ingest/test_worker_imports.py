"""The import bill of a tokenizing worker: a worker entering through the pickle-free entry point
(:func:`zarrtok.ingest.plan.run_task_from_area`: spawned pool workers, ``concurrent.futures`` and
Dask workers) loads the tokenizer from the plan's ``tokenizer.json`` text and must never import
torch or transformers (``transformers.AutoTokenizer`` pulls torch in: ~280 MB and seconds per
worker), nor ``datasets`` when the plan reads JSON Lines. Checked in fresh interpreters, as
``tests/test_layering.py`` does."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import zarrtok
from zarrtok.ingest.builder import commit_build, plan_build

from ..conftest import write_jsonl

_CHILD = r"""
import json, sys
from zarrtok.ingest.plan import run_task_from_area
for k in range(int(sys.argv[3])):
    run_task_from_area(sys.argv[1], sys.argv[2], k, {})
print(json.dumps(sorted(m for m in ("torch", "transformers", "datasets") if m in sys.modules)))
"""


@pytest.fixture(scope="module")
def planned(tmp_path_factory, docs, tokenizer_dir):
    """The plans of one JSON Lines build, per encoder, every task run in one fresh interpreter."""
    tmp = tmp_path_factory.mktemp("worker-imports")
    data = write_jsonl(docs, tmp / "docs.jsonl")
    out = {}
    for encoder in ("gigatoken", "hf"):
        plan = plan_build("json", data_files=data, tokenizer_name=tokenizer_dir, output=str(tmp / f"out-{encoder}"),
                          shard_size=3000, batch_size=50, progress=False, encoder=encoder)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        run = subprocess.run([sys.executable, "-c", _CHILD, plan.area.url, plan.staging.url, str(len(plan.tasks))],
                             check=False, capture_output=True, text=True, env=env, timeout=120)
        assert run.returncode == 0, run.stderr[-3000:]
        out[encoder] = (plan, json.loads(run.stdout.strip().splitlines()[-1]))
    return out


@pytest.mark.parametrize("encoder", ["gigatoken", "hf"])
def test_run_task_from_area_imports_no_torch_or_transformers(planned, encoder):
    plan, loaded = planned[encoder]
    assert len(plan.tasks) > 1
    assert not {"torch", "transformers"} & set(loaded), f"a {encoder} worker imported {loaded}"


def test_run_task_from_area_on_json_lines_imports_no_datasets(planned):
    """The plan's reader is JSON Lines: ``datasets`` is for ``datasets`` sources only."""
    for encoder in ("gigatoken", "hf"):
        _plan, loaded = planned[encoder]
        assert "datasets" not in loaded, f"a JSON Lines {encoder} worker imported {loaded}"


@pytest.mark.parametrize("encoder", ["gigatoken", "hf"])
def test_tasks_run_in_a_fresh_interpreter_commit_the_tokens_of_a_build(planned, encoder, tokenizer_dir, docs,
                                                                       tmp_path):
    plan, _ = planned[encoder]
    store = commit_build(plan)
    same = zarrtok.build("json", data_files=write_jsonl(docs, tmp_path / "docs.jsonl"), tokenizer_name=tokenizer_dir,
                         output=str(tmp_path / "ref"), shard_size=3000, batch_size=50, progress=False, encoder=encoder)
    np.testing.assert_array_equal(np.asarray(store.tokens("train")), np.asarray(same.tokens("train")))
    np.testing.assert_array_equal(np.asarray(store.documents("train")), np.asarray(same.documents("train")))

"""Shared helpers for the plan / executor / resume tests."""

from __future__ import annotations

import numpy as np

import zarrtok

KW = dict(chunk_size=400, shard_size=2500, batch_size=25, progress=False, encoder="hf")


def corpus(tmp_path, docs):
    """Two JSON Lines files (one with blank lines) as one train split."""
    from ..conftest import write_jsonl

    a = write_jsonl(docs[:120], tmp_path / "a.jsonl")
    b = tmp_path / "b.jsonl"
    lines = [f'{{"text": {__import__("json").dumps(d)}}}' for d in docs[120:260]]
    b.write_text("\n\n".join(lines) + "\n")  # blank lines between rows
    return [a, str(b)]


def build(files, tokenizer_dir, out, **kw):
    return zarrtok.build("json", data_files=files, tokenizer_name=tokenizer_dir, output=str(out), **{**KW, **kw})


def contents(store):
    """Everything that must be identical across engines: tokens, document offsets, fingerprint."""
    out = {"fingerprint": store.fingerprint}
    for split in store.splits:
        out[split] = (np.asarray(store.tokens(split)).copy(), np.asarray(store.documents(split)).copy(),
                      [(s.num_tokens, s.num_documents, s.provenance) for s in store.manifest.splits[split].shards])
    return out


def assert_same(a, b):
    ca, cb = contents(a), contents(b)
    assert ca["fingerprint"] == cb["fingerprint"]
    assert set(ca) == set(cb)
    for split in ca:
        if split == "fingerprint":
            continue
        np.testing.assert_array_equal(ca[split][0], cb[split][0])
        np.testing.assert_array_equal(ca[split][1], cb[split][1])
        assert ca[split][2] == cb[split][2]


#: a build whose driver SIGKILLs itself right after the ledger record of task 2 (resume tests)
KILLED_BUILD = """
import os, signal, zarrtok
from zarrtok.ingest import plan
real = plan.put_object
def put(area, key, data):
    real(area, key, data)
    if key == "done/2.json":
        os.kill(os.getpid(), signal.SIGKILL)
plan.put_object = put
zarrtok.build("json", data_files={files!r}, tokenizer_name={tok!r}, output={out!r}, storage_options={so!r}, **{kw!r})
"""

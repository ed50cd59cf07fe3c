"""Every ```python snippet of docs/training.md runs (``store``: a small store, ``out``: a temp dir)."""

from __future__ import annotations

import pathlib
import re

import pytest

import zarrtok

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "training.md"
SNIPPETS = re.findall(r"^## (Training with [^\n]+)\n.*?```python\n(.*?)```", DOC.read_text(), re.S | re.M)


def test_the_doc_has_snippets():
    assert len(SNIPPETS) >= 2


@pytest.mark.slow
@pytest.mark.parametrize("title,code", SNIPPETS, ids=[t for t, _ in SNIPPETS])
def test_training_snippet_runs(title, code, small_chunk_store, tmp_path):
    pytest.importorskip("accelerate")
    exec(compile(code, f"docs/training.md: {title}", "exec"),
         {"store": zarrtok.open(small_chunk_store.url), "out": str(tmp_path / "out")})

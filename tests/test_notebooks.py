"""Every notebook in notebooks/ executes from top to bottom (nbclient, a fresh kernel each), so they
never rot. Marked slow; skipped when nbclient / nbformat / ipykernel are not installed
(``pip install -e ".[notebooks]"``).

Re-execute and store the outputs in place (after editing a notebook)::

    python -m tests.test_notebooks --write            # every notebook
    python -m tests.test_notebooks --write 03_analysis
"""

from __future__ import annotations

import glob
import os
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK_DIR = os.path.join(REPO, "notebooks")
NOTEBOOKS = sorted(glob.glob(os.path.join(NOTEBOOK_DIR, "*.ipynb")))
TIMEOUT = 300  # per cell, seconds


def execute(path: str, *, timeout: int = TIMEOUT):
    """Run the notebook at ``path`` in a fresh kernel (working directory notebooks/); return it with outputs."""
    import nbformat
    from nbclient import NotebookClient

    book = nbformat.read(path, as_version=4)
    env_backup = os.environ.get("MPLBACKEND")
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    try:
        client = NotebookClient(book, timeout=timeout, kernel_name="python3",
                                resources={"metadata": {"path": NOTEBOOK_DIR}})
        client.execute()
    finally:
        if env_backup is None:
            os.environ.pop("MPLBACKEND", None)
        else:
            os.environ["MPLBACKEND"] = env_backup
    return book


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[os.path.basename(p) for p in NOTEBOOKS])
def test_notebook_executes(path):
    pytest.importorskip("nbformat")
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    pytest.importorskip("matplotlib")
    book = execute(path)
    errors = [o for cell in book.cells if cell.cell_type == "code" for o in cell.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors


def test_notebooks_are_stored_with_outputs():
    """Committed notebooks carry their outputs (they are read on GitHub without running them)."""
    import json

    assert NOTEBOOKS, "no notebooks in notebooks/"
    for path in NOTEBOOKS:
        with open(path, encoding="utf-8") as f:
            book = json.load(f)
        code = [c for c in book["cells"] if c["cell_type"] == "code"]
        assert code and all(c.get("execution_count") for c in code), f"{path} is not fully executed"
        assert not any(o.get("output_type") == "error" for c in code for o in c.get("outputs", [])), path


def main(argv: list[str]) -> int:
    import nbformat

    if not argv or argv[0] != "--write":
        print(__doc__)
        return 2
    wanted = argv[1:]
    for path in NOTEBOOKS:
        name = os.path.splitext(os.path.basename(path))[0]
        if wanted and name not in wanted:
            continue
        t0 = time.perf_counter()
        book = execute(path)
        for cell in book.cells:  # stable files: no per-run timing metadata
            cell.get("metadata", {}).pop("execution", None)
        nbformat.write(book, path)
        print(f"{name}: executed in {time.perf_counter() - t0:.1f}s, written")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

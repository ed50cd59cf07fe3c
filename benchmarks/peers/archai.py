"""Archai 1.0.0's ``FastHfDatasetProvider`` (its dataset path only; see benchmarks/PEERS.md).

* :func:`import_classes`: ``(FastHfDatasetProvider, FastHfDataset)``, imported from ``workdir`` (Archai's
  logger opens ``archai.log`` in the current directory when it is imported).
* :func:`from_hub`: the build (``build_peers`` times it in its own child process; ``local_read``
  through :func:`build_cache_in_subprocess`, fresh datasets cache, tokenizer load untimed).
* :func:`read_splits`: the token files of a cache directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import numpy as np

from benchmarks.common import REPO_ROOT

VERSION = "1.0.0"
SPLITS = ("train", "validation", "test")


def import_classes(workdir: str | None = None) -> tuple[Any, Any]:
    """``(FastHfDatasetProvider, FastHfDataset)``; ``workdir``: where ``archai.log`` goes (default: the cwd)."""
    cwd = os.getcwd()
    if workdir is not None:
        os.chdir(workdir)
    try:
        from archai.datasets.nlp.fast_hf_dataset_provider import FastHfDatasetProvider
        from archai.datasets.nlp.fast_hf_dataset_provider_utils import FastHfDataset
    finally:
        os.chdir(cwd)
    return FastHfDatasetProvider, FastHfDataset


def from_hub(data: str, tokenizer: Any, out: str, workers: int, **options: Any) -> Any:
    """``FastHfDatasetProvider.from_hub("json", data_files=data, ...)`` into the cache directory ``out``."""
    from archai.datasets.nlp.fast_hf_dataset_provider import FastHfDatasetProvider

    return FastHfDatasetProvider.from_hub("json", data_files=data, tokenizer=tokenizer, mapping_column_name=["text"],
                                          num_workers=workers, cache_dir=out, **options)


def read_splits(out: str) -> dict[str, np.ndarray]:
    """The token files of an Archai cache directory, one map per split."""
    return {split: np.load(os.path.join(out, f"{split}.npy"), mmap_mode="r") for split in SPLITS}


_SCRIPT = r"""
import sys, time, json
data, tok_dir, cache = sys.argv[1:4]
import datasets, transformers
datasets.disable_progress_bars()
from benchmarks.peers.archai import from_hub, import_classes
import_classes()  # archai imported before the clock starts
tok = transformers.AutoTokenizer.from_pretrained(tok_dir)
t0 = time.perf_counter()
from_hub(data, tok, cache, 2, validation_split=0.0, use_shared_memory=False)
print(json.dumps({"seconds": time.perf_counter() - t0}))
"""


def build_cache_in_subprocess(workdir: str, data_path: str, tok_dir: str) -> dict[str, Any]:
    """Archai's own ``from_hub`` (2 workers, no validation split, no shared memory) in a subprocess with a
    fresh ``HF_DATASETS_CACHE``; ``{"cache_dir", "seconds"}`` (the tokenizer load is not timed)."""
    cache = os.path.join(workdir, "archai_cache")
    env = {**os.environ, "HF_DATASETS_CACHE": os.path.join(workdir, "hf-archai"), "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([REPO_ROOT, *filter(None, [os.environ.get("PYTHONPATH")])])}
    # cwd: archai writes archai.log there
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, data_path, tok_dir, cache], env=env,
                          capture_output=True, text=True, cwd=workdir, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"archai from_hub failed:\n{proc.stderr[-3000:]}")
    return {"cache_dir": cache, "seconds": json.loads(proc.stdout.strip().splitlines()[-1])["seconds"]}

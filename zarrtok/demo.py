"""The embedded offline demo: generate a small corpus, train a byte-level BPE tokenizer, build a
store through the seed-compatible facade, and read windows back. Nothing is downloaded."""

from __future__ import annotations

import logging
import os
from typing import Any

from .testing.corpus import EOS_TOKEN, generate_documents, train_tokenizer, write_jsonl  # noqa: F401

logger = logging.getLogger(__name__)

def run_demo(output: str, *, num_docs: int = 5000, seed: int = 0, num_workers: int = 1) -> dict[str, Any]:
    """Generate data + tokenizer under ``output``, build ``output/store`` with the facade, read it back.

    Returns a summary dict (store info, a decoded window, a check of tokens against the tokenizer).
    """
    from .compat.archai import FastHfDatasetProvider

    data_path = os.path.join(output, "data", "docs.jsonl")
    tok_dir = os.path.join(output, "tokenizer")
    store_dir = os.path.join(output, "store")
    docs = generate_documents(num_docs, seed=seed)
    write_jsonl(docs, data_path)
    if not os.path.exists(os.path.join(tok_dir, "tokenizer.json")):
        train_tokenizer(docs[:2000], directory=tok_dir)
    provider = FastHfDatasetProvider.from_hub(
        "json",
        data_files=data_path,
        tokenizer_name=tok_dir,
        mapping_column_name=["text"],
        validation_split=0.05,
        num_workers=num_workers,
        use_shared_memory=False,
        cache_dir=store_dir,
    )
    train = provider.get_train_dataset(seq_len=128)
    val = provider.get_val_dataset(seq_len=128)
    inputs, labels = train[len(train) // 2]
    tokenizer = provider.tokenizer
    # Independent check: the first train document, tokenized directly, is what the store holds.
    offsets = provider.store.documents("train")
    first = next(d for d in range(len(offsets) - 1) if offsets[d + 1] > offsets[d])
    stored = provider.store.tokens("train")[int(offsets[first]) : int(offsets[first + 1])].tolist()
    eos = [tokenizer.eos_token_id]
    expected = {tuple(tokenizer(d)["input_ids"] + eos) for d in docs[:100] if d}
    resume = _resume_check(provider.store)
    return {
        "loader_batches_per_epoch": resume["batches"],
        "loader_resume_exact": resume["exact"],
        "store": provider.store.info(),
        "train_windows": len(train),
        "validation_windows": len(val),
        "sample_index": len(train) // 2,
        "sample_text": tokenizer.decode(inputs.tolist()),
        "labels_shifted": bool((inputs[1:] == labels[:-1]).all()),
        "first_document_tokens": len(stored),
        "first_document_matches_tokenizer": tuple(stored) in expected,
    }


def _resume_check(store) -> dict[str, Any]:
    """The training loader: one epoch in two halves (state saved, a new loader resumed) equals one
    uninterrupted epoch, window for window."""
    import numpy as np

    def loader():
        return store.dataloader("train", 128, 8, seed=1, return_index=True, document_outputs=True)

    full = [b["index"] for b in loader()]
    first = loader()
    it = iter(first)
    head = [next(it)["index"] for _ in range(len(full) // 2)]
    state = first.state_dict()
    resumed = loader()
    resumed.load_state_dict(state)
    tail = [b["index"] for b in resumed]
    exact = len(head) + len(tail) == len(full) and all(np.array_equal(a, b) for a, b in zip(head + tail, full))
    return {"batches": len(full), "exact": exact}

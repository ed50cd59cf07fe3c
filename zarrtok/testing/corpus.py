"""Deterministic synthetic corpora and a locally trained byte-level BPE tokenizer: the data the
tests, the benchmarks and the offline demo use (nothing is downloaded)."""

from __future__ import annotations

import json
import os
import random

EOS_TOKEN = "<|endoftext|>"

_WORDS = (
    "the of and to in a is that for it as was with be by on not he this are or his from at which but have an "
    "they you were her she there been one all we their has would when if so no will more out up into do any "
    "your what can some time could them only other new about than then now may these its also our two first "
    "people way over such after most made many years before must well back through where much should where "
    "data token model train window chunk store array shard stream reader writer build split batch sequence "
    "length memory disk bucket object cache worker process thread random order epoch sample index offset "
    "document corpus language network layer weight gradient loss learning rate optimizer schedule value key "
    "query attention head vector matrix tensor shape float integer string byte file path local remote server "
    "river mountain city village forest garden kitchen window market harbor bridge library museum theatre "
    "morning evening winter summer autumn spring weather storm cloud rain snow wind light shadow colour sound"
).split()
_EXTRAS = ("naïve", "café", "Zürich", "東京", "emoji 🙂", "tab\tseparated", "x = 1; y = 2", "e.g.", "i.e.", "3.14159")


def generate_documents(num_docs: int, *, seed: int = 0) -> list[str]:
    """Deterministic synthetic documents: Zipf-like word frequencies, varied lengths, some unicode,
    whitespace runs, paragraphs and an occasional empty document."""
    rng = random.Random(seed)
    weights = [1.0 / (rank + 1) for rank in range(len(_WORDS))]
    docs = []
    for _ in range(num_docs):
        if rng.random() < 0.02:
            docs.append("")
            continue
        paragraphs = []
        for _ in range(rng.choice((1, 1, 2, 3, 5))):
            n = int(rng.lognormvariate(3.5, 0.9)) + 1
            words = rng.choices(_WORDS, weights=weights, k=n)
            if rng.random() < 0.3:
                words.insert(rng.randrange(len(words) + 1), rng.choice(_EXTRAS))
            sentence = " ".join(words)
            paragraphs.append(sentence[:1].upper() + sentence[1:] + rng.choice((".", "!", "?", "...")))
        docs.append(rng.choice(("\n\n", "\n", "  ")).join(paragraphs))
    return docs


def train_tokenizer(texts: list[str], *, vocab_size: int = 2048, directory: str | None = None):
    """Train a GPT-2-style byte-level BPE tokenizer with ``<|endoftext|>`` as EOS; optionally save it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=EOS_TOKEN)
    if directory is not None:
        tokenizer.save_pretrained(directory)
    return tokenizer


def write_jsonl(docs: list[str], path: str) -> None:
    """One ``{"text": ...}`` object per line. An identical existing file is left untouched (so its
    mtime, and the fingerprint of stores built from it, stay the same)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    data = "".join(json.dumps({"text": doc}, ensure_ascii=False) + "\n" for doc in docs).encode("utf-8")
    if os.path.exists(path):
        with open(path, "rb") as f:
            if f.read() == data:
                return
    with open(path, "wb") as f:
        f.write(data)

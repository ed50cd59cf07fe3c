"""Shared fixtures: isolated caches, a generated adversarial corpus, a locally trained byte-level BPE
tokenizer, and ground truth computed by tokenizing the source documents directly."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile

# Caches must be isolated before `datasets` / `transformers` are imported (they read these at import).
_CACHE_ROOT = tempfile.mkdtemp(prefix="zarrtok-test-cache-")
atexit.register(shutil.rmtree, _CACHE_ROOT, ignore_errors=True)
os.environ["HF_HOME"] = os.path.join(_CACHE_ROOT, "hf")
os.environ["HF_DATASETS_CACHE"] = os.path.join(_CACHE_ROOT, "hf", "datasets")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from zarrtok.testing.corpus import EOS_TOKEN, generate_documents, train_tokenizer  # noqa: E402

ADVERSARIAL_DOCS = [
    "",
    "plain ascii text.",
    "   leading and trailing whitespace   ",
    "tabs\tand\nnewlines\r\nand   runs    of     spaces",
    "unicode: naïve café Zürich 東京 Ελληνικά русский עברית 🙂🚀 e\u0301",
    f"a special token string inside a document {EOS_TOKEN} should be handled like tokenizer(doc) does",
    "\n\n\n",
    " ",
    "x" * 5000,
    "emoji only 🙂🙂🙂🙂",
    "",
    "null byte \x00 and control \x07 characters",
]


def make_documents(num_docs: int = 400, seed: int = 1) -> list[str]:
    """Generated documents with adversarial ones spread through them."""
    docs = generate_documents(num_docs, seed=seed)
    for i, doc in enumerate(ADVERSARIAL_DOCS):
        docs.insert((i * 37) % (len(docs) + 1), doc)
    return docs


def expected_tokens(tokenizer, docs: list[str], *, eos: bool = True) -> np.ndarray:
    """Ground truth: concatenation of tokenizer(doc)["input_ids"] + [eos] over non-empty documents."""
    out: list[int] = []
    for doc in docs:
        if not doc:
            continue
        out.extend(tokenizer(doc)["input_ids"])
        if eos:
            out.append(tokenizer.eos_token_id)
    return np.asarray(out, dtype=np.int64)


def expected_doc_lengths(tokenizer, docs: list[str], *, eos: bool = True) -> np.ndarray:
    """Token count of each document (0 for empty documents)."""
    return np.asarray([len(tokenizer(d)["input_ids"]) + int(eos) if d else 0 for d in docs], dtype=np.int64)


def write_jsonl(docs: list[str], path, key: str = "text") -> str:
    with open(path, "w", encoding="utf-8") as f:
        for doc in docs:
            f.write(json.dumps({key: doc}, ensure_ascii=False) + "\n")
    return str(path)


@pytest.fixture(scope="session")
def docs() -> list[str]:
    return make_documents()


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory, docs) -> str:
    directory = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer(generate_documents(800, seed=99) + docs[:50], vocab_size=1024, directory=str(directory))
    return str(directory)


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


@pytest.fixture(scope="session")
def jsonl_path(tmp_path_factory, docs) -> str:
    return write_jsonl(docs, tmp_path_factory.mktemp("data") / "docs.jsonl")


@pytest.fixture(scope="session")
def truth(tokenizer, docs) -> np.ndarray:
    return expected_tokens(tokenizer, docs)


@pytest.fixture(scope="session")
def small_chunk_store(tmp_path_factory, jsonl_path, tokenizer_dir):
    """A train-only store with tiny chunks (777 tokens) and several shards, so windows straddle
    chunk and shard boundaries."""
    import zarrtok

    out = tmp_path_factory.mktemp("stores") / "small-chunks"
    return zarrtok.build(
        "json", data_files=jsonl_path, tokenizer_name=tokenizer_dir, output=str(out),
        chunk_size=777, shard_size=10_000, batch_size=50, progress=False,
    )


@pytest.fixture(scope="session")
def s3():
    """One loopback S3 server (moto, with a request log) per session; each test uses its own bucket."""
    from zarrtok.testing.s3server import S3Server

    server = S3Server()
    try:
        yield server
    finally:
        server.stop()

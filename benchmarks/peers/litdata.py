"""litdata 0.2.76 (``optimize`` + ``TokensLoader`` + ``StreamingDataset``; see benchmarks/PEERS.md).

Writing:

* :func:`optimize_flat` (and :func:`optimize_flat_in_subprocess`): a flat raw token dump into
  litdata chunks of ``chunk_tokens`` tokens, in stream order (one worker), fed in pieces
  (``local_read``, ``remote_peers``). In a subprocess because ``optimize()`` sets the global
  multiprocessing start method to ``"spawn"``, which would make every later DataLoader spawn its workers.
* :func:`optimize_jsonl`: tokenize a JSON Lines corpus with a Hugging Face tokenizer in ``optimize``'s
  workers (``build_peers``).

Reading: :func:`read_index` / :func:`chunk_starts` / :func:`layout` (the chunks of ``index.json``),
:func:`tokens_dataset` (a ``StreamingDataset`` of ``TokensLoader`` blocks), :func:`to_pair`,
:func:`collate_pairs`, :func:`read_all_tokens`, and for S3 :func:`storage_options` +
:func:`patch_for_http`.

litdata is imported inside the functions only. Functions handed to ``optimize`` live here so that they
pickle by this module's name in its workers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from benchmarks.common import REPO_ROOT

JSONL_INPUT_BYTES = 4_000_000  # optimize_jsonl: bytes of JSONL per optimize() input
JSONL_CHUNK_BYTES = "64MB"
ENCODE_BATCH = 1000            # documents per tokenizer call in optimize_jsonl's workers


# -- writing: a flat token dump -----------------------------------------------------------------------------
def flat_pieces(job: tuple[str, str, int, int, int]) -> Iterator[np.ndarray]:
    """optimize() fn: tokens ``[a, b)`` of the flat dump, in stream order, in pieces of ``piece`` tokens
    (TokensLoader concatenates them)."""
    path, dtype, a, b, piece = job
    mm = np.memmap(path, dtype=dtype, mode="r")
    for s in range(a, b, piece):
        yield np.array(mm[s:min(s + piece, b)])


def optimize_flat(raw_path: str, dtype: str, n_tokens: int, out: str, *, chunk_tokens: int, input_tokens: int,
                  piece_tokens: int) -> float:
    """litdata's ``optimize`` over the flat dump (one worker, so chunks are in stream order): inputs of
    ``input_tokens`` tokens, each yielded in pieces of ``piece_tokens``; chunks of ``chunk_tokens``. Seconds."""
    from litdata import TokensLoader, optimize

    jobs = [(raw_path, dtype, a, min(a + input_tokens, n_tokens), piece_tokens)
            for a in range(0, n_tokens, input_tokens)]
    t0 = time.perf_counter()
    optimize(fn=flat_pieces, inputs=jobs, output_dir=out, chunk_size=chunk_tokens, item_loader=TokensLoader(),
             num_workers=1, mode="overwrite")
    return time.perf_counter() - t0


def optimize_flat_in_subprocess(raw_path: str, dtype: np.dtype, n_tokens: int, out: str, *, chunk_tokens: int,
                                input_tokens: int, piece_tokens: int) -> float:
    """:func:`optimize_flat` in a fresh interpreter (see the module's docstring); its seconds."""
    code = ("import sys; from benchmarks.peers.litdata import optimize_flat; "
            "print(optimize_flat(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], "
            "chunk_tokens=int(sys.argv[5]), input_tokens=int(sys.argv[6]), piece_tokens=int(sys.argv[7])))")
    proc = subprocess.run([sys.executable, "-c", code, raw_path, np.dtype(dtype).str, str(n_tokens), out,
                           str(chunk_tokens), str(input_tokens), str(piece_tokens)],
                          capture_output=True, text=True, check=False, cwd=REPO_ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"litdata optimize failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return float(proc.stdout.strip().splitlines()[-1])


# -- writing: tokenizing a JSONL corpus ---------------------------------------------------------------------
_TOKENIZER: Any = None


def tokenize_jsonl(job: tuple[str, str, int, int]) -> Iterator[np.ndarray]:
    """optimize() fn: the documents of bytes ``[start, end)`` of the JSONL, one ``uint16`` array (ids + EOS) each."""
    global _TOKENIZER
    path, tok_dir, start, end = job
    if _TOKENIZER is None:  # once per worker process
        from transformers import AutoTokenizer

        _TOKENIZER = AutoTokenizer.from_pretrained(tok_dir)
    tok = _TOKENIZER
    eos = tok.eos_token_id
    with open(path, "rb") as f:
        f.seek(start)
        texts = [json.loads(line)["text"] for line in f.read(end - start).splitlines()]
    for i in range(0, len(texts), ENCODE_BATCH):
        for ids in tok(texts[i:i + ENCODE_BATCH], add_special_tokens=False)["input_ids"]:
            ids.append(eos)
            yield np.asarray(ids, dtype=np.uint16)


def jsonl_ranges(path: str, piece: int) -> list[tuple[int, int]]:
    """Byte ranges of about ``piece`` bytes covering ``path``, each ending at a line end."""
    size = os.path.getsize(path)
    ranges, start = [], 0
    with open(path, "rb") as f:
        while start < size:
            if start + piece >= size:
                end = size
            else:
                f.seek(start + piece)
                f.readline()
                end = f.tell()
            ranges.append((start, end))
            start = end
    return ranges


def optimize_jsonl(data: str, tok_dir: str, out: str, workers: int) -> dict[str, Any]:
    """Tokenize the JSONL ``data`` into litdata chunks of ``JSONL_CHUNK_BYTES`` with ``workers`` workers."""
    from litdata import TokensLoader, optimize

    inputs = [(data, tok_dir, a, b) for a, b in jsonl_ranges(data, JSONL_INPUT_BYTES)]
    optimize(fn=tokenize_jsonl, inputs=inputs, output_dir=out, chunk_bytes=JSONL_CHUNK_BYTES,
             item_loader=TokensLoader(), num_workers=workers, verbose=False)
    return {"inputs": len(inputs), "chunk_bytes": JSONL_CHUNK_BYTES}


# -- reading --------------------------------------------------------------------------------------------
def read_index(out: str) -> list[dict[str, Any]]:
    """The ``chunks`` of a litdata dataset's ``index.json``."""
    with open(os.path.join(out, "index.json")) as f:
        return json.load(f)["chunks"]


def chunk_starts(out: str, block: int) -> tuple[np.ndarray, np.ndarray]:
    """(first window index, first token offset) of every chunk (and the totals), in litdata's order."""
    dims = np.array([c["dim"] for c in read_index(out)], dtype=np.int64)
    windows = dims // block
    return np.concatenate([[0], np.cumsum(windows)]), np.concatenate([[0], np.cumsum(dims)])


def layout(out: str, block: int) -> dict[str, Any]:
    """Chunk files, token counts and window starts (in the flat stream) of a TokensLoader dataset."""
    chunks = read_index(out)
    dims = np.array([c["dim"] for c in chunks], dtype=np.int64)
    tok0 = np.concatenate([[0], np.cumsum(dims)])
    starts = np.concatenate([tok0[c] + block * np.arange(dims[c] // block, dtype=np.int64) for c in range(len(dims))])
    return {"files": [c["filename"] for c in chunks], "dims": dims.tolist(), "starts": starts,
            "chunk_bytes": [int(c["chunk_bytes"]) for c in chunks]}


def read_all_tokens(out: str) -> dict[str, np.ndarray]:
    """All tokens of litdata's chunks (``no_header_numpy``: a uint32 header [n, n+1 offsets], then the items)."""
    with open(os.path.join(out, "index.json")) as f:
        index = json.load(f)
    assert index["config"]["data_format"] == ["no_header_numpy:5"], index["config"]["data_format"]  # 5 = uint16
    parts = []
    for chunk in index["chunks"]:
        raw = np.fromfile(os.path.join(out, chunk["filename"]), dtype=np.uint8)
        n = int(raw[:4].view(np.uint32)[0])
        offsets = raw[4:4 * (n + 2)].view(np.uint32)
        tokens = raw[offsets[0]:offsets[-1]].view(np.uint16)
        if len(tokens) != chunk["dim"]:
            raise AssertionError(f"{chunk['filename']}: {len(tokens)} tokens, index.json says {chunk['dim']}")
        parts.append(tokens)
    return {"all": np.concatenate(parts) if parts else np.zeros(0, np.uint16)}


def to_pair(block: Any):
    """litdata's ``uint16`` block of ``L+1`` tokens -> the others' ``(x[:-1], x[1:])`` int64 tensors."""
    import torch

    x = torch.from_numpy(np.asarray(block).astype(np.int64))
    return x[:-1], x[1:]


def collate_pairs(items: Sequence[Any]):
    """``n`` ``uint16`` blocks of ``L+1`` tokens -> int64 ``(inputs, labels)`` views of one ``[n, L+1]``
    array: the work zarrtok's batch read does (runs in the DataLoader workers)."""
    import torch

    out = np.empty((len(items), len(items[0])), dtype=np.int64)
    for i, item in enumerate(items):
        out[i] = item.numpy() if isinstance(item, torch.Tensor) else item
    x = torch.from_numpy(out)
    return x[:, :-1], x[:, 1:]


def tokens_dataset(input_dir: str, block: int, **options: Any) -> Any:
    """``StreamingDataset(input_dir, item_loader=TokensLoader(block_size=block), **options)``."""
    from litdata import StreamingDataset, TokensLoader

    return StreamingDataset(input_dir=input_dir, item_loader=TokensLoader(block_size=block), **options)


def storage_options(endpoint_url: str, fs_options: dict[str, Any]) -> dict[str, Any]:
    """litdata's (boto3-style) storage options for the s3fs-style ``fs_options`` of the same server."""
    return {"endpoint_url": endpoint_url, "aws_access_key_id": fs_options["key"],
            "aws_secret_access_key": fs_options["secret"], "region_name": fs_options["client_kwargs"]["region_name"]}


def patch_for_http() -> None:
    """litdata downloads chunks with obstore, whose client options it fixes without ``allow_http``: a
    plain-http endpoint (moto on 127.0.0.1) fails with ``BadScheme``. Add it (benchmarks/PEERS.md)."""
    import litdata.streaming.downloader as dl

    dl._OBSTORE_CLIENT_OPTIONS = {**dl._OBSTORE_CLIENT_OPTIONS, "allow_http": True}


def obstore_started_here() -> bool:
    """Whether obstore's runtime was started in this process (then litdata's forked workers use boto3)."""
    import litdata.streaming.downloader as dl

    return dl._OBSTORE_INIT_PID is not None


def version() -> str:
    import litdata

    return litdata.__version__

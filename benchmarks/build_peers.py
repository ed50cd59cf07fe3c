"""Build comparison: zarrtok vs Archai, nanoGPT's recipe and litdata — tokens/s, peak memory and peak
disk to tokenize the same JSONL corpus with the same tokenizer, with 1 and 2 workers.

Run from the repository root with the peers environment (``bash benchmarks/peers_env.sh`` makes it)::

    .venv-peers/bin/python -m benchmarks.build_peers              # = --full: 250 MB and 1 GB of JSONL
    .venv-peers/bin/python -m benchmarks.build_peers --quick      # 8 MB and 32 MB, a smoke run (~4 minutes)
    .venv-peers/bin/python -m benchmarks.build_peers --sizes-mb 100 --rounds 3 --workdir /tmp/bp
    # issue 14's run: zarrtok's three encoders and Archai at 1 GB, zarrtok alone at 250 MB (flatness), ~30 min
    .venv-peers/bin/python -m benchmarks.build_peers --sizes-mb 250 1000 --workdir /tmp/bp \
        --contenders zarrtok zarrtok-tiktoken zarrtok-hf archai --small-contenders zarrtok

Method
------
1. **Corpus** (:func:`make_corpus`, deterministic for a seed, cached in ``--workdir``). JSONL lines
   ``{"text": ...}`` of ``--sizes-mb`` MB (10^6 bytes; it stops after the document that crosses the
   size). Words are drawn from a real English word list, ``wordfreq.top_n_list("en", 30000)`` (real
   words ordered by real frequency; its data ships in the wheel), with Zipf weights
   ``1 / rank**1.0``; 1% of the words are numbers (years, decimals, percentages, prices, times,
   dates) and 0.5% non-ASCII words (accents, Greek, Cyrillic, CJK, emoji, typographic quotes).
   Documents: a lognormal number of words (median 300, sigma 1.2, clipped to 8..40,000: from a
   sentence to tens of thousands of words), in sentences (capitalised first word; ``.``, ``?``,
   ``!`` ends; commas, semicolons, colons, line breaks) and paragraphs (``\\n\\n``); none is empty.
   Drawn with numpy in blocks of 2,000 documents, each from ``default_rng([seed, block])``, so a
   smaller corpus is a prefix of a larger one.
2. **Tokenizer**: ``zarrtok.testing.corpus.train_tokenizer`` (a GPT-2-style byte-level BPE, EOS
   ``<|endoftext|>``) with ``vocab_size=8192`` on the corpus's first ~4 MB of documents (the same for
   every size); every contender writes ``uint16`` tokens.
3. **Contenders**, each with ``num_workers`` 1 and 2:

   * ``zarrtok``: ``zarrtok.build("json", data_files=path, tokenizer_name=tok_dir, output=out,
     num_workers=w, validation_split=0.0, progress=False)``, default ``encoder="auto"`` (the
     encoder it chose, from the manifest, is recorded: the verified gigatoken fast path). One split,
     ``train``. ``zarrtok-tiktoken`` / ``zarrtok-hf``: the same with ``encoder="tiktoken"`` /
     ``encoder="hf"`` (``zarrtok-hf`` is the build before the fast paths, the issue's "today").
   * ``archai`` (the predecessor, 1.0.0): ``FastHfDatasetProvider.from_hub("json",
     data_files=path, tokenizer=tok, mapping_column_name=["text"], num_workers=w, cache_dir=out)``,
     its other defaults as they are: ``use_shared_memory=True`` (split arrays in ``/dev/shm``, then
     ``np.save`` into ``cache_dir``), ``validation_split`` 0.0 which it turns into 0.1, then a 75/25
     cut of that into validation/test, so a shuffled 90 / 7.5 / 2.5 % document split; EOS appended
     to every non-empty document *as text* (``text + tok.eos_token``), which the tokenizer maps to
     its special token. Its tokenizer is loaded inside the timed region (zarrtok's is too).
   * ``nanogpt``: nanoGPT's ``data/openwebtext/prepare.py`` written out with the same HF tokenizer:
     ``load_dataset("json", data_files=path, num_proc=w)``,
     ``train_test_split(test_size=0.0005, seed=2357, shuffle=True)`` (``test`` renamed ``val``),
     ``map(process, remove_columns=["text"], num_proc=w)`` where ``process`` encodes one document
     (``tok.encode(text, add_special_tokens=False)`` + the EOS id) and returns ``{"ids", "len"}``;
     then per split an ``np.memmap(f"{split}.bin", dtype=np.uint16, mode="w+")`` filled in
     ``min(1024, len(split))`` batches of ``dset.shard(num_shards=..., index=i,
     contiguous=True).with_format("numpy")``. ``num_proc=None`` when ``w == 1`` (as datasets wants).
   * ``litdata`` (0.2.76): ``optimize(fn=tokenize_jsonl, inputs=[...], output_dir=out,
     chunk_bytes="64MB", item_loader=TokensLoader(), num_workers=w, verbose=False)``; an input is a
     ~4 MB byte range of the JSONL cut at line ends (computed inside the timed region);
     ``tokenize_jsonl`` (``benchmarks/peers/litdata.py``) loads the tokenizer once per worker process
     (a module global), encodes the range's documents in batches of 1,000 (``tok(texts, add_special_tokens=False)``) and yields
     one ``uint16`` array (ids + EOS) per document. No split.

   Every contender uses the default thread settings of the libraries (``TOKENIZERS_PARALLELISM``
   unset) and has its progress bars off (``datasets.disable_progress_bars()``,
   ``progress=False``, ``verbose=False``).
4. **One build = one fresh child process** (``--one``) with its own fresh run directory holding
   ``HF_HOME``, ``HF_DATASETS_CACHE``, ``TMPDIR``, ``XDG_CACHE_HOME``, litdata's optimizer caches
   and the output, and its own working directory (Archai writes ``archai.log`` there). The child
   imports its libraries, then times only the build call (``seconds``: tokenizer loading, reading
   the JSONL — for whoever goes through ``datasets.load_dataset``, its JSON-to-Arrow conversion into
   the fresh cache — tokenizing, writing, worker start-up). The parent samples the child's whole
   process tree until the child reports the build done:

   * peak PSS: the summed ``Pss`` of the tree from ``/proc/<pid>/smaps_rollup`` every 100 ms
     (:class:`benchmarks.build_speed.PeakMemory`; one sample costs ~5-10 ms of CPU, hence not
     faster; shared pages are split between sharers, so forked workers are not double counted;
     mapped ``/dev/shm`` pages are included);
   * peak disk: every 0.25 s, the allocated bytes (``st_blocks * 512``, as ``du``; sparse files
     count what is written) of every file under the run directory, in total and per part
     (``hf``: the datasets cache; ``output``: the output and any staging sibling; ``tmp``/other);
   * ``/dev/shm`` growth: used bytes of the ``/dev/shm`` filesystem (``statvfs``) minus its value
     before the child started, every 0.25 s (machine-wide: run on a quiet machine).

   Then the child reads back every split it wrote and reports the token count per split and the
   histogram of token ids (outside the measured region). Reported per build: seconds, total tokens
   over all splits, tokens/s = tokens / seconds, peak PSS (and, to tell the libraries' import
   footprint from the build's working memory, the child's own PSS after its imports, before the
   build), ``/dev/shm`` peak growth, final output bytes (``du`` of the output directory: zarrtok's
   store; Archai's cache_dir with its three ``.npy`` files, ``tokenizer.pkl`` and ``config.json``;
   nanoGPT's ``train.bin`` + ``val.bin``; litdata's chunks + ``index.json``), peak disk bytes and
   **peak disk / output**, also without the ``hf`` part (informational: what the build needs
   beyond ``datasets``' cached copy of the source).
5. **Ground truth**: for every size, all builds must hold the same number of tokens (every document
   + one EOS each, summed over the splits a contender wrote: Archai and nanoGPT split by document),
   the same histogram of token ids (so the same multiset of tokens), and exactly one EOS per
   document of the corpus. A mismatch is printed and the script exits 1 (after writing the JSON).
6. **Order**: sizes from small to large; the builds of one size (``--contenders`` x workers) are run ``--rounds`` times (default
   1), the order rotating by one every round; medians over rounds. Before the builds of a size the
   JSONL is read once, so every build finds it in the page cache.

Each build also records the 1-minute load average before and after it (the machine is shared).

Targets (at the largest size; issue 14): zarrtok tokens/s >= 15x Archai's (1 and 2 workers, was 2x) and
>= 3x ``zarrtok-hf``'s with 2 workers (same run); zarrtok peak PSS
<= 0.5x Archai's; zarrtok's peak PSS flat in the corpus size (largest / smallest <= 1.25x); zarrtok
peak disk <= 1.1x its output. Ratios to nanoGPT and litdata are reported as information. Results:
``benchmarks/results/build_peers.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from benchmarks import common
from benchmarks.common import REPO_ROOT
from benchmarks.peers import archai, nanogpt
from benchmarks.peers import litdata as litpeer

DEFAULT_JSON = common.default_json("build_peers")

CONTENDERS = ("zarrtok", "zarrtok-tiktoken", "zarrtok-hf", "archai", "nanogpt", "litdata")
#: zarrtok's encoder per contender name: "zarrtok" is the default (encoder="auto": the verified gigatoken fast
#: path here); "zarrtok-hf" is zarrtok before the fast paths (Hugging Face tokenizers), the issue's "today"
ZARRTOK_ENCODERS = {"zarrtok": "auto", "zarrtok-tiktoken": "tiktoken", "zarrtok-hf": "hf"}
WORKERS = (1, 2)
FULL_SIZES_MB = (250, 1000)
QUICK_SIZES_MB = (8, 32)
SEED = 1234

# corpus
NUM_WORDS = 30_000
ZIPF_S = 1.0
DOC_WORDS_MEDIAN, DOC_WORDS_SIGMA, DOC_WORDS_MIN, DOC_WORDS_MAX = 300, 1.2, 8, 40_000
NUMBER_RATE, UNICODE_RATE = 0.01, 0.005
BLOCK_DOCS = 2000
# what follows each word, with its probability (None: the rest, a plain space)
SEPARATORS = ((" ", None), (", ", 0.06), (". ", 0.06), ("? ", 0.005), ("! ", 0.004), (".\n\n", 0.012),
              ("; ", 0.003), (": ", 0.003), ("\n", 0.002))
SENTENCE_ENDS = (". ", "? ", "! ", ".\n\n")
UNICODE_WORDS = ("café", "naïve", "résumé", "façade", "Zürich", "São Paulo", "Kraków", "Ελλάδα", "λόγος", "Москва",
                 "привет", "東京", "北京", "日本語", "서울", "नमस्ते", "שלום", "مرحبا", "“quoted”", "‘so-called’",
                 "—", "–", "…", "°C", "µs", "±2", "½", "×", "→", "€", "£", "🙂", "🚀", "👍", "🎉", "✓")

# tokenizer
VOCAB_SIZE = 8192
TOKENIZER_SAMPLE_BYTES = 4_000_000

# contenders
NANOGPT_TEST_SIZE, NANOGPT_BATCHES = nanogpt.TEST_SIZE, nanogpt.BATCHES  # benchmarks/peers/nanogpt.py
LIT_INPUT_BYTES, LIT_CHUNK_BYTES = litpeer.JSONL_INPUT_BYTES, litpeer.JSONL_CHUNK_BYTES  # benchmarks/peers/litdata.py

# measurement
PSS_INTERVAL = 0.1
DISK_INTERVAL = 0.25
TARGET_SPEED, TARGET_PSS, TARGET_FLAT, TARGET_DISK = 15.0, 0.5, 1.25, 1.1
TARGET_VS_HF = 3.0  # zarrtok (gigatoken) over zarrtok-hf with 2 workers, same run (issue 14)
MARK_BUILT = "@@build_peers: built@@"
MARK_RESULT = "@@build_peers: result@@ "


# -- corpus ---------------------------------------------------------------------------------------------
class _Vocabulary:
    """Everything a block of documents is drawn from (built once per process)."""

    def __init__(self) -> None:
        import wordfreq

        words = wordfreq.top_n_list("en", NUM_WORDS)
        self.num_words = len(words)
        weights = 1.0 / np.arange(1, self.num_words + 1, dtype=np.float64) ** ZIPF_S
        self.word_cdf = np.cumsum(weights) / weights.sum()
        rng = np.random.default_rng(0)  # a fixed pool of number strings
        numbers = ([str(y) for y in rng.integers(1800, 2031, 150)] + [str(n) for n in rng.integers(0, 1000, 150)]
                   + [f"{n:,}" for n in rng.integers(1000, 10**7, 100)] + [f"{x:.2f}" for x in rng.random(100) * 100]
                   + [f"{n}%" for n in rng.integers(1, 100, 50)] + [f"${x:,.2f}" for x in rng.random(50) * 5000]
                   + [f"{h}:{m:02d}" for h, m in zip(rng.integers(0, 24, 50), rng.integers(0, 60, 50))]
                   + [f"{y}-{m:02d}-{d:02d}" for y, m, d in zip(rng.integers(1990, 2030, 50), rng.integers(1, 13, 50),
                                                                  rng.integers(1, 29, 50))])
        self.numbers = (self.num_words, len(numbers))
        self.unicode = (self.num_words + len(numbers), len(UNICODE_WORDS))
        lower = words + numbers + list(UNICODE_WORDS)
        self.size = len(lower)
        self.table = np.array(lower + [w[:1].upper() + w[1:] for w in lower], dtype=object)  # [lower | Capitalised]
        probs = np.array([p or 0.0 for _, p in SEPARATORS])
        probs[0] = 1.0 - probs.sum()
        self.sep_cdf = np.cumsum(probs) / probs.sum()
        # the last separator of a document: "." and a NUL that splits the block's text into documents
        self.seps = np.array([s for s, _ in SEPARATORS] + [".\x00"], dtype=object)
        self.doc_end = len(SEPARATORS)
        self.sentence_ends = np.array([i for i, (s, _) in enumerate(SEPARATORS) if s in SENTENCE_ENDS])


_VOCABULARY: _Vocabulary | None = None


def block_documents(seed: int, block: int) -> tuple[list[str], np.ndarray]:
    """The ``block``-th block of ``BLOCK_DOCS`` documents of the corpus ``seed``, and their numbers of words."""
    global _VOCABULARY
    if _VOCABULARY is None:
        _VOCABULARY = _Vocabulary()
    v = _VOCABULARY
    rng = np.random.default_rng([seed, block])
    lengths = np.rint(rng.lognormal(math.log(DOC_WORDS_MEDIAN), DOC_WORDS_SIGMA, BLOCK_DOCS))
    lengths = np.clip(lengths, DOC_WORDS_MIN, DOC_WORDS_MAX).astype(np.int64)
    n = int(lengths.sum())
    ids = np.searchsorted(v.word_cdf, rng.random(n), side="right")
    kind = rng.random(n)
    numbers = kind < NUMBER_RATE
    ids[numbers] = v.numbers[0] + rng.integers(0, v.numbers[1], int(numbers.sum()))
    uni = (kind >= NUMBER_RATE) & (kind < NUMBER_RATE + UNICODE_RATE)
    ids[uni] = v.unicode[0] + rng.integers(0, v.unicode[1], int(uni.sum()))
    seps = np.searchsorted(v.sep_cdf, rng.random(n), side="right")
    ends = np.cumsum(lengths) - 1
    seps[ends] = v.doc_end
    capital = np.zeros(n, dtype=bool)
    capital[1:] = np.isin(seps[:-1], v.sentence_ends)
    capital[0] = True
    capital[ends[:-1] + 1] = True  # every document starts a sentence
    pieces = np.empty(2 * n, dtype=object)
    pieces[0::2] = v.table[ids + capital * v.size]
    pieces[1::2] = v.seps[seps]
    return "".join(pieces.tolist()).split("\x00")[:-1], lengths


def iter_blocks(seed: int) -> Iterator[tuple[list[str], np.ndarray]]:
    block = 0
    while True:
        yield block_documents(seed, block)
        block += 1


def make_corpus(workdir: str, target_bytes: int, seed: int = SEED) -> tuple[str, dict[str, Any]]:
    """Write (or reuse) ``workdir/corpus-<size>-seed<seed>.jsonl``; return its path and a description."""
    os.makedirs(workdir, exist_ok=True)
    name = f"corpus-{target_bytes}B-seed{seed}"
    path, meta_path = os.path.join(workdir, name + ".jsonl"), os.path.join(workdir, name + ".json")
    if os.path.exists(path) and os.path.exists(meta_path):
        with open(meta_path) as f:
            info = json.load(f)
        if info.get("bytes") == os.path.getsize(path):
            return path, {**info, "reused": True}
    t0 = time.perf_counter()
    written = documents = words = 0
    doc_chars: list[int] = []
    with open(path + ".tmp", "wb") as f:
        for docs, lengths in iter_blocks(seed):
            lines = []
            for doc, length in zip(docs, lengths.tolist()):
                line = (json.dumps({"text": doc}, ensure_ascii=False) + "\n").encode("utf-8")
                lines.append(line)
                written += len(line)
                documents += 1
                words += length
                doc_chars.append(len(doc))
                if written >= target_bytes:
                    break
            f.write(b"".join(lines))
            if written >= target_bytes:
                break
    os.replace(path + ".tmp", path)
    chars = np.array(doc_chars)
    info = {
        "path": path, "bytes": written, "target_bytes": target_bytes, "documents": documents, "words": words,
        "document_chars": {"mean": float(chars.mean()), "median": float(np.median(chars)), "min": int(chars.min()),
                           "max": int(chars.max())},
        "seed": seed, "word_list": f"wordfreq.top_n_list('en', {NUM_WORDS})", "zipf_s": ZIPF_S,
        "document_words": {"lognormal_median": DOC_WORDS_MEDIAN, "sigma": DOC_WORDS_SIGMA, "min": DOC_WORDS_MIN,
                           "max": DOC_WORDS_MAX},
        "seconds": time.perf_counter() - t0,
    }
    with open(meta_path, "w") as f:
        json.dump(info, f, indent=2)
    return path, {**info, "reused": False}


def make_tokenizer(workdir: str, seed: int = SEED) -> tuple[str, dict[str, Any]]:
    """Train (or reuse) the byte-level BPE on the corpus's first ~4 MB of documents."""
    tok_dir = os.path.join(workdir, f"tokenizer-{VOCAB_SIZE}-seed{seed}")
    info = {"path": tok_dir, "vocab_size": VOCAB_SIZE, "sample_bytes_target": TOKENIZER_SAMPLE_BYTES}
    if os.path.exists(os.path.join(tok_dir, "tokenizer.json")):
        return tok_dir, {**info, "reused": True}
    from zarrtok.testing.corpus import train_tokenizer

    t0 = time.perf_counter()
    sample: list[str] = []
    size = 0
    for docs, _ in iter_blocks(seed):
        for doc in docs:
            sample.append(doc)
            size += len(doc.encode("utf-8"))
            if size >= TOKENIZER_SAMPLE_BYTES:
                break
        if size >= TOKENIZER_SAMPLE_BYTES:
            break
    shutil.rmtree(tok_dir + ".tmp", ignore_errors=True)
    train_tokenizer(sample, vocab_size=VOCAB_SIZE, directory=tok_dir + ".tmp")
    os.replace(tok_dir + ".tmp", tok_dir)
    return tok_dir, {**info, "sample_documents": len(sample), "sample_bytes": size,
                     "seconds": time.perf_counter() - t0, "reused": False}


# -- the contenders (child process) -------------------------------------------------------------------
def build_zarrtok(data: str, tok_dir: str, out: str, workers: int, encoder: str = "auto") -> dict[str, Any]:
    import zarrtok

    store = zarrtok.build("json", data_files=data, tokenizer_name=tok_dir, output=out, num_workers=workers,
                          validation_split=0.0, progress=False, encoder=encoder)
    return {"encoder": store.manifest.encoder}


def read_zarrtok(out: str) -> dict[str, np.ndarray]:
    import zarrtok

    store = zarrtok.open(out)
    return {split: np.asarray(store.tokens(split)) for split in store.splits}


def build_archai(data: str, tok_dir: str, out: str, workers: int) -> dict[str, Any]:
    from transformers import AutoTokenizer

    archai.from_hub(data, AutoTokenizer.from_pretrained(tok_dir), out, workers)
    return {}


BUILDERS = {"archai": build_archai, "nanogpt": nanogpt.prepare, "litdata": litpeer.optimize_jsonl,
            **{name: (lambda d, t, o, w, _e=enc: build_zarrtok(d, t, o, w, _e)) for name, enc in ZARRTOK_ENCODERS.items()}}
READERS = {"archai": archai.read_splits, "nanogpt": nanogpt.read_splits, "litdata": litpeer.read_all_tokens,
           **{name: read_zarrtok for name in ZARRTOK_ENCODERS}}


def _import_libraries(contender: str) -> None:
    """Untimed: the imports a user's script would have done before calling the build."""
    import datasets
    import transformers  # noqa: F401

    datasets.disable_progress_bars()
    if contender.startswith("zarrtok"):
        import zarrtok  # noqa: F401
    elif contender == "archai":
        import archai.datasets.nlp.fast_hf_dataset_provider  # noqa: F401  (writes archai.log in the cwd)
    elif contender == "litdata":
        import litdata  # noqa: F401


def run_one(contender: str, workers: int, data: str, tok_dir: str, rundir: str) -> dict[str, Any]:
    """Child process: one build in ``rundir``; prints MARK_BUILT when the build returns, then reads it back."""
    os.chdir(rundir)
    _import_libraries(contender)
    pss_imports_mb = common.own_pss_mb()
    out = os.path.join(rundir, "output")
    t0 = time.perf_counter()
    extra = BUILDERS[contender](data, tok_dir, out, workers)
    seconds = time.perf_counter() - t0
    print(MARK_BUILT, flush=True)
    from transformers import AutoTokenizer

    eos = AutoTokenizer.from_pretrained(tok_dir).eos_token_id
    splits = READERS[contender](out)
    histogram = np.zeros(1 << 16, dtype=np.int64)
    dtypes = set()
    for tokens in splits.values():
        dtypes.add(np.dtype(tokens.dtype).name)
        for i in range(0, len(tokens), 1 << 24):  # bincount makes an intp copy: in pieces
            histogram += np.bincount(np.asarray(tokens[i:i + (1 << 24)]), minlength=1 << 16)
    return {"contender": contender, "workers": workers, "seconds": seconds, "pss_after_imports_mb": pss_imports_mb,
            **extra,
            "split_tokens": {name: len(t) for name, t in splits.items()},
            "tokens": int(sum(len(t) for t in splits.values())), "dtypes": sorted(dtypes),
            "eos_count": int(histogram[eos]), "histogram_sha256": hashlib.sha256(histogram.tobytes()).hexdigest()}


# -- measuring a child (parent process) ---------------------------------------------------------------
def _disk_parts(rundir: str) -> dict[str, int]:
    """Allocated bytes (``st_blocks * 512``) under ``rundir`` by part: hf, output, tmp, other."""
    parts = {"hf": 0, "output": 0, "tmp": 0, "other": 0}
    try:
        entries = os.listdir(rundir)
    except FileNotFoundError:
        return parts
    for entry in entries:
        top = os.path.join(rundir, entry)
        part = ("hf" if entry == "hf" else "output" if entry.lstrip(".").startswith("output")
                else "tmp" if entry in ("tmp", "cache") else "other")
        total = 0
        try:
            st = os.lstat(top)
        except FileNotFoundError:
            continue
        total += st.st_blocks * 512
        for root, dirs, files in os.walk(top):
            for name in dirs + files:
                try:
                    total += os.lstat(os.path.join(root, name)).st_blocks * 512
                except FileNotFoundError:
                    pass
        parts[part] += total
    return parts


def _shm_used() -> int:
    st = os.statvfs("/dev/shm")
    return (st.f_blocks - st.f_bfree) * st.f_frsize


class PeakDisk:
    """Samples the run directory's disk usage (total and by part) and /dev/shm growth in a thread."""

    def __init__(self, rundir: str, interval: float = DISK_INTERVAL):
        self.rundir, self.interval = rundir, interval
        self.shm_base = _shm_used()
        self.peak_total = self.peak_without_hf = self.peak_shm = 0
        self.peak_parts: dict[str, int] = {}
        self.parts_at_peak: dict[str, int] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        parts = _disk_parts(self.rundir)
        total = sum(parts.values())
        if total > self.peak_total:
            self.peak_total, self.parts_at_peak = total, parts
        self.peak_without_hf = max(self.peak_without_hf, total - parts["hf"])
        for k, v in parts.items():
            self.peak_parts[k] = max(self.peak_parts.get(k, 0), v)
        self.peak_shm = max(self.peak_shm, _shm_used() - self.shm_base)
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join()
        self._sample()  # the state at the end of the build
        return {"peak_disk_bytes": self.peak_total, "peak_disk_without_hf_bytes": self.peak_without_hf,
                "disk_parts_at_peak": self.parts_at_peak, "peak_disk_parts": self.peak_parts,
                "peak_dev_shm_bytes": self.peak_shm, "disk_samples": self.samples}


def child_env(rundir: str) -> dict[str, str]:
    """A fresh set of caches inside ``rundir``, offline, and the repository importable from anywhere."""
    hf, tmp = os.path.join(rundir, "hf"), os.path.join(rundir, "tmp")
    os.makedirs(tmp)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_", "DATA_OPTIMIZER_", "LITDATA_")) and k != "TOKENIZERS_PARALLELISM"}
    env.update({
        "HF_HOME": hf, "HF_DATASETS_CACHE": os.path.join(hf, "datasets"),
        "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
        "TMPDIR": tmp, "XDG_CACHE_HOME": os.path.join(rundir, "cache"),
        "DATA_OPTIMIZER_CACHE_FOLDER": os.path.join(tmp, "litdata-chunks"),
        "DATA_OPTIMIZER_DATA_CACHE_FOLDER": os.path.join(tmp, "litdata-data"),
        "PYTHONPATH": os.pathsep.join([REPO_ROOT, *filter(None, [os.environ.get("PYTHONPATH")])]),
    })
    return env


def measure(contender: str, workers: int, data: str, tok_dir: str, rundir: str, log_path: str) -> dict[str, Any]:
    """Run one build in a fresh child process and sample its process tree until it reports the build done."""
    shutil.rmtree(rundir, ignore_errors=True)
    os.makedirs(rundir)
    env = child_env(rundir)
    cmd = [sys.executable, "-m", "benchmarks.build_peers", "--one", contender, str(workers), data, tok_dir, rundir]
    result = None
    with open(log_path, "w") as log:
        t0 = time.perf_counter()
        load_before = os.getloadavg()
        disk = PeakDisk(rundir)
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=env, cwd=REPO_ROOT)
        memory = common.PeakMemory(proc.pid, interval=PSS_INTERVAL)
        sampled: dict[str, Any] | None = None
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith(MARK_BUILT) and sampled is None:
                sampled = {"process_seconds": time.perf_counter() - t0, "peak_pss_mb": memory.stop(), **disk.stop(),
                           "load_average_before": load_before, "load_average_after": os.getloadavg()}
            elif line.startswith(MARK_RESULT):
                result = json.loads(line[len(MARK_RESULT):])
            else:
                log.write(line)
        rc = proc.wait()
        if sampled is None:
            memory.stop()
            disk.stop()
    if rc != 0 or result is None or sampled is None:
        with open(log_path) as f:
            tail = f.read()[-4000:]
        raise RuntimeError(f"{contender}/{workers} failed (exit {rc}); log {log_path}:\n{tail}")
    out = _disk_parts(rundir)
    output_bytes = out["output"]
    row = {**result, **sampled, "output_bytes": output_bytes, "run_dir_bytes_after": sum(out.values()),
           "hf_cache_bytes_after": out["hf"]}
    row["tokens_per_second"] = row["tokens"] / row["seconds"]
    row["peak_disk_over_output"] = row["peak_disk_bytes"] / output_bytes
    row["peak_disk_without_hf_over_output"] = row["peak_disk_without_hf_bytes"] / output_bytes
    shutil.rmtree(rundir, ignore_errors=True)
    return row


# -- the benchmark (parent) ----------------------------------------------------------------------------
def _median(rows: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[int, str, int], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["size_mb"], r["contender"], r["workers"]), []).append(r)
    summary = []
    for (size, contender, workers), rows in groups.items():
        s = {"size_mb": size, "contender": contender, "workers": workers, "rounds": len(rows),
             "tokens": rows[0]["tokens"]}
        for key in ("tokens_per_second", "seconds", "peak_pss_mb", "pss_after_imports_mb", "peak_dev_shm_bytes",
                    "peak_disk_bytes",
                    "output_bytes", "peak_disk_over_output", "peak_disk_without_hf_over_output"):
            s[key] = _median(rows, key)
        if contender.startswith("zarrtok"):
            s["encoder"] = rows[0]["encoder"]
        summary.append(s)
    for s in summary:
        s["load_average_1min"] = [r["load_average_before"][0] for r in groups[(s["size_mb"], s["contender"], s["workers"])]]
        archai = next((a for a in summary if (a["size_mb"], a["contender"], a["workers"])
                       == (s["size_mb"], "archai", s["workers"])), None)
        s["speed_vs_archai"] = s["tokens_per_second"] / archai["tokens_per_second"] if archai else None
        s["pss_vs_archai"] = s["peak_pss_mb"] / archai["peak_pss_mb"] if archai else None
        hf = next((a for a in summary if (a["size_mb"], a["contender"], a["workers"])
                   == (s["size_mb"], "zarrtok-hf", s["workers"])), None)
        s["speed_vs_zarrtok_hf"] = s["tokens_per_second"] / hf["tokens_per_second"] if hf else None
    order = {c: i for i, c in enumerate(CONTENDERS)}
    summary.sort(key=lambda s: (s["size_mb"], s["workers"], order[s["contender"]]))
    return summary


def check_tokens(runs: list[dict[str, Any]], corpora: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Every build of a size: same total, same histogram of ids, one EOS per document."""
    checks: dict[str, Any] = {"ok": True, "sizes": {}}
    for size, corpus in corpora.items():
        rows = [r for r in runs if r["size_mb"] == size]
        totals = {f"{r['contender']}/{r['workers']}": r["tokens"] for r in rows}
        digests = {f"{r['contender']}/{r['workers']}": r["histogram_sha256"][:16] for r in rows}
        eos = {f"{r['contender']}/{r['workers']}": r["eos_count"] for r in rows}
        ok_totals = len(set(totals.values())) == 1
        ok_hist = len(set(digests.values())) == 1
        ok_eos = set(eos.values()) == {corpus["documents"]}
        ok_dtype = all(r["dtypes"] == ["uint16"] for r in rows)
        checks["sizes"][str(size)] = {"documents": corpus["documents"], "totals": totals, "equal_totals": ok_totals,
                                      "equal_histograms": ok_hist, "histograms": digests, "eos_counts": eos,
                                      "one_eos_per_document": ok_eos, "all_uint16": ok_dtype}
        checks["ok"] &= ok_totals and ok_hist and ok_eos and ok_dtype
    return checks


def rows(summary: list[dict[str, Any]], sizes: Sequence[int]) -> list[dict[str, Any]]:
    """The suite's result rows (targets on the largest corpus; ratios to the other contenders informational).
    Rows of contenders that did not run (``--contenders``) are left out."""
    big, small = max(sizes), min(sizes)
    get = {(s["size_mb"], s["contender"], s["workers"]): s for s in summary}
    out = []
    rounds = get[(big, "zarrtok", WORKERS[0])]["rounds"]

    def add(measure: str, value: float, reference: str, workers: int, target: str | None = None,
            ok: bool | None = None, size: int = big) -> None:
        z = get.get((size, "zarrtok", workers), {})
        out.append(common.row("build_peers", measure, value, reference=reference, target=target, ok=ok,
                              conditions={"size_mb": size, "workers": workers, "rounds": rounds,
                                          "load_average_1min": z.get("load_average_1min")}))

    for w in WORKERS:
        z, a = get[(big, "zarrtok", w)], get.get((big, "archai", w))
        if a is not None:
            add(f"{big} MB {w}w: tokens/s zarrtok / archai", z["speed_vs_archai"], "archai", w,
                f">= {TARGET_SPEED:g}x", z["speed_vs_archai"] >= TARGET_SPEED)
            ratio = z["peak_pss_mb"] / a["peak_pss_mb"]
            add(f"{big} MB {w}w: peak PSS zarrtok / archai", ratio, "archai", w, f"<= {TARGET_PSS:g}x",
                ratio <= TARGET_PSS)
    for w in WORKERS:
        z, hf = get[(big, "zarrtok", w)], get.get((big, "zarrtok-hf", w))
        if hf is not None:
            ratio = z["tokens_per_second"] / hf["tokens_per_second"]
            target = w == 2  # the target: the 2-worker build of today (encoder="hf")
            add(f"{big} MB {w}w: tokens/s zarrtok (gigatoken) / zarrtok encoder=hf", ratio, "zarrtok-hf", w,
                f">= {TARGET_VS_HF:g}x" if target else None, ratio >= TARGET_VS_HF if target else None)
        t = get.get((big, "zarrtok-tiktoken", w))
        if t is not None:
            add(f"{big} MB {w}w: tokens/s zarrtok (gigatoken) / zarrtok encoder=tiktoken",
                z["tokens_per_second"] / t["tokens_per_second"], "zarrtok-tiktoken", w)
    for w in WORKERS:
        if big != small and (small, "zarrtok", w) in get:
            flat = get[(big, "zarrtok", w)]["peak_pss_mb"] / get[(small, "zarrtok", w)]["peak_pss_mb"]
            add(f"{w}w: zarrtok peak PSS {big} MB / {small} MB (flat)", flat, f"zarrtok, {small} MB", w,
                f"<= {TARGET_FLAT:g}x", flat <= TARGET_FLAT)
    for w in WORKERS:
        z = get[(big, "zarrtok", w)]
        add(f"{big} MB {w}w: zarrtok peak disk / output", z["peak_disk_over_output"], "output bytes", w,
            f"<= {TARGET_DISK:g}x", z["peak_disk_over_output"] <= TARGET_DISK)
        add(f"{big} MB {w}w: zarrtok peak disk w/o datasets cache / output", z["peak_disk_without_hf_over_output"],
            "output bytes", w)
    for peer in ("nanogpt", "litdata"):
        for w in WORKERS:
            z, p = get[(big, "zarrtok", w)], get.get((big, peer, w))
            if p is None:
                continue
            add(f"{big} MB {w}w: tokens/s zarrtok / {peer}", z["tokens_per_second"] / p["tokens_per_second"], peer, w)
            add(f"{big} MB {w}w: peak PSS zarrtok / {peer}", z["peak_pss_mb"] / p["peak_pss_mb"], peer, w)
    return out


def warm_page_cache(path: str) -> None:
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass


def run(args: argparse.Namespace, workdir: str) -> dict[str, Any]:
    common.isolate_caches(workdir)  # the parent's own tokenizer training; every child gets fresh caches of its own
    t_start = time.perf_counter()
    load_before = os.getloadavg()
    print(f"workdir {workdir}; sizes {args.sizes_mb} MB, workers {list(WORKERS)}, {args.rounds} round(s)", flush=True)
    tok_dir, tok_info = make_tokenizer(workdir, args.seed)
    took = "reused" if tok_info["reused"] else f"trained in {tok_info['seconds']:.1f}s"
    print(f"tokenizer: byte-level BPE, vocab {VOCAB_SIZE} ({took})", flush=True)
    runs_dir, logs_dir = os.path.join(workdir, "runs"), os.path.join(workdir, "logs")
    os.makedirs(logs_dir, exist_ok=True)
    big = max(args.sizes_mb)
    corpora: dict[int, dict[str, Any]] = {}
    runs: list[dict[str, Any]] = []
    for size in args.sizes_mb:
        data, corpus = make_corpus(workdir, size * 1_000_000, args.seed)
        corpora[size] = corpus
        took = "reused" if corpus["reused"] else f"generated in {corpus['seconds']:.1f}s"
        print(f"\ncorpus {size} MB: {corpus['documents']:,} documents, {corpus['words']:,} words, "
              f"{corpus['bytes'] / 1e6:.1f} MB ({took})", flush=True)
        warm_page_cache(data)
        names = args.contenders if size == big else args.small_contenders
        combos = [(c, w) for w in WORKERS for c in CONTENDERS if c in names and f"{c}/{w}" not in args.skip]
        for r in range(args.rounds):
            for k in range(len(combos)):
                contender, workers = combos[(k + r) % len(combos)]
                name = f"{size}mb-{contender}-{workers}-r{r}"
                row = measure(contender, workers, data, tok_dir, os.path.join(runs_dir, name),
                              os.path.join(logs_dir, name + ".log"))
                row.update({"size_mb": size, "round": r})
                runs.append(row)
                print(f"  {size} MB r{r} {contender:<16} w{workers}: {row['tokens']:>12,} tokens in "
                      f"{row['seconds']:6.1f}s = {row['tokens_per_second'] / 1e6:5.2f}M tok/s, peak PSS "
                      f"{row['peak_pss_mb']:6.0f} MB, /dev/shm +{row['peak_dev_shm_bytes'] / 1e6:.0f} MB, peak disk "
                      f"{row['peak_disk_bytes'] / 1e6:.0f} MB = {row['peak_disk_over_output']:.2f}x output, load "
                      f"{row['load_average_before'][0]:.2f} -> {row['load_average_after'][0]:.2f}", flush=True)
    shutil.rmtree(runs_dir, ignore_errors=True)
    summary = summarize(runs)
    checks = check_tokens(runs, corpora)
    import datasets
    import litdata
    import tokenizers
    import transformers
    import wordfreq

    return {
        "benchmark": "build_peers",
        "rows": rows(summary, args.sizes_mb),
        "command": common.command_line("build_peers", ".venv-peers/bin/python"),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {**common.machine_info(), "load_average_before": load_before, "archai": archai.VERSION,
                    "litdata": litdata.__version__, "datasets": datasets.__version__,
                    "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
                    "wordfreq": getattr(wordfreq, "__version__", None)},
        "settings": {"sizes_mb": list(args.sizes_mb), "workers": list(WORKERS), "rounds": args.rounds,
                     "seed": args.seed, "contenders": list(args.contenders),
                     "small_contenders": list(args.small_contenders), "skipped": sorted(args.skip), "pss_interval_s": PSS_INTERVAL,
                     "disk_interval_s": DISK_INTERVAL, "litdata_input_bytes": LIT_INPUT_BYTES,
                     "litdata_chunk_bytes": LIT_CHUNK_BYTES, "nanogpt_test_size": NANOGPT_TEST_SIZE,
                     "nanogpt_batches": NANOGPT_BATCHES},
        "tokenizer": tok_info,
        "corpora": {str(k): v for k, v in corpora.items()},
        "checks": checks,
        "runs": runs,
        "summary": summary,
        "total_seconds": time.perf_counter() - t_start,
    }


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def print_report(report: dict[str, Any]) -> None:
    m = report["machine"]
    common.print_machine(m, (
          f"zarrtok {m['zarrtok']}, archai 1.0.0, litdata {m['litdata']}, datasets {m['datasets']}, "
          f"transformers {m['transformers']}"))
    common.print_load(m, "load average")
    def mb(n: float) -> str:
        return f"{n / 1e6:,.0f} MB"

    columns = [  # (header, width, cell)
        ("size", 7, lambda s: f"{s['size_mb']} MB"),
        ("contender", -16, lambda s: s["contender"]),
        ("w", 1, lambda s: s["workers"]),
        ("tokens", 12, lambda s: f"{s['tokens']:,}"),
        ("seconds", 7, lambda s: f"{s['seconds']:.1f}"),
        ("tok/s", 7, lambda s: f"{s['tokens_per_second'] / 1e6:.2f}M"),
        ("vs archai", 9, lambda s: _x(s["speed_vs_archai"])),
        ("vs hf", 6, lambda s: _x(s["speed_vs_zarrtok_hf"])),
        ("peak PSS", 9, lambda s: f"{s['peak_pss_mb']:,.0f} MB"),
        ("vs archai", 9, lambda s: _x(s["pss_vs_archai"])),
        ("imports", 8, lambda s: f"{s['pss_after_imports_mb']:,.0f} MB"),
        ("/dev/shm", 8, lambda s: mb(s["peak_dev_shm_bytes"])),
        ("peak disk", 9, lambda s: mb(s["peak_disk_bytes"])),
        ("output", 8, lambda s: mb(s["output_bytes"])),
        ("disk/out", 8, lambda s: f"{s['peak_disk_over_output']:.2f}x"),
        ("w/o hf", 6, lambda s: f"{s['peak_disk_without_hf_over_output']:.2f}x"),
        ("load", 5, lambda s: f"{statistics.median(s['load_average_1min']):.2f}"),
    ]

    def line(cells: list[Any]) -> str:
        return " ".join(f"{c:<{-w}}" if w < 0 else f"{c:>{w}}" for c, (_, w, _) in zip(cells, columns))

    head = line([h for h, _, _ in columns])
    print("\n" + head + "\n" + "-" * len(head))
    for s in report["summary"]:
        print(line([cell(s) for _, _, cell in columns]))
    zt = [s for s in report["summary"] if s["contender"].startswith("zarrtok")]
    print("zarrtok encoder: " + "; ".join(sorted({s["encoder"] for s in zt})))
    print("imports: PSS of the child after its imports, before the build; disk/out: peak disk of the run directory "
          "(datasets cache included) / final output; w/o hf: the same without the datasets cache")
    for size, c in report["checks"]["sizes"].items():
        print(f"\ntokens, {size} MB ({c['documents']:,} documents): "
              + ", ".join(f"{k} {v:,}" for k, v in c["totals"].items()))
        print(f"  equal totals: {c['equal_totals']}, equal id histograms: {c['equal_histograms']}, "
              f"one EOS per document: {c['one_eos_per_document']}, all uint16: {c['all_uint16']}")
    print("\ntargets:")
    for t in report["rows"]:
        print(f"  {t['measure']:<58} {t['value']:>7.2f}x  {t['target'] or '':>8}  {t['result'] or ''}")
    if not report["checks"]["ok"]:
        print("\nTOKEN MISMATCH between contenders: see 'checks' in the JSON")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.build_peers", description=__doc__.split("\n\n")[0])
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help=f"corpora of {QUICK_SIZES_MB} MB (a smoke run)")
    size.add_argument("--full", action="store_true", help=f"corpora of {FULL_SIZES_MB} MB (the default)")
    p.add_argument("--sizes-mb", type=int, nargs="+", default=None, help="corpus sizes in MB (10^6 bytes)")
    p.add_argument("--rounds", type=int, default=1, help="rounds of the builds per size (default 1)")
    p.add_argument("--contenders", nargs="+", choices=CONTENDERS, default=list(CONTENDERS),
                   help="contenders at the largest size (default: all; 'zarrtok' always runs)")
    p.add_argument("--small-contenders", nargs="+", choices=CONTENDERS, default=None,
                   help="contenders at the smaller sizes (default: as --contenders); zarrtok's flatness needs only 'zarrtok'")
    p.add_argument("--skip", nargs="+", default=[], metavar="CONTENDER/WORKERS",
                   help="builds not to run, e.g. zarrtok-hf/1 (a shorter run on a busy machine); zarrtok/w always runs")
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--json", default=DEFAULT_JSON, help=f"where to write the results (default {DEFAULT_JSON})")
    p.add_argument("--workdir", default=None,
                   help="keep the corpora and tokenizer here (reused by later runs) instead of a temporary directory")
    p.add_argument("--one", nargs=5, metavar=("CONTENDER", "WORKERS", "DATA", "TOKENIZER", "RUNDIR"),
                   help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.sizes_mb = sorted(args.sizes_mb or (QUICK_SIZES_MB if args.quick else FULL_SIZES_MB))
    args.skip = {k for k in args.skip if not k.startswith("zarrtok/")}
    args.contenders = sorted(set(args.contenders) | {"zarrtok"}, key=CONTENDERS.index)
    args.small_contenders = sorted(set(args.small_contenders or args.contenders) | {"zarrtok"}, key=CONTENDERS.index)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.one:
        contender, workers, data, tok_dir, rundir = args.one
        print(MARK_RESULT + json.dumps(run_one(contender, int(workers), data, tok_dir, rundir)), flush=True)
        return 0
    report = common.run_in_workdir(run, args, "zarrtok-build-peers-")
    print_report(report)
    common.write_report(report, args.json)
    return 0 if report["checks"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

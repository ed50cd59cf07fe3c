"""Random-access throughput of ``TokenDataset`` versus a flat ``np.memmap`` (the nanoGPT / Archai layout).

Run from the repository root::

    python -m benchmarks.random_access            # ~20M tokens (default)
    python -m benchmarks.random_access --quick    # ~2M tokens, well under a minute
    python -m benchmarks.random_access --tokens 50000000 --json /tmp/ra.json

Method
------
1. **Data, offline.** A synthetic corpus from :func:`zarrtok.testing.corpus.generate_documents` (enough documents
   for ``--tokens``), a byte-level BPE tokenizer (``vocab_size=4096``, so tokens are ``uint16``)
   trained on a sample of it, written as JSONL, and built into two stores with the public
   :func:`zarrtok.build` (``num_workers=2``): one with the default chunk size (8 MiB) and one with
   ``chunk_size=65536`` tokens, so that many windows straddle chunk boundaries. Everything,
   including the Hugging Face caches, lives in a temporary directory.
2. **Reference.** The store's train tokens are written to one flat raw file, opened with
   ``np.memmap``; item ``i`` is exactly Archai's ``FastHfDataset``::

       x = torch.from_numpy(mm[i*L : i*L + L + 1].astype(np.int64)); return x[:-1], x[1:]

3. **Measurement.** For each store and ``seq_len`` in 512, 2048, 8192 the same window indices (fixed
   seed, drawn uniformly with replacement) are read by both datasets in a single process. Both are
   first checked to return identical tensors, then warmed up (every page of both files touched, a
   full pass over the indices). A round reads every index once; rounds of the contenders are
   interleaved (the order rotates every round to cancel drift), with the garbage collector off
   during a round. The number of indices is calibrated so one reference round takes
   ``--round-seconds``. Reported: the median windows/s of each over ``--rounds`` rounds and the
   ratio of the medians (target: zarrtok >= 0.9x the reference). Informational: the same reference
   code on a plain ``ndarray`` view of the same map (``np.memmap``'s Python-level ``__getitem__``
   costs a few µs per window, so this is the faster bound for a flat file). The batched line
   (informational) compares
   ``dataset.__getitems__(16 indices)`` + :func:`zarrtok.collate_windows` with 16 reference items +
   ``torch.stack``, measured the same way.

Both files are in the page cache throughout (the corpus is far smaller than RAM): this measures the
per-window CPU cost of the read path, not disk I/O. The script always exits 0; a missed target is
printed as ``MISS``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from benchmarks.common import (
    TOKENIZER_SAMPLE_DOCS,  # noqa: F401  (re-exported: the corpus settings of the suites built on make_corpus)
    VOCAB_SIZE,
    calibrate,
    command_line,
    compare,
    conditions,
    default_json,
    isolate_caches,
    load_average,
    machine_info,
    make_corpus,
    print_load,
    print_machine,
    run_in_workdir,
    write_report,
)
from benchmarks.common import row as result_row
from benchmarks.peers.nanogpt import MemmapWindows

SEQ_LENS = (512, 2048, 8192)
BATCH_SIZE = 16
TARGET_RATIO = 0.9
SMALL_CHUNK = 65536
SEED = 1234
DEFAULT_JSON = default_json("random_access")


# -- the reference -----------------------------------------------------------------------------------
# -- timing ------------------------------------------------------------------------------------------
# -- the benchmark -------------------------------------------------------------------------------------
def straddling_fraction(indices: np.ndarray, seq_len: int, chunk_size: int) -> float:
    """Fraction of the windows ``indices`` whose ``seq_len + 1`` tokens cross a chunk boundary."""
    start = indices.astype(np.int64) * seq_len
    return float(np.mean(start // chunk_size != (start + seq_len) // chunk_size))


def check_same(ds: Any, ref: MemmapWindows, indices: np.ndarray) -> None:
    """Both datasets must return the same windows, singly and batched (else the timing is meaningless)."""
    for i in indices[:200]:
        (a, b), (c, d) = ds[int(i)], ref[int(i)]
        if not (torch.equal(a, c) and torch.equal(b, d) and a.dtype == c.dtype == torch.int64):
            raise AssertionError(f"window {i}: zarrtok and the reference disagree")
    batch = [int(i) for i in indices[:BATCH_SIZE]]
    inputs, labels = _zarrtok_batch(ds, batch)
    if not torch.equal(inputs, torch.stack([ref[i][0] for i in batch])) or not torch.equal(
        labels, torch.stack([ref[i][1] for i in batch])
    ):
        raise AssertionError("batched windows: zarrtok and the reference disagree")


def _zarrtok_batch(ds: Any, batch: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    import zarrtok

    return zarrtok.collate_windows(ds.__getitems__(batch))


def _reference_batch(ref: MemmapWindows, batch: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    samples = [ref[i] for i in batch]
    return torch.stack([s[0] for s in samples]), torch.stack([s[1] for s in samples])


def bench_seq_len(store: Any, raw_path: str, seq_len: int, args: argparse.Namespace) -> dict[str, Any]:
    """Single-window and batched comparisons for one store and ``seq_len``."""
    ds = store.dataset("train", seq_len)
    ref = MemmapWindows(raw_path, store.dtype, seq_len)
    assert len(ds) == len(ref), (len(ds), len(ref))
    rng = np.random.default_rng(SEED + seq_len)
    pool = rng.integers(0, len(ds), size=200_000)
    check_same(ds, ref, pool)

    n = calibrate(ref.__getitem__, pool.tolist(), args.round_seconds)
    indices = pool[:n].tolist() if n <= len(pool) else rng.integers(0, len(ds), size=n).tolist()
    plain = MemmapWindows(raw_path, store.dtype, seq_len, plain=True)
    single = compare(
        {"reference": ref.__getitem__, "zarrtok": ds.__getitem__, "ndarray_mmap": plain.__getitem__},
        indices,
        rounds=args.rounds,
        unit="window",
    )

    batches_pool = rng.integers(0, len(ds), size=(4096, BATCH_SIZE)).tolist()
    nb = calibrate(lambda b: _reference_batch(ref, b), batches_pool, args.round_seconds)
    batches = [batches_pool[i % len(batches_pool)] for i in range(nb)]
    batched = compare(
        {"reference": lambda b: _reference_batch(ref, b), "zarrtok": lambda b: _zarrtok_batch(ds, b)},
        batches,
        rounds=args.rounds,
        unit="batch",
    )
    chunk = store.tokens("train").readers[0].chunk_size
    return {
        "seq_len": seq_len,
        "windows": len(ds),
        "straddling_fraction": straddling_fraction(np.asarray(indices), seq_len, chunk),
        "single": single.to_json(),
        "batched": {**batched.to_json(), "batch_size": BATCH_SIZE},
    }


def touch_all_pages(path: str, dtype: np.dtype, store: Any) -> None:
    """Bring the raw file and every chunk of the store into the page cache (and map them)."""
    int(np.memmap(path, dtype=dtype, mode="r").sum(dtype=np.uint64))
    int(np.asarray(store.tokens("train")).sum(dtype=np.uint64))


# -- data ----------------------------------------------------------------------------------------------
def build_store(data_path: str, tok_dir: str, output: str, chunk_size: int | None) -> tuple[Any, float | None]:
    """Build (or, in a reused ``--workdir``, reopen) a store; return it and the build time (None if reused)."""
    import zarrtok

    previous = zarrtok.open(output).manifest.created if os.path.exists(os.path.join(output, "zarr.json")) else None
    t0 = time.perf_counter()
    store = zarrtok.build(
        "json", data_files=data_path, tokenizer_name=tok_dir, output=output,
        num_workers=2, progress=False, chunk_size=chunk_size, overwrite="changed",
    )
    seconds = time.perf_counter() - t0
    return store, None if store.manifest.created == previous else seconds


# -- report --------------------------------------------------------------------------------------------
def verdict(ratio: float) -> str:
    return "PASS" if ratio >= TARGET_RATIO else "MISS"


def print_table(variant: dict[str, Any]) -> None:
    print(f"\n== store: {variant['name']} (chunk_size={variant['chunk_size']:,} tokens, {variant['chunks']} "
          f"chunk(s), mapped-chunk budget={variant['map_budget']}, {variant['tokens']:,} train tokens)")
    head = (f"{'seq_len':>7}  {'straddle':>8}  {'reference w/s':>13}  {'zarrtok w/s':>11}  {'ratio':>6}  "
            f"{'target':>6}  result  | {'ndarray w/s':>11}  {'zarrtok/nd':>10}  noise ref/zt/nd")
    print(head)
    print("-" * len(head))
    for row in variant["results"]:
        s = row["single"]
        med, spread, ratio = s["median"], s["spread"], s["ratio_to_reference"]
        print(f"{row['seq_len']:>7}  {row['straddling_fraction']:>8.1%}  {med['reference']:>13,.0f}  "
              f"{med['zarrtok']:>11,.0f}  {ratio['zarrtok']:>5.2f}x  {'>=' + str(TARGET_RATIO):>6}  "
              f"{verdict(ratio['zarrtok']):<6}  | {med['ndarray_mmap']:>11,.0f}  "
              f"{med['zarrtok'] / med['ndarray_mmap']:>9.2f}x  "
              f"{spread['reference']:.0%}/{spread['zarrtok']:.0%}/{spread['ndarray_mmap']:.0%}")
    print(f"batched, informational: __getitems__({BATCH_SIZE}) + collate_windows vs {BATCH_SIZE} reference "
          f"items + torch.stack")
    for row in variant["results"]:
        b = row["batched"]
        ref, zt = b["median"]["reference"], b["median"]["zarrtok"]
        print(f"{row['seq_len']:>7}  reference {ref:>8,.0f} batch/s ({ref * BATCH_SIZE:>9,.0f} w/s)   "
              f"zarrtok {zt:>8,.0f} batch/s ({zt * BATCH_SIZE:>9,.0f} w/s)   ratio {zt / ref:.2f}x")


def rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The suite's result rows: zarrtok / np.memmap single windows/s, every store and seq_len."""
    out = []
    for variant in report["variants"]:
        for res in variant["results"]:
            ratio = res["single"]["ratio_to_reference"]["zarrtok"]
            out.append(result_row("random_access", f"{variant['name']} chunks, seq {res['seq_len']}: windows/s vs np.memmap",
                           ratio, reference="np.memmap", target=f">= {TARGET_RATIO:g}x", ok=ratio >= TARGET_RATIO,
                           conditions=conditions(report, tokens=variant["tokens"], chunk_size=variant["chunk_size"],
                                                 seq_len=res["seq_len"], rounds=report["settings"]["rounds"])))
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.random_access", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="~2M tokens, fewer and shorter rounds")
    p.add_argument("--tokens", type=int, default=None, help="corpus size in tokens (default 20M; 2M with --quick)")
    p.add_argument("--json", default=DEFAULT_JSON, help=f"where to write the results (default {DEFAULT_JSON})")
    p.add_argument("--rounds", type=int, default=None,
                   help="timed rounds per contender (default 7; 5 with --quick)")
    p.add_argument("--round-seconds", type=float, default=None,
                   help="target duration of one reference round (default 0.5; 0.1 with --quick)")
    p.add_argument("--workdir", default=None,
                   help="keep data and stores here (reused by later runs) instead of a temporary directory")
    args = p.parse_args(argv)
    args.tokens = args.tokens or (2_000_000 if args.quick else 20_000_000)
    args.rounds = args.rounds or (5 if args.quick else 7)
    args.round_seconds = args.round_seconds or (0.1 if args.quick else 0.5)
    return args


def run(args: argparse.Namespace, workdir: str) -> dict[str, Any]:
    isolate_caches(workdir)
    import zarrtok  # noqa: F401  (after isolate_caches)
    from zarrtok.storage import mapping as zarrtok_mapping

    t_start = time.perf_counter()
    load_before = load_average()
    print(f"workdir {workdir}; target {args.tokens:,} tokens", flush=True)
    data_path, tok_dir, corpus = make_corpus(workdir, args.tokens)
    print(f"corpus: {corpus['documents']:,} documents, {corpus['jsonl_bytes'] / 2**20:.0f} MiB JSONL "
          f"({corpus['seconds']:.1f}s)", flush=True)

    variants = []
    raw_path = os.path.join(workdir, "train.bin")
    for name, chunk_size in (("default", None), (f"small chunks ({SMALL_CHUNK})", SMALL_CHUNK)):
        output = os.path.join(workdir, "store-default" if chunk_size is None else f"store-{chunk_size}")
        store, seconds = build_store(data_path, tok_dir, output, chunk_size)
        tokens = store.tokens("train")
        if chunk_size is None:  # the reference file: the same tokens, flat
            np.asarray(tokens).tofile(raw_path)
        info = store.info()["splits"]["train"]
        took = "reused" if seconds is None else f"{seconds:.1f}s, {len(tokens) / seconds / 1e6:.2f}M tokens/s"
        print(f"built {name}: {len(tokens):,} tokens, {info['chunks']} chunk(s) of "
              f"{tokens.readers[0].chunk_size:,} tokens, {store.dtype} ({took})", flush=True)
        touch_all_pages(raw_path, store.dtype, store)
        results = []
        for seq_len in SEQ_LENS:
            row = bench_seq_len(store, raw_path, seq_len, args)
            med = row["single"]["median"]
            print(f"  seq_len {seq_len}: reference {med['reference']:,.0f} w/s, zarrtok {med['zarrtok']:,.0f} w/s "
                  f"({med['zarrtok'] / med['reference']:.2f}x)", flush=True)
            results.append(row)
        variants.append({
            "name": name,
            "path": output,
            "chunk_size": tokens.readers[0].chunk_size,
            "chunks": info["chunks"],
            "shards": info["shards"],
            "tokens": len(tokens),
            "dtype": store.dtype.name,
            "map_budget": zarrtok_mapping.process_budget().limit,
            "build_seconds": seconds,
            "results": results,
        })
    return {
        "benchmark": "random_access",
        "command": command_line("random_access"),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {**machine_info(), "load_average_before": load_before},
        "settings": {
            "tokens_target": args.tokens, "rounds": args.rounds, "round_seconds": args.round_seconds,
            "seq_lens": list(SEQ_LENS), "batch_size": BATCH_SIZE, "target_ratio": TARGET_RATIO,
            "vocab_size": VOCAB_SIZE, "seed": SEED,
        },
        "corpus": corpus,
        "variants": variants,
        "total_seconds": time.perf_counter() - t_start,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    report = run_in_workdir(run, args, "zarrtok-bench-")

    m = report["machine"]
    print_machine(m, (
          f"torch {m['torch']}, numpy {m['numpy']}, zarr {m['zarr']}, zarrtok {m['zarrtok']}"))
    print_load(m)
    print(f"rounds: {args.rounds} x ~{args.round_seconds}s each, interleaved; medians. straddle = share of the "
          f"timed windows crossing a chunk boundary; ndarray = the reference code on a plain ndarray view of the "
          f"same map (informational); noise = (max-min)/median over rounds")
    for variant in report["variants"]:
        print_table(variant)
    missed = [(v["name"], r["seq_len"]) for v in report["variants"] for r in v["results"]
              if r["single"]["ratio_to_reference"]["zarrtok"] < TARGET_RATIO]
    if missed:
        print(f"\nMISS: zarrtok below {TARGET_RATIO}x the memmap reference for " +
              ", ".join(f"{name} seq_len={L}" for name, L in missed))
    else:
        print(f"\nall targets met (zarrtok >= {TARGET_RATIO}x the memmap reference)")

    report["rows"] = rows(report)
    write_report(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Statistics throughput: ``store.stats(split)`` tokens/s on a synthetic store, and its peak memory.

Run from the repository root::

    python -m benchmarks.stats_speed --quick     # 5e7 tokens (~100 MB store), about a minute
    python -m benchmarks.stats_speed --full      # 1e9 tokens (~2 GB store), a few minutes
    python -m benchmarks.stats_speed --tokens 2e8 --workdir /big/disk

Method
------
* A synthetic ``uint16`` store written with zarrtok's own :class:`~zarrtok.ingest.writer.ShardWriter`
  (raw chunks + CRC-32C, default 8 MiB chunks, document ends, manifest last): Zipf-distributed ids
  over a 32,000-id vocabulary, geometric document lengths (mean ~600 tokens), EOS at every end.
* Each measurement runs in a **fresh interpreter** (imports outside the timing), page cache warm
  (the store was just written; a first untimed pass reads it once): ``store.stats("train",
  cache=False, progress=False)`` — token counts per id (``np.bincount`` block by block), EOS,
  document-length distribution, and windows / boundary crossing / tail / padding at seq_len 512,
  2048 and 8192. Reported: wall seconds, tokens/s, tokens per CPU-second (the "per core" figure:
  the scan is single-threaded), and separately the counting scan alone.
* Memory: peak RSS (``VmRSS``) and peak anonymous RSS (``RssAnon``), sampled every 2 ms during the
  timed call, and their values before it. RSS includes the memory-mapped chunk pages the scan touched (file-backed
  page cache, reclaimable, shared with every other reader); anonymous memory is what the stats
  themselves hold (one count per id, a block's int64 temporary, the document offsets) and must stay
  flat as the store grows: compare ``--tokens 5e7`` with ``--full``. A third measurement opens the
  store with ``reader_options={"max_mapped_chunks": 2}`` (the local readers' map budget): evicted
  chunk maps are unmapped, so the whole RSS stays within a few chunks (8 MiB each) of the baseline
  however large the store — the way to give stats a memory budget.

Target (issue 15): >= 200M tokens/s per core for the counting stats, flat memory.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from benchmarks.common import default_json, load_average, row, write_report

SUITE = "stats_speed"
VOCAB = 32000
EOS = 0
TARGET = 200e6

_MEASURE = r"""
import json, os, resource, sys, threading, time
import numpy as np
import zarrtok
from zarrtok.read import analysis

path, what, options = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
peak = {"anon_kb": 0, "rss_kb": 0}
stop = False
def status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0
def anon_kb():
    return status_kb("RssAnon")
def sample():
    while not stop:
        peak["anon_kb"] = max(peak["anon_kb"], anon_kb())
        peak["rss_kb"] = max(peak["rss_kb"], status_kb("VmRSS"))
        time.sleep(0.002)
store = zarrtok.open(path, reader_options=options or None)
tokens = store.tokens("train")
analysis.compute_token_counts(tokens, 1, progress=False)  # untimed warm pass: map + CRC-check every chunk once
before_anon = anon_kb()
before_rss = status_kb("VmRSS")
t = threading.Thread(target=sample, daemon=True); t.start()
c0, w0 = time.process_time(), time.perf_counter()
if what == "count":
    counts = analysis.compute_token_counts(tokens, store.vocab_size(), progress=False)
    n = int(counts.sum())
else:
    s = store.stats("train", cache=False, progress=False)
    n = s["num_tokens"]
w1, c1 = time.perf_counter(), time.process_time()
stop = True; t.join()
peak["anon_kb"] = max(peak["anon_kb"], anon_kb())
print(json.dumps({"tokens": n, "seconds": w1 - w0, "cpu_seconds": c1 - c0,
                  "peak_rss_mb": peak["rss_kb"] / 1024,
                  "max_rss_process_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "rss_before_mb": before_rss / 1024, "anon_before_mb": before_anon / 1024,
                  "peak_anon_mb": peak["anon_kb"] / 1024}))
"""


def write_synthetic(output: str, num_tokens: int, seed: int = 0) -> float:
    """A complete uint16 store of ``num_tokens`` Zipf ids written with zarrtok's writer; seconds."""
    import zarr

    from zarrtok.format import (
        ATTRIBUTE_KEY,
        DEFAULT_CHUNK_BYTES,
        STATUS_COMPLETE,
        Manifest,
        ShardInfo,
        SplitInfo,
        new_id,
        shard_name,
        shard_path,
    )
    from zarrtok.ingest.writer import ShardWriter

    shutil.rmtree(output, ignore_errors=True)
    chunk = DEFAULT_CHUNK_BYTES // 2
    manifest = Manifest(fingerprint=f"synthetic-stats-{num_tokens}-{seed}".ljust(64, "0"), dtype="uint16",
                        chunk_size=chunk, checksum="crc32c", splits={}, tokenizer={"len": VOCAB, "max_id": VOCAB - 1},
                        config={"synthetic": True}, encoder="synthetic", eos_token_id=EOS, generation=new_id(),
                        created=time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()))
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    root = zarr.open_group(zarr.storage.LocalStore(output), mode="w", attributes={ATTRIBUTE_KEY: manifest.to_json()})
    shard = ShardInfo(shard_name(0), 0, 0, id=new_id(), checksum="crc32c")
    writer = ShardWriter(root.create_group(shard_path("train", shard.name)), dtype=np.dtype(np.uint16),
                         chunk_size=chunk, checksum="crc32c")
    step = 1 << 22
    for start in range(0, num_tokens, step):
        n = min(step, num_tokens - start)
        tokens = np.minimum(rng.zipf(1.1, size=n), VOCAB - 1).astype(np.uint16)
        lengths = rng.geometric(1 / 600, size=max(1, n // 300)).astype(np.int64)
        lengths = lengths[np.cumsum(lengths) <= n]
        lengths = np.append(lengths, n - lengths.sum())
        ends = np.cumsum(lengths)[lengths > 0] - 1
        tokens[ends] = EOS
        writer.add(tokens, lengths)
    shard.num_tokens, shard.num_documents = writer.close()
    shard.chunk_size = writer.tokens.array_chunk_size
    manifest.splits["train"] = SplitInfo([shard])
    manifest.status = STATUS_COMPLETE
    root.attrs[ATTRIBUTE_KEY] = manifest.to_json()
    return time.perf_counter() - t0


def measure(path: str, what: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
    out = subprocess.check_output([sys.executable, "-c", _MEASURE, path, what, json.dumps(options or {})], text=True)
    return json.loads(out.strip().splitlines()[-1])


def run(args: argparse.Namespace) -> dict[str, Any]:
    num_tokens = int(float(args.tokens))
    workdir = args.workdir or tempfile.mkdtemp(prefix="zarrtok-stats-bench-")
    path = os.path.join(workdir, f"synthetic-{num_tokens}")
    t0 = time.perf_counter()
    load_before = load_average()
    write_s = write_synthetic(path, num_tokens)
    print(f"wrote {num_tokens:,} tokens in {write_s:.1f}s ({num_tokens / write_s / 1e6:.0f}M tokens/s) at {path}")
    results: dict[str, Any] = {}
    kinds = {"count": ("count", None), "stats": ("stats", None),
             "stats, max_mapped_chunks=2": ("stats", {"max_mapped_chunks": 2})}
    for what, (kind, options) in kinds.items():
        reps = [measure(path, kind, options) for _ in range(args.repeat)]
        best = min(reps, key=lambda r: r["seconds"])
        best["tokens_per_s"] = best["tokens"] / best["seconds"]
        best["tokens_per_cpu_s"] = best["tokens"] / max(best["cpu_seconds"], 1e-9)
        best["all_seconds"] = [r["seconds"] for r in reps]
        results[what] = best
        print(f"{what:>27}: {best['seconds']:.2f}s  {best['tokens_per_s'] / 1e6:,.0f}M tokens/s  "
              f"{best['tokens_per_cpu_s'] / 1e6:,.0f}M tokens per CPU-second  peak RSS {best['peak_rss_mb']:,.0f} MB "
              f"(before {best['rss_before_mb']:,.0f} MB; incl. mapped chunk pages)  peak anon RSS {best['peak_anon_mb']:,.0f} MB "
              f"(before {best['anon_before_mb']:,.0f} MB)")
    machine = {"cpu_count": os.cpu_count(), "load_average_before": load_before, "load_average": load_average()}
    print("load average before: {} after: {}".format(load_before, machine["load_average"]))
    ok = results["count"]["tokens_per_cpu_s"] >= TARGET
    rows = [
        row(SUITE, "counting stats, tokens per CPU-second", results["count"]["tokens_per_cpu_s"], unit="tokens/s",
            target=">= 2e8 per core", ok=ok, conditions=machine),
        row(SUITE, "full stats, tokens/s", results["stats"]["tokens_per_s"], unit="tokens/s", conditions=machine),
        row(SUITE, "full stats, peak anonymous RSS", results["stats"]["peak_anon_mb"], unit="MB", conditions=machine),
        row(SUITE, "full stats with max_mapped_chunks=2, peak RSS", results["stats, max_mapped_chunks=2"]["peak_rss_mb"],
            unit="MB", conditions=machine),
    ]
    if not args.keep and not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return {"suite": SUITE, "tokens": num_tokens, "write_seconds": write_s, "results": results, "machine": machine,
            "rows": rows, "total_seconds": time.perf_counter() - t0}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="5e7 tokens (the default)")
    size.add_argument("--full", action="store_true", help="1e9 tokens")
    size.add_argument("--tokens", help="number of tokens, e.g. 2e8")
    p.add_argument("--repeat", type=int, default=2, help="fresh-process measurements per kind (best kept)")
    p.add_argument("--workdir", help="where to write the store (default: a temporary directory, removed)")
    p.add_argument("--keep", action="store_true", help="keep the temporary store")
    p.add_argument("--json", default=default_json(SUITE))
    args = p.parse_args(argv)
    if not args.tokens:
        args.tokens = "1e9" if args.full else "5e7"
    report = run(args)
    write_report(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

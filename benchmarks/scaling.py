"""Scaling and storage: how write/build time, open time, bytes per token and random-read throughput
behave as a store grows from 10M to 1B tokens.

Run from the repository root::

    python -m benchmarks.scaling            # synthetic 10M / 100M / 1B tokens + real builds of 10M / 100M; ~6 minutes
    python -m benchmarks.scaling --quick    # synthetic 1M / 10M / 100M + a real 1M build; ~1 minute

Method
------
* **Real builds** (``zarrtok.build`` from the generated JSONL corpus of ``random_access``, 2
  workers, default encoder) at the smaller sizes: tokens/s — build time should grow linearly.
* **Synthetic stores** at every size, written directly with zarrtok's own shard writer (the
  format's code path: whole raw chunks + CRC-32C, document ends, manifest last) from random
  ``uint16`` token ids and random document lengths (mean ~600 tokens), with the tokenizer of the
  real build (so they open and decode like any store): write tokens/s.
* **Open time**, each in a fresh process, 3 times (median): ``zarrtok.open(path)`` +
  ``store.dataset("train", 2048)`` + the first window. It should not grow with the store.
* **Storage**: bytes of the store directory per token, against the raw minimum (2 bytes for
  ``uint16``).
* **Random reads**: ``dataset[i]`` at uniformly random ``i`` (fixed seed), seq_len 2048, warm page
  cache, and batched ``__getitems__`` of 16; windows/s should not degrade as the store grows.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from benchmarks.common import (
    conditions,
    default_json,
    isolate_caches,
    machine_info,
    make_corpus,
    row,
    run_in_workdir,
    write_report,
)

DEFAULT_JSON = default_json("scaling")
SEQ_LEN = 2048


def dir_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)


def write_synthetic(template: Any, output: str, num_tokens: int, seed: int = 0) -> float:
    """Write a store of ``num_tokens`` random token ids with zarrtok's writer; return seconds."""
    import dataclasses

    import zarr

    from zarrtok.format import (
        ATTRIBUTE_KEY,
        STATUS_COMPLETE,
        TOKENIZER_GROUP,
        ShardInfo,
        SplitInfo,
        new_id,
        shard_name,
        shard_path,
    )
    from zarrtok.ingest.writer import ShardWriter, compressors_for

    shutil.rmtree(output, ignore_errors=True)
    m = template.manifest
    manifest = dataclasses.replace(m, fingerprint=f"synthetic-{num_tokens}-{seed}", splits={}, status="building",
                                   config={**m.config, "synthetic": True}, generation=new_id())
    rng = np.random.default_rng(seed)
    vocab = int(template.manifest.tokenizer.get("len", 4096) or 4096)
    t0 = time.perf_counter()
    root = zarr.open_group(zarr.storage.LocalStore(output), mode="w", attributes={ATTRIBUTE_KEY: manifest.to_json()})
    tok_group = root.create_group(TOKENIZER_GROUP)
    for name, data in template.tokenizer_files().items():
        arr = tok_group.create_array(name, shape=(len(data),), chunks=(max(1, len(data)),), dtype="uint8",
                                     compressors=compressors_for(m.checksum), filters=None, fill_value=0,
                                     config={"write_empty_chunks": True})
        arr[:] = np.frombuffer(data, dtype=np.uint8)
    shard = ShardInfo(shard_name(0), 0, 0, id=new_id(), checksum=m.checksum)
    writer = ShardWriter(root.create_group(shard_path("train", shard.name)), dtype=np.dtype(m.dtype),
                         chunk_size=m.chunk_size, checksum=m.checksum)
    step = 1 << 22
    for start in range(0, num_tokens, step):
        n = min(step, num_tokens - start)
        tokens = rng.integers(1, vocab, size=n, dtype=np.uint16)
        lengths = rng.geometric(1 / 600, size=max(1, n // 300)).astype(np.int64)
        lengths = lengths[np.cumsum(lengths) <= n]
        lengths = np.append(lengths, n - lengths.sum())
        writer.add(tokens, lengths)
    shard.num_tokens, shard.num_documents = writer.close()
    shard.chunk_size = writer.tokens.array_chunk_size
    shard.block_bytes = writer.block_bytes
    manifest.splits["train"] = SplitInfo([shard])
    manifest.status = STATUS_COMPLETE
    root.attrs[ATTRIBUTE_KEY] = manifest.to_json()
    return time.perf_counter() - t0


def open_seconds(path: str, reps: int = 3) -> float:
    """Median seconds for open + dataset + first window, each in a fresh interpreter (imports excluded)."""
    # zarrtok imports lazily: touch open and TokenDataset first so their imports stay outside the timing
    code = (f"import time, zarrtok; zarrtok.open, zarrtok.TokenDataset; t = time.perf_counter(); "
            f"s = zarrtok.open({path!r}); d = s.dataset('train', {SEQ_LEN}); d[0]; print(time.perf_counter() - t)")
    return statistics.median(float(subprocess.check_output([sys.executable, "-c", code], text=True).strip())
                             for _ in range(reps))


def random_reads(path: str, count: int, seconds: float) -> dict[str, float]:
    import zarrtok

    ds = zarrtok.open(path).dataset("train", SEQ_LEN)
    rng = np.random.default_rng(1)
    idx = rng.integers(0, len(ds), size=count).tolist()
    for i in idx[: min(2000, count)]:  # warm the maps and the page cache
        ds[i]
    rates = []
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end or not rates:
        t0 = time.perf_counter()
        for i in idx:
            ds[i]
        rates.append(len(idx) / (time.perf_counter() - t0))
    batches = [idx[k : k + 16] for k in range(0, len(idx) - 15, 16)]
    t0 = time.perf_counter()
    for b in batches:
        ds.__getitems__(b)
    batched = len(batches) * 16 / (time.perf_counter() - t0)
    return {"windows_per_second": statistics.median(rates), "batched_windows_per_second": batched}


def run(args: argparse.Namespace, workdir: str) -> dict[str, Any]:
    isolate_caches(workdir)
    import zarrtok

    t_start = time.perf_counter()
    synthetic_sizes = [1_000_000, 10_000_000, 100_000_000] if args.quick else [10_000_000, 100_000_000, 1_000_000_000]
    build_sizes = [1_000_000] if args.quick else [10_000_000, 100_000_000]
    builds = []
    template = None
    for size in build_sizes:
        data_path, tok_dir, _corpus = make_corpus(os.path.join(workdir, f"corpus-{size}"), size)
        out = os.path.join(workdir, f"built-{size}")
        t0 = time.perf_counter()
        store = zarrtok.build("json", data_files=data_path, tokenizer_name=tok_dir, output=out, num_workers=2,
                              validation_split=0.0, progress=False)
        seconds = time.perf_counter() - t0
        n = store.num_tokens("train")
        builds.append({"tokens": n, "seconds": seconds, "tokens_per_second": n / seconds,
                       "encoder": store.manifest.encoder, "open_seconds": open_seconds(out),
                       "bytes_per_token": dir_bytes(out) / n})
        print(f"build {n:,} tokens: {seconds:.1f}s = {n / seconds / 1e6:.2f}M tok/s; open {builds[-1]['open_seconds']:.3f}s",
              flush=True)
        template = template or store
    synthetic = []
    for size in synthetic_sizes:
        out = os.path.join(workdir, f"synthetic-{size}")
        seconds = write_synthetic(template, out, size)
        row = {"tokens": size, "write_seconds": seconds, "write_tokens_per_second": size / seconds,
               "bytes_per_token": dir_bytes(out) / size, "raw_minimum_bytes_per_token": 2,
               "open_seconds": open_seconds(out), **random_reads(out, args.reads, args.read_seconds)}
        synthetic.append(row)
        print(f"synthetic {size:,}: write {size / seconds / 1e6:.1f}M tok/s, {row['bytes_per_token']:.5f} B/token, "
              f"open {row['open_seconds']:.3f}s, {row['windows_per_second']:,.0f} windows/s, "
              f"{row['batched_windows_per_second']:,.0f} batched", flush=True)
        shutil.rmtree(out, ignore_errors=True)
    return {"benchmark": "scaling", "command": " ".join(["python", "-m", "benchmarks.scaling", *sys.argv[1:]]),
            "machine": machine_info(), "builds": builds, "synthetic": synthetic,
            "total_seconds": time.perf_counter() - t_start}


def rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The suite's result rows: random windows/s and bytes per token of every synthetic store."""
    out = []
    for r in report["synthetic"]:
        cond = conditions(report, tokens=r["tokens"], seq_len=SEQ_LEN)
        out.append(row("scaling", f"{r['tokens']:,} tokens: random windows/s", r["windows_per_second"],
                       unit="windows/s", conditions=cond))
        out.append(row("scaling", f"{r['tokens']:,} tokens: bytes per token (raw 2)", r["bytes_per_token"],
                       unit="bytes/token", reference="raw uint16 (2 bytes/token)", conditions=cond))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--reads", type=int, default=20_000, help="random windows per read round")
    p.add_argument("--read-seconds", type=float, default=3.0, help="read rounds for about this long")
    p.add_argument("--json", default=DEFAULT_JSON)
    p.add_argument("--workdir", default=None)
    args = p.parse_args(argv)
    report = run_in_workdir(run, args, "zarrtok-bench-scaling-")
    print(json.dumps({"builds": report["builds"], "synthetic": report["synthetic"]}, indent=1)[:4000])
    report["rows"] = rows(report)
    write_report(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

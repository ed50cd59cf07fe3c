"""Build speed: ``zarrtok.build`` tokens/s and peak memory (PSS of the build's process tree), Hugging Face encoder vs the verified
tiktoken fast path, with 1 and 2 workers, on the same corpus in the same run.

Run from the repository root::

    python -m benchmarks.build_speed               # ~20M tokens (the random_access corpus), ~3 minutes
    python -m benchmarks.build_speed --tokens 2000000 --rounds 1

Each build runs in a fresh child process (``--one``), so its time is its own; its peak memory is the
peak over the run of the summed PSS (``/proc/<pid>/smaps_rollup``: shared pages split between
sharers, so forked workers are not double counted) of the child and all its descendants, sampled
every 20 ms. Every store is checked to hold the same tokens. Builds of one round are interleaved with the order rotating; medians over rounds.
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

from benchmarks.common import (
    PeakMemory,
    conditions,
    default_json,
    isolate_caches,
    machine_info,
    make_corpus,
    row,
    run_in_workdir,
    write_report,
)

DEFAULT_JSON = default_json("build_speed")
CONTENDERS = [("hf", 1), ("auto", 1), ("hf", 2), ("auto", 2)]


def build_one(data_path: str, tok_dir: str, output: str, encoder: str, workers: int) -> dict[str, Any]:
    """Child process: one build from scratch; prints its measurements as JSON."""
    import hashlib

    import numpy as np

    import zarrtok

    shutil.rmtree(output, ignore_errors=True)
    t0 = time.perf_counter()
    store = zarrtok.build("json", data_files=data_path, tokenizer_name=tok_dir, output=output, num_workers=workers,
                          encoder=encoder, validation_split=0.0, progress=False)
    seconds = time.perf_counter() - t0
    tokens = np.asarray(store.tokens("train"))
    return {"seconds": seconds, "tokens": int(tokens.size), "encoder": store.manifest.encoder,
            "digest": hashlib.sha256(tokens.tobytes()).hexdigest()}


def run(args: argparse.Namespace, workdir: str) -> dict[str, Any]:
    isolate_caches(workdir)
    t_start = time.perf_counter()
    data_path, tok_dir, corpus = make_corpus(workdir, args.tokens)
    print(f"corpus: {corpus['documents']:,} documents, {os.path.getsize(data_path) / 1e6:.0f} MB", flush=True)
    # datasets converts the JSONL to Arrow once (cached); do it before timing so no contender pays it
    build_one(data_path, tok_dir, os.path.join(workdir, "warm"), "hf", 1)
    results: dict[str, list[dict[str, Any]]] = {f"{e}/{w}": [] for e, w in CONTENDERS}
    for r in range(args.rounds):
        for k in range(len(CONTENDERS)):
            encoder, workers = CONTENDERS[(k + r) % len(CONTENDERS)]
            out = os.path.join(workdir, f"store-{encoder}-{workers}")
            proc = subprocess.Popen([sys.executable, "-m", "benchmarks.build_speed", "--one", data_path, tok_dir, out,
                                     encoder, str(workers)], stdout=subprocess.PIPE, text=True, env=os.environ.copy())
            memory = PeakMemory(proc.pid)
            stdout = proc.stdout.read()
            peak = memory.stop()
            if proc.wait() != 0:
                raise RuntimeError(f"build {encoder}/{workers} failed: {stdout}")
            row = json.loads(stdout.strip().splitlines()[-1])
            row["peak_pss_mb"] = peak
            row["tokens_per_second"] = row["tokens"] / row["seconds"]
            results[f"{encoder}/{workers}"].append(row)
            print(f"round {r} {encoder}/{workers}: {row['tokens_per_second'] / 1e6:.2f}M tok/s, "
                  f"peak {row['peak_pss_mb']:.0f} MB ({row['encoder'][:16]})", flush=True)
            shutil.rmtree(out, ignore_errors=True)
    digests = {row["digest"] for rows in results.values() for row in rows}
    if len(digests) != 1:
        raise AssertionError(f"the builds produced different tokens: {digests}")
    summary = {name: {"tokens_per_second": statistics.median(r["tokens_per_second"] for r in rows),
                      "peak_pss_mb": statistics.median(r["peak_pss_mb"] for r in rows),
                      "encoder": rows[0]["encoder"]} for name, rows in results.items()}
    return {"benchmark": "build_speed", "command": " ".join(["python", "-m", "benchmarks.build_speed", *sys.argv[1:]]),
            "machine": machine_info(), "corpus": corpus, "results": results, "summary": summary,
            "ratios": {f"{w} worker(s)": summary[f"auto/{w}"]["tokens_per_second"] / summary[f"hf/{w}"]["tokens_per_second"]
                       for w in (1, 2)},
            "total_seconds": time.perf_counter() - t_start}


def rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The suite's result rows: build tokens/s of the tiktoken fast path over Hugging Face's encoder."""
    return [row("build_speed", f"build tokens/s, tiktoken fast path vs HF, {k}", v, reference="HF tokenizers",
                conditions=conditions(report, tokens=report["results"]["hf/1"][0]["tokens"],
                                      rounds=len(report["results"]["hf/1"])))
            for k, v in report["ratios"].items()]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=20_000_000, help="corpus size in tokens (default 20M)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of the four builds (default 3)")
    p.add_argument("--json", default=DEFAULT_JSON)
    p.add_argument("--workdir", default=None, help="keep data here instead of a temporary directory")
    p.add_argument("--one", nargs=5, metavar=("DATA", "TOKENIZER", "OUTPUT", "ENCODER", "WORKERS"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        data_path, tok_dir, output, encoder, workers = args.one
        print(json.dumps(build_one(data_path, tok_dir, output, encoder, int(workers))))
        return 0
    report = run_in_workdir(run, args, "zarrtok-bench-build-")
    print("\nencoder / workers   tokens/s    peak PSS (process tree)")
    for name, s in report["summary"].items():
        print(f"{name:<18} {s['tokens_per_second'] / 1e6:6.2f}M  {s['peak_pss_mb']:8.0f} MB   {s['encoder'][:40]}")
    for k, v in report["ratios"].items():
        print(f"fast path / HF with {k}: {v:.2f}x")
    report["rows"] = rows(report)
    write_report(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

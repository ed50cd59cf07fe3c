"""``verify`` throughput and the first-touch cost of local CRC checks.

    python -m benchmarks.verify_speed            # 500M-token synthetic store (1 GB), ~1 minute
    python -m benchmarks.verify_speed --quick    # 50M tokens (100 MB)

Method (everything in one run, same files, warm page cache):

* A synthetic store written with zarrtok's own shard writer (``benchmarks.scaling.write_synthetic``:
  8 MiB raw chunks + CRC-32C, block checksums, document ends) from a real tokenizer.
* **verify**: ``TokenStore.verify(progress=False)`` — every chunk's CRC-32C, every array's metadata,
  offsets, tokenizer digest, the largest id — in GB/s of chunk bytes, and per thread it used (2 locally).
  Reference in the same run: reading every chunk file once (``open().readinto``) on one thread.
  Target: >= 1 GB/s per core.
* **first touch**: reading one token from every chunk of a freshly opened store, with
  ``verify=True`` (the default: the chunk's CRC is checked when the process first maps it) and
  ``verify=False``: milliseconds per chunk. After the first touch reads cost the same (the
  ``random_access`` suite measures them).
"""

from __future__ import annotations

import argparse
import os
import time

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

SUITE = "verify_speed"


def _chunk_files(path: str) -> list[str]:
    return [os.path.join(r, f) for r, _, fs in os.walk(os.path.join(path, "splits")) for f in fs
            if "/tokens/c/" in os.path.join(r, f)]


def run(args: argparse.Namespace, workdir: str) -> dict:
    isolate_caches(workdir)
    import zarrtok
    from benchmarks.scaling import write_synthetic

    jsonl, tok_dir, _ = make_corpus(workdir, 200_000)
    template = zarrtok.build("json", data_files=jsonl, tokenizer_name=tok_dir, output=os.path.join(workdir, "t"),
                             progress=False)
    path = os.path.join(workdir, "synthetic")
    write_seconds = write_synthetic(template, path, args.tokens)
    files = _chunk_files(path)
    total = sum(os.path.getsize(f) for f in files)
    buf = bytearray(max(os.path.getsize(f) for f in files))
    t0 = time.perf_counter()
    for _ in range(2):  # the second pass is the measured, warm one
        t0 = time.perf_counter()
        for f in files:
            with open(f, "rb", buffering=0) as fh:
                fh.readinto(buf)
        read_seconds = time.perf_counter() - t0
    store = zarrtok.open(path)
    t0 = time.perf_counter()
    report_v = store.verify(progress=False)
    verify_seconds = time.perf_counter() - t0
    assert report_v.ok, report_v.problems
    threads = 2
    touch = {}
    for verify in (True, False):
        tokens = zarrtok.open(path, reader_options={"verify": verify}).tokens("train")
        c = tokens.chunk_size
        t0 = time.perf_counter()
        for start in range(0, len(tokens), c):
            tokens[start]
        touch[verify] = (time.perf_counter() - t0) / tokens.num_chunks * 1e3
    gbps = total / verify_seconds / 1e9
    result = {
        "suite": SUITE, "command": f"python -m benchmarks.{SUITE} " + " ".join(os.sys.argv[1:]),
        "machine": machine_info(), "tokens": args.tokens, "chunk_bytes": total, "chunks": len(files),
        "write_seconds": write_seconds, "read_seconds": read_seconds, "verify_seconds": verify_seconds,
        "verify_gb_per_s": gbps, "read_gb_per_s": total / read_seconds / 1e9,
        "first_touch_ms_per_chunk": {"verify": touch[True], "no_verify": touch[False]},
    }
    cond = conditions(result, tokens=args.tokens)
    result["rows"] = [
        row(SUITE, "verify, GB/s per thread (every chunk's CRC + metadata + offsets + ids)", gbps / threads,
            unit="GB/s", target=">= 1 GB/s per core", ok=gbps / threads >= 1.0, conditions=cond),
        row(SUITE, "verify vs reading every chunk file once (same files, warm cache)",
            (total / verify_seconds) / (total / read_seconds), reference="plain file reads", conditions=cond),
        row(SUITE, "first touch of a chunk with its CRC check, ms", touch[True], unit="ms", conditions=cond),
        row(SUITE, "first touch of a chunk without it (verify=False), ms", touch[False], unit="ms", conditions=cond),
    ]
    for r in result["rows"]:
        print(f"{r['measure']}: {r['value']:.3f} {r['unit']}" + (f"  [{r['result']}]" if r["result"] else ""))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="50M tokens")
    parser.add_argument("--tokens", type=int, default=None)
    parser.add_argument("--workdir")
    parser.add_argument("--json", default=default_json(SUITE))
    args = parser.parse_args()
    args.tokens = args.tokens or (50_000_000 if args.quick else 500_000_000)
    t0 = time.perf_counter()
    report = run_in_workdir(run, args, "zarrtok-verify-")
    report["total_seconds"] = time.perf_counter() - t0
    write_report(report, args.json)


if __name__ == "__main__":
    main()

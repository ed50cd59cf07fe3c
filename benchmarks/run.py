"""One entry point for the benchmark suites: runs each, then prints one table of targets and ratios.

    python -m benchmarks.run --quick      # smoke sizes, a few minutes: checks that everything runs
    python -m benchmarks.run --full       # the sizes the results in benchmarks/README.md come from (~30 minutes
                                          # + ~55 minutes for build_peers: 250 MB and 1 GB corpora)
    python -m benchmarks.run --full --only remote scaling

Each suite runs in its own process (``python -m benchmarks.<suite>``) and writes its JSON to
``benchmarks/results/<suite>.json``; this collects them into ``benchmarks/results/all.json``.
``local_read``, ``remote_peers`` and ``build_peers`` compare against peer libraries and run with
``.venv-peers/bin/python`` (created by ``bash benchmarks/peers_env.sh``); they are skipped when that
environment does not exist.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join("benchmarks", "results")
PEERS_PYTHON = os.path.join(REPO_ROOT, ".venv-peers", "bin", "python")

#: suite -> (arguments for --quick, arguments for --full)
SUITES: dict[str, tuple[list[str], list[str]]] = {
    "random_access": (["--quick"], []),
    "build_speed": (["--tokens", "2000000", "--rounds", "1"], []),
    "scaling": (["--quick"], []),
    "remote": (["--quick"], []),
    "local_read": (["--quick"], []),
    "remote_peers": (["--quick"], []),
    "build_peers": (["--quick"], ["--full"]),
}
#: suites that run with PEERS_PYTHON (they import archai / litdata)
PEER_SUITES = ("local_read", "remote_peers", "build_peers")


def run_suite(name: str, full: bool) -> tuple[int, float, str]:
    python = PEERS_PYTHON if name in PEER_SUITES else sys.executable
    args = SUITES[name][1 if full else 0]
    path = os.path.join(RESULTS, f"{name}.json")
    cmd = [python, "-m", f"benchmarks.{name}", *args, "--json", path]
    print(f"\n=== {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    rc = subprocess.call(cmd, cwd=REPO_ROOT)
    return rc, time.perf_counter() - t0, path


def _row(suite: str, measure: str, value: float, target: str | None = None, ok: bool | None = None) -> dict[str, Any]:
    return {"suite": suite, "measure": measure, "value": value, "target": target,
            "result": None if ok is None else ("PASS" if ok else "MISS")}


def summarize(name: str, report: dict[str, Any]) -> list[dict[str, Any]]:
    """The headline numbers of one suite's JSON (targets where the issue set one)."""
    rows: list[dict[str, Any]] = []
    if name == "random_access":
        for variant in report["variants"]:
            for res in variant["results"]:
                ratio = res["single"]["ratio_to_reference"]["zarrtok"]
                rows.append(_row(name, f"{variant['name']} chunks, seq {res['seq_len']}: windows/s vs np.memmap",
                                 ratio, ">= 0.9x", ratio >= 0.9))
    elif name == "remote":
        ra, ld = report["random_access"], report["loader"]
        rows.append(_row(name, "(a) range mode windows/s vs zarr __getitem__", ra["ratio"], ">= 3x", ra["ratio"] >= 3))
        rows.append(_row(name, "(b)/(c) cold S3 epoch vs local epoch, batches/s", ld["ratio_cold_to_local"], ">= 0.8x",
                         ld["ratio_cold_to_local"] >= 0.8))
        token_bytes = report["data"]["tokens"] * 2
        ratio = ld["cold_bytes_per_epoch"] / token_bytes
        rows.append(_row(name, "(b) bytes per epoch vs the split's token bytes", ratio, "<= 1.1x", ratio <= 1.1))
    elif name == "build_speed":
        for k, v in report["ratios"].items():
            rows.append(_row(name, f"build tokens/s, tiktoken fast path vs HF, {k}", v))
    elif name == "scaling":
        for row in report["synthetic"]:
            rows.append(_row(name, f"{row['tokens']:,} tokens: random windows/s", row["windows_per_second"]))
            rows.append(_row(name, f"{row['tokens']:,} tokens: bytes per token (raw 2)", row["bytes_per_token"]))
    for t in report.get("targets", []):  # suites may list their own targets
        rows.append(_row(name, t["measure"], t["value"], t.get("target"), t.get("pass")))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("--quick", action="store_true")
    size.add_argument("--full", action="store_true")
    p.add_argument("--only", nargs="+", choices=list(SUITES), help="run only these suites")
    args = p.parse_args(argv)
    names = args.only or list(SUITES)
    status: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    for name in names:
        if name in PEER_SUITES and not os.path.exists(PEERS_PYTHON):
            print(f"\n=== skipping {name}: run `bash benchmarks/peers_env.sh` first ({PEERS_PYTHON} missing)")
            status[name] = "skipped"
            continue
        rc, seconds, path = run_suite(name, args.full)
        status[name] = {"exit_code": rc, "seconds": round(seconds, 1)}
        if rc == 0 and os.path.exists(os.path.join(REPO_ROOT, path)):
            with open(os.path.join(REPO_ROOT, path)) as f:
                rows += summarize(name, json.load(f))
    print("\nsuite          measure                                                         value      target   result")
    print("-" * 112)
    for r in rows:
        print(f"{r['suite']:<14} {r['measure']:<62} {r['value']:>9.3f}  {r['target'] or '':>8}   {r['result'] or ''}")
    for name, st in status.items():
        print(f"{name}: {st}")
    if args.quick:
        print("quick mode: smoke sizes (e.g. 256K-token chunks for remote); targets are judged on --full runs only")
    out = os.path.join(REPO_ROOT, RESULTS, "all.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump({"mode": "full" if args.full else "quick", "suites": status, "rows": rows}, f, indent=2)
    print(f"results written to {out}")
    return 0 if all(st == "skipped" or st["exit_code"] == 0 for st in status.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

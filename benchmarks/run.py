"""One entry point for the benchmark suites: runs each, then prints one table of targets and ratios.

    python -m benchmarks.run --quick      # smoke sizes, a few minutes: checks that everything runs
    python -m benchmarks.run --full       # the sizes the results in benchmarks/README.md come from (~30 minutes
                                          # + ~55 minutes for build_peers: 250 MB and 1 GB corpora)
    python -m benchmarks.run --full --only remote scaling

Each suite runs in its own process (``python -m benchmarks.<suite>``) and writes its JSON to
``benchmarks/results/<suite>.json``, its headline numbers under ``"rows"`` (one schema for every
suite: ``benchmarks.common.Row``); this prints those rows as one table and collects them into
``benchmarks/results/all.json``.
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

from benchmarks.common import RESULTS_DIR as RESULTS
from benchmarks.common import print_rows

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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
    "build_scale": (["--quick"], ["--full"]),
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


def read_rows(name: str, report: dict[str, Any]) -> list[dict[str, Any]]:
    """The headline rows of one suite's JSON (``report["rows"]``, the schema of ``benchmarks.common.Row``)."""
    rows = report.get("rows")
    if rows is None:
        print(f"{name}: no \"rows\" in its JSON (written by an older version of the suite?)")
        return []
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
                rows += read_rows(name, json.load(f))
    print_rows(rows)
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

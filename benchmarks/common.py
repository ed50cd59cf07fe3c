"""What every benchmark suite shares: cache isolation, the corpus + tokenizer, timing and rounds, peak
memory, the machine and its load, JSON output, and the result row schema that ``benchmarks.run`` (and
later the notebooks) read.

Nothing here imports zarrtok, datasets or a peer library at module level: :func:`isolate_caches` must
run before those are imported.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join("benchmarks", "results")
VOCAB_SIZE = 4096
TOKENIZER_SAMPLE_DOCS = 5000
BATCH_SIZE = 16


def default_json(suite: str) -> str:
    """``benchmarks/results/<suite>.json``."""
    return os.path.join(RESULTS_DIR, f"{suite}.json")


# -- the result row schema -------------------------------------------------------------------------------
PASS, MISS = "PASS", "MISS"


@dataclass
class Row:
    """One headline number of a suite, as every suite writes it under ``"rows"`` in its JSON.

    ``value`` is the number in ``unit``; when the measure is a ratio (``unit == "x"``) it equals
    ``ratio``, the contender over ``reference``. ``target`` is the text of the target where the issue
    set one (``">= 0.9x"``), ``result`` ``"PASS"`` / ``"MISS"`` against it (``None``: informational).
    ``conditions``: what the number depends on (sizes, mode, load) so rows of different runs compare.
    """

    suite: str
    measure: str
    value: float
    unit: str = "x"
    reference: str | None = None
    ratio: float | None = None
    target: str | None = None
    result: str | None = None
    conditions: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def row(suite: str, measure: str, value: float, *, unit: str = "x", reference: str | None = None,
        target: str | None = None, ok: bool | None = None, conditions: dict[str, Any] | None = None) -> dict[str, Any]:
    """A :class:`Row` as JSON; ``ratio`` is ``value`` when ``unit`` is ``"x"``, ``result`` from ``ok``."""
    return Row(suite=suite, measure=measure, value=float(value), unit=unit, reference=reference,
               ratio=float(value) if unit == "x" else None, target=target, result=verdict(ok),
               conditions=dict(conditions or {})).to_json()


def verdict(ok: bool | None) -> str | None:
    """``"PASS"`` / ``"MISS"``, or ``None`` for an informational number."""
    return None if ok is None else (PASS if ok else MISS)


def conditions(report: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The conditions a suite's rows were measured under: mode, CPUs, load averages, plus ``extra``."""
    machine = report.get("machine") or report.get("machine_info") or {}
    command = report.get("command", "")
    return {"mode": "quick" if "--quick" in command.split() else "default", "command": command,
            "cpu_count": machine.get("cpu_count"), "load_average_before": machine.get("load_average_before"),
            "load_average_after": machine.get("load_average"), **extra}


# -- caches, working directory, output --------------------------------------------------------------------
def isolate_caches(workdir: str) -> None:
    """Point every Hugging Face cache into ``workdir`` and go offline (before datasets is imported)."""
    if "datasets" in sys.modules or "zarrtok" in sys.modules:
        raise RuntimeError("isolate_caches must run before datasets / zarrtok are imported")
    hf = os.path.join(workdir, "hf")
    os.environ["HF_HOME"] = hf
    os.environ["HF_DATASETS_CACHE"] = os.path.join(hf, "datasets")
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


def local_only_network() -> None:
    """Only ever talk to 127.0.0.1: no proxies (the S3 suites)."""
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        os.environ.pop(var, None)


def run_in_workdir(run_fn: Callable[[argparse.Namespace, str], dict[str, Any]], args: argparse.Namespace,
                   prefix: str) -> dict[str, Any]:
    """Run a benchmark in ``--workdir`` (kept) or in a temporary directory (deleted afterwards)."""
    if args.workdir:
        os.makedirs(args.workdir, exist_ok=True)
        return run_fn(args, os.path.abspath(args.workdir))
    workdir = tempfile.mkdtemp(prefix=prefix)
    try:
        return run_fn(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def write_report(report: dict[str, Any], path: str) -> None:
    """Write a benchmark report as JSON and say where."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
    print(f"results written to {path}  (total {report['total_seconds']:.0f}s)")


def command_line(suite: str, python: str | None = None) -> str:
    """How this suite was invoked (``<python> -m benchmarks.<suite> <args>``)."""
    return " ".join([python or os.path.basename(sys.executable), "-m", f"benchmarks.{suite}", *sys.argv[1:]])


# -- the corpus and tokenizer -----------------------------------------------------------------------------
def make_corpus(workdir: str, num_tokens: int) -> tuple[str, str, dict[str, Any]]:
    """Generate documents for about ``num_tokens`` tokens, train the tokenizer, write the JSONL."""
    from zarrtok.testing.corpus import generate_documents, train_tokenizer, write_jsonl

    tok_dir = os.path.join(workdir, "tokenizer")
    data_path = os.path.join(workdir, "data", "docs.jsonl")
    t0 = time.perf_counter()
    sample = generate_documents(TOKENIZER_SAMPLE_DOCS, seed=0)
    tokenizer = train_tokenizer(sample, vocab_size=VOCAB_SIZE, directory=tok_dir)
    # generate_documents is a deterministic stream: the first k of n documents do not depend on n.
    per_doc = sum(len(ids) + 1 for ids in tokenizer(sample[:2000])["input_ids"]) / 2000
    num_docs = max(TOKENIZER_SAMPLE_DOCS, math.ceil(num_tokens / per_doc))
    docs = generate_documents(num_docs, seed=0)
    write_jsonl(docs, data_path)
    info = {
        "documents": num_docs,
        "estimated_tokens_per_document": per_doc,
        "jsonl_bytes": os.path.getsize(data_path),
        "seconds": time.perf_counter() - t0,
    }
    return data_path, tok_dir, info


# -- timing: interleaved rounds ---------------------------------------------------------------------------
@dataclass
class Comparison:
    """Rounds of items/s for each contender on one workload (``rates[name]``, one entry per round)."""

    unit: str  # what one item is: "window" or "batch"
    items_per_round: int
    rates: dict[str, list[float]] = field(default_factory=dict)

    def median(self, name: str) -> float:
        return statistics.median(self.rates[name])

    def ratio(self, name: str, baseline: str = "reference") -> float:
        """``name``'s median rate over ``baseline``'s."""
        return self.median(name) / self.median(baseline)

    def spread(self, name: str) -> float:
        """(max - min) / median of ``name``'s rounds: how noisy they were."""
        rates = self.rates[name]
        return (max(rates) - min(rates)) / statistics.median(rates)

    def to_json(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "median": {name: self.median(name) for name in self.rates},
            "spread": {name: self.spread(name) for name in self.rates},
            "ratio_to_reference": {name: self.ratio(name) for name in self.rates},
        }


def time_round(fn: Callable[[Any], Any], items: Sequence[Any]) -> float:
    """Call ``fn`` on every item once; return items per second (GC off, as ``timeit`` does).

    No ``gc.collect()`` here: with datasets/transformers loaded a full collection takes ~0.1 s;
    :func:`compare` collects once and freezes the survivors before its rounds.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        t0 = time.perf_counter()
        for item in items:
            fn(item)
        elapsed = time.perf_counter() - t0
    finally:
        if enabled:
            gc.enable()
    return len(items) / elapsed


def calibrate(fn: Callable[[Any], Any], pool: Sequence[Any], seconds: float) -> int:
    """How many calls of ``fn`` (over ``pool``, cycled) take about ``seconds``."""
    n = min(len(pool), 64)
    while True:
        rate = time_round(fn, [pool[i % len(pool)] for i in range(n)])
        if n / rate >= 0.1 or n >= 10**7:
            return max(BATCH_SIZE, int(rate * seconds))
        n *= 4


def rotated(names: Sequence[str], r: int) -> list[str]:
    """``names`` rotated by ``r``: round ``r``'s order, so every contender runs in every position."""
    shift = r % len(names)
    return list(names[shift:]) + list(names[:shift])


def compare(contenders: dict[str, Callable[[Any], Any]], items: Sequence[Any], *, rounds: int, unit: str) -> Comparison:
    """Warm every contender up on ``items``, then run ``rounds`` interleaved rounds of each.

    The order rotates every round, so each contender runs in every position equally often and slow
    drifts of the machine's speed hit all of them alike.
    """
    gc.collect()
    gc.freeze()  # everything alive now is never scanned again
    for fn in contenders.values():
        time_round(fn, items)
    result = Comparison(unit=unit, items_per_round=len(items), rates={name: [] for name in contenders})
    names = list(contenders)
    for r in range(rounds):
        for name in rotated(names, r):
            result.rates[name].append(time_round(contenders[name], items))
    return result


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """Run ``fn`` with the garbage collector off; return its result and the seconds it took."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        t0 = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - t0
    finally:
        if enabled:
            gc.enable()


def run_all(fn: Callable[[Any], Any], items: Sequence[Any]) -> float:
    """Call ``fn`` on every item (GC off); return the seconds it took."""
    return timed(lambda: [fn(i) for i in items])[1]


def calibrate_count(fn: Callable[[Any], Any], pool: Sequence[Any], seconds: float, *, minimum: int = 8) -> int:
    """How many items of ``pool`` (from the start) ``fn`` gets through in about ``seconds``."""
    n = minimum
    while True:
        sec = run_all(fn, pool[:n])
        if sec >= 0.2 * seconds or n >= len(pool):
            return max(minimum, min(len(pool), int(n * seconds / sec)))
        n = min(len(pool), n * 4)


def summary(values: Sequence[float]) -> dict[str, float]:
    """Median, min, max and spread ((max - min) / median) of some rounds."""
    med = statistics.median(values)
    return {"median": med, "min": min(values), "max": max(values),
            "spread": (max(values) - min(values)) / med if med else 0.0}


def mb(nbytes: float) -> float:
    return nbytes / 1e6


# -- memory -----------------------------------------------------------------------------------------------
def own_pss_mb() -> float:
    """This process's PSS (MB), from /proc/self/smaps_rollup."""
    with open("/proc/self/smaps_rollup") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Pss:")) / 1024


def tree_pss_mb(root: int) -> float:
    """Summed PSS (MB) of ``root`` and its descendants, from /proc."""
    parent: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    parent[int(name)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    tree, frontier = {root}, [root]
    while frontier:
        frontier = [p for p, pp in parent.items() if pp in frontier and p not in tree]
        tree.update(frontier)
    total_kb = 0
    for pid in tree:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                total_kb += next(int(line.split()[1]) for line in f if line.startswith("Pss:"))
        except (OSError, StopIteration):
            pass
    return total_kb / 1024


class PeakMemory:
    """Samples the summed PSS of a process tree in a thread; ``peak_mb`` is the maximum seen."""

    def __init__(self, pid: int, interval: float = 0.02):
        self.pid, self.interval, self.peak_mb = pid, interval, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, tree_pss_mb(self.pid))
            self._stop.wait(self.interval)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak_mb


# -- the machine and its conditions -----------------------------------------------------------------------
def load_average() -> tuple[float, float, float] | None:
    return os.getloadavg() if hasattr(os, "getloadavg") else None


def machine_info() -> dict[str, Any]:
    import numpy as np
    import torch
    import zarr

    import zarrtok

    cpu_model = None
    try:
        with open("/proc/cpuinfo") as f:
            cpu_model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:
        pass
    return {
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": cpu_model,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__,
        "zarr": zarr.__version__,
        "zarrtok": zarrtok.__version__,
        "load_average": load_average(),
    }


def cpu_seconds() -> tuple[float, float]:
    """CPU seconds (user + system) used so far by this process, and by its waited-for children."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


def machine_busy_seconds() -> float | None:
    """CPU seconds all processes on the machine have used since boot (from /proc/stat), or None."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq = fields[:7]
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


class Contention:
    """How much CPU other processes took during a run: start it first, ``stop()`` at the end."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.busy_before, self.own_before = machine_busy_seconds(), sum(cpu_seconds())

    def stop(self) -> dict[str, Any]:
        busy, own = machine_busy_seconds(), sum(cpu_seconds()) - self.own_before
        wall = time.perf_counter() - self.t0
        others = None if busy is None or self.busy_before is None else max(0.0, busy - self.busy_before - own)
        return {"wall_seconds": wall, "own_cpu_seconds": own, "other_processes_cpu_seconds": others,
                "other_processes_share": None if others is None else others / (wall * (os.cpu_count() or 1))}


def git_state() -> dict[str, Any]:
    """The commit measured, and whether zarrtok/ had uncommitted changes."""
    def git(*cmd: str) -> str:
        try:
            return subprocess.run(["git", *cmd], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10,
                                  check=False).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {"commit": git("rev-parse", "HEAD"), "zarrtok_dirty": bool(git("status", "--porcelain", "--", "zarrtok"))}


def print_machine(machine: dict[str, Any], details: str) -> None:
    """``machine: <CPUs> (<model>), <platform>, python <v>, <details>`` (``machine_info()``'s keys)."""
    m = machine
    print(f"\nmachine: {m['cpu_count']} CPUs ({m['cpu_model']}), {m['platform']}, python {m['python']}, {details}")


def print_load(machine: dict[str, Any], label: str = "load average (1/5/15 min)") -> None:
    """The load averages before and after the run (``machine_info()`` + ``load_average_before``)."""
    if machine.get("load_average") and machine.get("load_average_before"):
        print("{} before: {:.2f} {:.2f} {:.2f}, after: {:.2f} {:.2f} {:.2f}".format(
            label, *machine["load_average_before"], *machine["load_average"]))


def print_conditions(machine: dict[str, Any], contention: dict[str, Any]) -> None:
    """The load averages around the run and the CPU other processes took during it."""
    print_load(machine)
    c = contention
    if c["other_processes_cpu_seconds"] is not None:
        print(f"other processes used {c['other_processes_cpu_seconds']:.0f} CPU-s during the run "
              f"({c['other_processes_share']:.0%} of the machine; this run used {c['own_cpu_seconds']:.0f} CPU-s "
              f"in {c['wall_seconds']:.0f}s)")


def print_rows(rows: Sequence[dict[str, Any]], width: int = 62) -> None:
    """The rows of one or more suites as one table."""
    print(f"\n{'suite':<14} {'measure':<{width}} {'value':>9} {'unit':<10} {'target':>8}   result")
    print("-" * (width + 52))
    for r in rows:
        print(f"{r['suite']:<14} {r['measure']:<{width}} {r['value']:>9.3f} {r['unit']:<10} {r['target'] or '':>8}   "
              f"{r['result'] or ''}")

"""Scale-out builds (issue 13): the same build on Dask vs the local pool vs in-process, peak memory per
worker as the corpus grows, what the driver moves, and the commit / open cost as shards multiply.

Run from the repository root::

    python -m benchmarks.build_scale --full     # 250 MB + 1 GB corpora, 3 rounds; 10 / 100 / 1,000 shards (~17 minutes)
    python -m benchmarks.build_scale --quick    # 2 MB + 8 MB; 10 / 100 shards: a smoke run (~2 minutes)

Method
------
1. **Corpus**: ``benchmarks.common.make_corpus`` (the synthetic documents of
   ``zarrtok.testing.corpus`` and its 4,096-token byte-level BPE) writes a base JSONL of
   ``--base-tokens``; a corpus of ``S`` MB is that file's lines repeated until ``S`` MB (a line
   boundary past it). Every build uses ``encoder="auto"`` (gigatoken, when it verifies), the
   default chunk size and ``shard_size=--shard-tokens`` (so a 250 MB corpus is ~15 shard tasks and
   1 GB ~60: a worker's share of the work is whole shards).
2. **Contenders** (same corpus, same arguments, ``--rounds`` rounds, 3 by default with ``--full``,
   order rotated per round, a fresh output and so a fresh plan key per round):
   ``inprocess`` (``executor="inprocess"``), ``pool`` (``executor="pool", num_workers=w``: forked
   workers, :func:`zarrtok.ingest.executors._run_pool`) and ``dask`` (``executor=client`` of a
   ``distributed.LocalCluster(n_workers=w, threads_per_worker=1, processes=True)`` on 127.0.0.1,
   started before the clock and closed after the size; its start-up is reported apart), ``w`` = 1
   and 2 (their imports warmed before the clock too). tokens/s = tokens of the store / wall seconds
   of ``zarrtok.build`` (planning, encoder verification, tasks, commit), and task-phase tokens/s
   (``run_plan`` alone: the part that scales out). The headline is Dask / pool at equal workers
   (medians of the rounds). Past the first size only the 2-worker pool and Dask run (the memory
   comparison), unless ``--all-contenders-every-size``. ``plan_build`` is also timed alone at each
   size, and the size of its ``plan.json`` recorded.
3. **Peak memory per worker**: a thread samples the RSS and USS (``psutil``) of every worker
   process every 100 ms: the driver's new children for the pool, the pids ``client.run(os.getpid)``
   names for Dask, the driver for in-process. The row is the largest per-process peak of the first
   round (later rounds' Dask workers also hold the earlier builds' cached plans); flat = the 1 GB
   corpus's over the 250 MB corpus's.
4. **Bytes through the driver**: ``builder.run_plan`` (the task phase only: no planning, no commit)
   is wrapped to read ``rchar`` + ``wchar`` of each of the driver's threads
   (``/proc/self/task/<tid>/io``: every byte read or written through a syscall: files, pipes,
   sockets; the memory samplers' threads left out) before and after, and to pickle what the tasks
   returned (the ledger records). Both over the store's token bytes. (The process-level
   ``/proc/self/io`` also holds the I/O of reaped children — the kernel adds it at ``wait`` — so the
   pool's workers would count as the driver's; it is recorded apart.)
5. **Many shards**: a small corpus (the base file's first ``--shard-docs`` documents) built with
   ``shard_size`` = its tokens / N, for N = 10, 100 (and 1,000 with ``--full``), into a local
   directory and into a bucket of moto's S3 server on loopback
   (:class:`zarrtok.testing.s3server.S3Server`, which logs every request server-side), the CLI's
   flow: ``plan_build`` (timed), ``run_plan(..., executor="inprocess")`` (timed; S3 requests
   counted), ``commit_build`` (timed; requests counted), then in a fresh interpreter ``zarrtok.open``
   + ``dataset("train", L)`` + the first window (timed after imports; S3 requests counted), with
   ``L`` under one shard's tokens so the first window is one shard's. Manifest bytes = the root
   ``zarr.json``. S3 stores of more than ``--direct-s3-shards`` (100) shards have their tasks run by
   the same ``run_task`` into a local mirror and the shards and ledger records uploaded (10 with
   ``--quick``; moto in this
   process serves ~100 requests/s: 89 requests per shard task would take 15 minutes at 1,000); the
   per-shard request counts come from the direct runs, the commit and the open are measured on the
   bucket either way.
6. The load averages before and after every section are recorded next to its numbers.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from benchmarks.common import (
    conditions,
    default_json,
    isolate_caches,
    load_average,
    local_only_network,
    machine_info,
    make_corpus,
    row,
    run_in_workdir,
    write_report,
)

SUITE = "build_scale"
DEFAULT_JSON = default_json(SUITE)
FULL_SIZES_MB, QUICK_SIZES_MB = (250, 1000), (2, 8)
FULL_SHARDS, QUICK_SHARDS = (10, 100, 1000), (10, 100)
WORKERS = (1, 2)
TARGET_DASK_VS_POOL = 0.9
TARGET_FLAT = 1.1  # peak RSS per worker, 1 GB / 250 MB corpus
TARGET_DRIVER_BYTES = 0.01  # bytes through the driver during the task phase / token bytes
TARGET_COMMIT_S = 5.0
TARGET_OPEN_REQUESTS = 4


# -- corpus ----------------------------------------------------------------------------------------------
def sized_corpus(base: str, target_mb: int, out: str) -> dict[str, Any]:
    """``base``'s lines repeated until ``target_mb`` MB (10^6 bytes)."""
    target = target_mb * 1_000_000
    with open(base, "rb") as f:
        lines = f.read()
    written = 0
    with open(out, "wb") as f:
        while written < target:
            piece = lines if written + len(lines) <= target else lines[: lines.index(b"\n", target - written) + 1]
            f.write(piece)
            written += len(piece)
    return {"path": out, "bytes": written, "base_bytes": len(lines), "repeats": written / len(lines)}


# -- measuring a build ----------------------------------------------------------------------------------
def proc_io(path: str = "/proc/self/io") -> int:
    """rchar + wchar of this process (all its threads, also those that ended), or of one thread
    (``/proc/self/task/<tid>/io``)."""
    with open(path) as f:
        vals = dict(line.split(": ") for line in f.read().splitlines())
    return int(vals["rchar"]) + int(vals["wchar"])


class WorkerRSS:
    """Samples the RSS and USS (private memory) of the processes ``pids()`` names every ``interval``
    s; per-pid peaks in bytes. Its own /proc reads are excluded from the driver's I/O (``io()``)."""

    def __init__(self, pids, interval: float = 0.1):
        import psutil

        self.psutil, self.pids, self.interval = psutil, pids, interval
        self.peaks: dict[int, int] = {}
        self.uss: dict[int, int] = {}
        self.tid: int | None = None
        self._started = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._started.wait()

    def _run(self) -> None:
        self.tid = threading.get_native_id()
        self._started.set()
        while not self._stop.is_set():
            for pid in self.pids():
                try:
                    info = self.psutil.Process(pid).memory_full_info()
                except (self.psutil.NoSuchProcess, self.psutil.AccessDenied):
                    continue
                self.peaks[pid] = max(self.peaks.get(pid, 0), info.rss)
                self.uss[pid] = max(self.uss.get(pid, 0), info.uss)
            self._stop.wait(self.interval)

    def io(self) -> int:
        """The sampler thread's own syscall bytes so far."""
        return proc_io(f"/proc/self/task/{self.tid}/io")

    def stop(self) -> dict[int, int]:
        self._stop.set()
        self._thread.join()
        return self.peaks


def threads_io(exclude: set[int]) -> dict[int, int]:
    """rchar + wchar of each live thread of this process (``/proc/self/task/<tid>/io``), but those in
    ``exclude``. Unlike ``/proc/self/io`` it leaves out reaped children (the kernel adds a waited-for
    child's I/O to its parent's totals: a pool's workers would count as the driver's)."""
    out = {}
    for name in os.listdir("/proc/self/task"):
        tid = int(name)
        if tid in exclude:
            continue
        try:
            out[tid] = proc_io(f"/proc/self/task/{tid}/io")
        except (OSError, KeyError, ValueError):
            pass
    return out


class DriverTraffic:
    """Wraps ``builder.run_plan``: the bytes the driver's threads read and wrote through syscalls
    during the task phase (files, pipes, sockets; the memory samplers' /proc reads left out), the
    process-level figure (which also holds the reaped pool workers' I/O) and the pickled size of
    what the tasks returned."""

    def __init__(self, samplers: Sequence[WorkerRSS]):
        from zarrtok.ingest import builder

        self.builder, self.real = builder, builder.run_plan
        self.io_bytes = self.process_io_bytes = self.result_bytes = self.records = 0
        self.seconds = 0.0
        skip = {s.tid for s in samplers}

        def wrapped(plan, pending, **kw):
            before, process_before = threads_io(skip), proc_io() - sum(s.io() for s in samplers)
            t0 = time.perf_counter()
            out = self.real(plan, pending, **kw)
            self.seconds += time.perf_counter() - t0
            after = threads_io(skip)
            self.process_io_bytes += proc_io() - sum(s.io() for s in samplers) - process_before
            self.io_bytes += sum(v - before.get(tid, 0) for tid, v in after.items())
            self.result_bytes += len(pickle.dumps(out))
            self.records += len(out)
            return out

        builder.run_plan = wrapped

    def close(self) -> None:
        self.builder.run_plan = self.real


def build_once(kind: str, workers: int, data: str, tok_dir: str, out: str, shard_tokens: int,
               client: Any = None) -> dict[str, Any]:
    import psutil

    import zarrtok

    shutil.rmtree(out, ignore_errors=True)
    kw: dict[str, Any] = {"data_files": [data], "tokenizer_name": tok_dir, "output": out, "validation_split": 0.0,
                          "progress": False, "shard_size": shard_tokens}
    me = psutil.Process()
    if kind == "inprocess":
        kw["executor"], pids = "inprocess", lambda: [me.pid]
    elif kind == "pool":
        kw.update(executor="pool", num_workers=workers)
        others = {c.pid for c in me.children(recursive=True)}  # e.g. a closed cluster's processes still exiting
        pids = lambda: [c.pid for c in me.children() if c.pid not in others]  # the pool's workers
    else:
        kw["executor"] = client
        worker_pids = sorted(client.run(os.getpid).values())
        pids = lambda: worker_pids
    idle = {}
    for pid in pids():
        try:
            idle[pid] = psutil.Process(pid).memory_info().rss
        except psutil.NoSuchProcess:
            pass
    sampler = WorkerRSS(pids)
    driver_peak = WorkerRSS(lambda: [me.pid])
    traffic = DriverTraffic([sampler, driver_peak])
    try:
        t0 = time.perf_counter()
        store = zarrtok.build("json", **kw)
        seconds = time.perf_counter() - t0
    finally:
        peaks = sampler.stop()
        dpeak = driver_peak.stop()
        traffic.close()
    n = store.num_tokens("train")
    token_bytes = n * store.dtype.itemsize
    shards = len(store.manifest.splits["train"].shards)
    res = {"kind": kind, "workers": workers, "tokens": n, "seconds": seconds, "tokens_per_second": n / seconds,
           "task_phase_seconds": traffic.seconds, "task_phase_tokens_per_second": n / traffic.seconds,
           "shards": shards, "encoder": store.manifest.encoder,
           "peak_rss_per_worker_mb": max(peaks.values(), default=0) / 1e6,
           "peak_uss_per_worker_mb": max(sampler.uss.values(), default=0) / 1e6,
           "worker_peaks_mb": {str(p): v / 1e6 for p, v in peaks.items()},
           "worker_idle_rss_mb": {str(p): v / 1e6 for p, v in idle.items()},
           "worker_processes_seen": len(peaks), "driver_peak_rss_mb": max(dpeak.values(), default=0) / 1e6,
           "driver_io_bytes_task_phase": traffic.io_bytes, "task_result_bytes": traffic.result_bytes,
           "driver_process_io_bytes_with_reaped_children": traffic.process_io_bytes,
           "token_bytes": token_bytes, "driver_io_over_token_bytes": traffic.io_bytes / token_bytes,
           "task_results_over_token_bytes": traffic.result_bytes / token_bytes}
    if kind == "dask":
        from zarrtok.ingest import plan as planmod

        res["dask_worker_cached_plans"] = sorted(client.run(lambda: len(planmod._CONTEXT)).values())
    shutil.rmtree(out, ignore_errors=True)
    return res


def plan_seconds(data: str, tok_dir: str, workdir: str, shard_tokens: int) -> tuple[float, dict[str, Any]]:
    """Seconds of ``zarrtok.plan_build`` (the driver's serial part: the JSON Lines block scan reads
    every byte once, the encoder verification, the shard cut, the plan's write), and the plan's size
    (``plan.json``, which every remote worker reads whole); the staging it leaves is removed."""
    import zarrtok

    probe = os.path.join(workdir, "plan-probe")
    shutil.rmtree(probe, ignore_errors=True)
    os.makedirs(probe)
    t0 = time.perf_counter()
    plan = zarrtok.plan_build("json", data_files=[data], tokenizer_name=tok_dir, output=os.path.join(probe, "s"),
                              validation_split=0.0, progress=False, shard_size=shard_tokens)
    seconds = time.perf_counter() - t0
    size = {"plan_json_bytes": len(plan.to_json()), "tasks": len(plan.tasks),
            "units": sum(len(t["units"]) for t in plan.tasks), "tokenizer_json_bytes": len(plan.data["tokenizer_json"])}
    shutil.rmtree(probe, ignore_errors=True)
    return seconds, size


def start_cluster(workers: int):
    from distributed import Client, LocalCluster

    t0 = time.perf_counter()
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address=None)
    client = Client(cluster)
    client.run(_warm_worker)  # imports on the workers: part of a long-lived cluster's start-up
    return cluster, client, time.perf_counter() - t0


def _warm_worker() -> None:
    import zarr  # noqa: F401

    from zarrtok.ingest import builder, gigatoken_encoding, plan, writer  # noqa: F401  (run_task imports builder)


def build_section(args, workdir: str, base: str, tok_dir: str) -> dict[str, Any]:
    sizes = QUICK_SIZES_MB if args.quick else FULL_SIZES_MB
    out: dict[str, Any] = {"sizes_mb": list(sizes), "shard_tokens": args.shard_tokens, "runs": [], "corpora": {},
                           "load_average_before": load_average()}
    for i, size in enumerate(sizes):
        data = os.path.join(workdir, f"corpus-{size}mb.jsonl")
        info = sized_corpus(base, size, data)
        out["corpora"][str(size)] = info
        with open(data, "rb") as f:  # warm the page cache: every contender reads it warm
            while f.read(1 << 24):
                pass
        secs, plan_size = plan_seconds(data, tok_dir, workdir, args.shard_tokens)
        out.setdefault("plan_seconds", {})[str(size)] = secs
        out.setdefault("plan_size", {})[str(size)] = plan_size
        print(f"{size:>5} MB: plan_build {secs:.2f}s ({info['bytes'] / 1e6 / secs:.0f} MB/s of JSONL); plan.json "
              f"{plan_size['plan_json_bytes'] / 1e3:.0f} kB: {plan_size['tasks']} tasks, {plan_size['units']} units",
              flush=True)
        if args.plan_time_only:
            os.unlink(data)
            continue
        combos = [(k, w) for w in WORKERS for k in ("inprocess", "pool", "dask") if not (k == "inprocess" and w > 1)]
        if size != sizes[0] and not args.all_contenders_every_size:
            combos = [(k, w) for k, w in combos if w == max(WORKERS) and k != "inprocess"]  # memory at the big size
        shift = i % len(combos)
        combos = combos[shift:] + combos[:shift]
        for w in sorted({w for _, w in combos}):
            cluster = client = None
            if any(k == "dask" and ww == w for k, ww in combos):
                cluster, client, startup = start_cluster(w)
                out.setdefault("dask_startup_seconds", {})[f"{size}/{w}"] = startup
            try:
                kinds = [k for k, ww in combos if ww == w]
                for rnd in range(args.rounds):
                    for kind in kinds[rnd % len(kinds):] + kinds[:rnd % len(kinds)]:
                        # a fresh output per round: another plan key, so that no worker reuses a cached plan
                        r = build_once(kind, w, data, tok_dir, os.path.join(workdir, f"out-{rnd}"), args.shard_tokens,
                                       client)
                        r.update(size_mb=size, round=rnd, load_average=load_average())
                        out["runs"].append(r)
                        report_run(r)
            finally:
                if client is not None:
                    client.close()
                    cluster.close()
        os.unlink(data)
    out["load_average_after"] = load_average()
    return out


def report_run(r: dict[str, Any]) -> None:
    size, kind, w = r["size_mb"], r["kind"], r["workers"]
    print(f"{size:>5} MB {kind:<9} {w}w r{r['round']}: {r['tokens']:>12,} tokens, {r['shards']:>3} shards, "
          f"{r['seconds']:7.1f}s = {r['tokens_per_second'] / 1e6:5.2f}M tok/s (tasks {r['task_phase_seconds']:.1f}s = "
          f"{r['task_phase_tokens_per_second'] / 1e6:.2f}M tok/s); peak RSS/worker "
          f"{r['peak_rss_per_worker_mb']:6.0f} MB (USS {r['peak_uss_per_worker_mb']:.0f} MB, "
          f"{r['worker_processes_seen']} procs); driver I/O "
          f"{r['driver_io_bytes_task_phase'] / 1e6:8.2f} MB, task results "
          f"{r['task_result_bytes'] / 1e3:6.1f} kB vs {r['token_bytes'] / 1e6:.0f} MB of tokens; "
          f"load {r['load_average'][0]:.2f}", flush=True)


# -- many shards: commit and open ----------------------------------------------------------------------
OPEN_CODE = """
import json, sys, time
import zarrtok, zarr, fsspec
zarrtok.open, zarrtok.TokenDataset
url, so, seq = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
if so:
    import s3fs  # noqa: F401 (imports outside the clock)
t = time.perf_counter()
s = zarrtok.open(url, storage_options=so or None)
d = s.dataset("train", seq)
d[0]
print(json.dumps({"seconds": time.perf_counter() - t, "shards": len(s.manifest.splits["train"].shards)}))
"""


def shards_section(args, workdir: str, base: str, tok_dir: str) -> dict[str, Any]:
    import zarrtok
    from zarrtok.ingest import builder
    from zarrtok.ingest.executors import run_plan
    from zarrtok.testing.s3server import S3Server

    counts = QUICK_SHARDS if args.quick else FULL_SHARDS
    data = os.path.join(workdir, "shards-corpus.jsonl")
    with open(base) as f, open(data, "w") as g:
        for i, line in enumerate(f):
            if i >= args.shard_docs:
                break
            g.write(line)
    common_kw = {"data_files": [data], "tokenizer_name": tok_dir, "validation_split": 0.0, "progress": False,
                 "batch_size": 64}
    one = zarrtok.build("json", output=os.path.join(workdir, "shards-one"), **common_kw)
    total = one.num_tokens("train")
    shutil.rmtree(os.path.join(workdir, "shards-one"), ignore_errors=True)
    out: dict[str, Any] = {"documents": args.shard_docs, "tokens": total, "runs": [],
                           "load_average_before": load_average()}
    server = S3Server()
    env = {**os.environ, "ZARRTOK_CACHE_DIR": os.path.join(workdir, "zcache")}
    try:
        for n in counts:
            shard = math.ceil(total / n)
            for where in ("local", "s3"):
                if where == "local":
                    url, so = os.path.join(workdir, f"many-{n}"), {}
                else:
                    bucket = server.make_bucket(f"many-{n}-{int(time.time() * 1000) % 10**8}")
                    url, so = f"s3://{bucket}/store", server.storage_options
                server.reset_log()
                t0 = time.perf_counter()
                plan = zarrtok.plan_build("json", output=url, shard_size=shard, storage_options=so or None,
                                          **common_kw)
                plan_s = time.perf_counter() - t0
                plan_requests = len(server.requests)
                server.reset_log()
                t0 = time.perf_counter()
                mode = "direct"
                if where == "s3" and n > args.direct_s3_shards:
                    mode = "local tasks + upload"
                    upload_s = write_locally_and_upload(plan, os.path.join(workdir, f"mirror-{n}"), so)
                else:
                    run_plan(plan, plan.pending(), executor="inprocess")
                    upload_s = None
                tasks_s = time.perf_counter() - t0
                task_reqs = server.requests
                server.reset_log()
                t0 = time.perf_counter()
                store = builder.commit_build(plan)
                commit_s = time.perf_counter() - t0
                commit_reqs = server.requests
                shards = len(store.manifest.splits["train"].shards)
                seq = max(16, min(2048, total // shards // 2))
                if where == "local":
                    manifest_bytes = os.path.getsize(os.path.join(url, "zarr.json"))
                else:
                    manifest_bytes = server.list_keys(bucket, "store/zarr.json").get("store/zarr.json", 0)
                server.reset_log()
                opened = json.loads(subprocess.check_output(
                    [sys.executable, "-c", OPEN_CODE, url, json.dumps(so), str(seq)], text=True, env=env).strip()
                    .splitlines()[-1])
                open_reqs = server.requests if where == "s3" else []
                r = {"shards_target": n, "shards": shards, "where": where, "shard_tokens": shard, "tasks_mode": mode,
                     "upload_seconds": upload_s,
                     "plan_seconds": plan_s, "plan_requests": plan_requests if where == "s3" else None,
                     "tasks_seconds": tasks_s, "commit_seconds": commit_s, "manifest_bytes": manifest_bytes,
                     "open_first_window_seconds": opened["seconds"], "seq_len": seq,
                     "load_average": load_average()}
                if where == "s3":
                    r.update(task_requests=len(task_reqs), task_puts=sum(q.method == "PUT" for q in task_reqs),
                             requests_per_shard=len(task_reqs) / shards,
                             puts_per_shard=sum(q.method == "PUT" for q in task_reqs) / shards,
                             tasks_by_method={m: sum(q.method == m for q in task_reqs)
                                              for m in sorted({q.method for q in task_reqs})},
                             commit_requests=len(commit_reqs),
                             commit_by_method={m: sum(q.method == m for q in commit_reqs)
                                               for m in sorted({q.method for q in commit_reqs})},
                             open_requests=len(open_reqs),
                             open_request_log=[f"{q.method} {q.path}{'?' + q.query if q.query else ''}"
                                               for q in open_reqs][:20])
                out["runs"].append(r)
                extra = (f"; S3 requests: tasks {r['requests_per_shard']:.1f}/shard ({r['puts_per_shard']:.1f} PUT), "
                         f"commit {r['commit_requests']}, open {r['open_requests']}") if where == "s3" else ""
                print(f"{where:<5} {shards:>5} shards: plan {plan_s:6.2f}s, tasks {tasks_s:7.2f}s, commit "
                      f"{commit_s:6.3f}s, manifest {manifest_bytes / 1e3:8.1f} kB, open+window "
                      f"{opened['seconds'] * 1e3:7.1f} ms{extra}; load {r['load_average'][0]:.2f}", flush=True)
                if where == "local":
                    shutil.rmtree(url, ignore_errors=True)
    finally:
        server.stop()
    out["load_average_after"] = load_average()
    return out


def write_locally_and_upload(plan: Any, local: str, storage_options: dict[str, Any]) -> float:
    """Many shards on moto (which serves ~100 requests/s in this process): run the plan's tasks with
    the same ``run_task`` into a local directory laid out like the store, then upload the shards and
    the ledger records into the bucket (concurrent s3fs PUTs), leaving the bucket as the tasks would
    have. Returns the upload's seconds."""
    import s3fs
    import zarr

    from zarrtok.ingest import plan as planmod
    from zarrtok.storage.location import Location

    shutil.rmtree(local, ignore_errors=True)
    root = zarr.open_group(zarr.storage.LocalStore(local), mode="w")
    for split in plan.splits:
        root.create_group(f"splits/{split}/shards")
    staging = Location(local)
    for k in plan.pending():
        planmod.run_task(plan.data, k, staging)
    area_local = planmod.build_area(staging, plan.data["target"], plan.key)
    store_remote = plan.data["target"].split("://", 1)[1].rstrip("/")
    area_remote = plan.area.url.split("://", 1)[1].rstrip("/")
    lpaths, rpaths = [], []
    for split in plan.splits:
        base = os.path.join(local, "splits", split, "shards")
        for dirpath, _, files in os.walk(base):
            if dirpath == base:
                continue  # the shards group itself is the plan's
            for name in files:
                full = os.path.join(dirpath, name)
                lpaths.append(full)
                rpaths.append(f"{store_remote}/{os.path.relpath(full, local)}")
    done = os.path.join(area_local.local_path, planmod.LEDGER)
    for name in os.listdir(done):
        lpaths.append(os.path.join(done, name))
        rpaths.append(f"{area_remote}/{planmod.LEDGER}/{name}")
    t0 = time.perf_counter()
    s3fs.S3FileSystem(**storage_options).put(lpaths, rpaths)
    seconds = time.perf_counter() - t0
    shutil.rmtree(local, ignore_errors=True)
    return seconds


# -- the 1T projection ------------------------------------------------------------------------------------
def projection(report: dict[str, Any], cores_per_machine: int = 32) -> dict[str, Any]:
    """1T tokens on N machines of ``cores_per_machine`` workers each, from the measured per-worker
    rate (the Dask 1-worker build of the first size), and the limits beside it."""
    runs = report["build"]["runs"]
    first = report["build"]["sizes_mb"][0]
    one = aggregate([r for r in runs if r["kind"] == "dask" and r["workers"] == 1 and r["size_mb"] == first])
    per_worker = one["task_phase_tokens_per_second"] if one else None  # the part that scales out
    shard_runs = [r for r in report["shards"]["runs"] if r["where"] == "s3"]
    big = max(shard_runs, key=lambda r: r["shards"]) if shard_runs else None
    direct = [r for r in shard_runs if r["tasks_mode"] == "direct"]
    big_direct = max(direct, key=lambda r: r["shards"]) if direct else None
    out: dict[str, Any] = {"tokens": 1e12, "cores_per_machine": cores_per_machine,
                           "per_worker_tokens_per_second": per_worker, "machines": {}}
    sizes = report["build"]["sizes_mb"]
    plan = report["build"].get("plan_seconds") or {}
    if plan and runs:
        last = str(sizes[-1])
        corpus_bytes = report["build"]["corpora"][last]["bytes"]
        tokens = next((r["tokens"] for r in runs if str(r["size_mb"]) == last), None)
        if tokens:
            out["bytes_per_token"] = corpus_bytes / tokens
            out["plan_bytes_per_second"] = corpus_bytes / plan[last]
            out["plan_hours_at_1T"] = 1e12 * out["bytes_per_token"] / out["plan_bytes_per_second"] / 3600
    if per_worker is None:
        return out
    for n in (1, 8, 64, 512):
        workers = n * cores_per_machine
        out["machines"][str(n)] = {"workers": workers, "hours": 1e12 / (per_worker * workers) / 3600}
    if big:
        out["manifest_bytes_per_shard"] = big["manifest_bytes"] / big["shards"]
        out["commit_seconds_at_most_shards"] = {"shards": big["shards"], "seconds": big["commit_seconds"],
                                                "requests": big["commit_requests"]}
    if big_direct:
        out["puts_per_shard"] = big_direct["puts_per_shard"]
        out["requests_per_shard"] = big_direct["requests_per_shard"]
        out["task_requests_by_method_per_shard"] = {m: c / big_direct["shards"]
                                                    for m, c in big_direct["tasks_by_method"].items()}
    return out


# -- rows --------------------------------------------------------------------------------------------------
def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The rounds of one contender: median tokens/s, the largest memory peaks and driver bytes."""
    import statistics

    if not runs:
        return None
    out = dict(runs[0])
    out["rounds"] = [r["tokens_per_second"] for r in runs]
    out["tokens_per_second"] = statistics.median(out["rounds"])
    out["task_rounds"] = [r["task_phase_tokens_per_second"] for r in runs]
    out["task_phase_tokens_per_second"] = statistics.median(out["task_rounds"])
    out["load_average"] = [r["load_average"] for r in runs]
    for k in ("driver_io_over_token_bytes", "task_results_over_token_bytes", "driver_io_bytes_task_phase",
              "task_result_bytes"):
        out[k] = max(r[k] for r in runs)
    # memory: the first round's (a fresh Dask cluster; later rounds' workers also hold the cached plan
    # contexts of the earlier rounds' builds, plan._CONTEXT, which grows by one per plan key)
    first = min(runs, key=lambda r: r.get("round", 0))
    for k in ("peak_rss_per_worker_mb", "peak_uss_per_worker_mb"):
        out[k] = first[k]
        out[f"{k}_rounds"] = [r[k] for r in runs]
    return out


def rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    b = report["build"]
    sizes = b["sizes_mb"]

    combos = sorted({(r["size_mb"], r["kind"], r["workers"]) for r in b["runs"]})

    def get(size, kind, w):
        return aggregate([r for r in b["runs"] if r["size_mb"] == size and r["kind"] == kind and r["workers"] == w])

    for size, kind, w in combos:
        r = get(size, kind, w)
        out.append(row(SUITE, f"{size} MB {kind} {w}w: build tokens/s (median of {len(r['rounds'])})",
                       r["tokens_per_second"], unit="tokens/s",
                       conditions=conditions(report, size_mb=size, load_average=r["load_average"], shards=r["shards"],
                                             encoder=r["encoder"], rounds=r["rounds"])))
    for size in sizes:
        for w in WORKERS:
            d, p = get(size, "dask", w), get(size, "pool", w)
            if d and p:
                for what, key in (("build", "tokens_per_second"), ("task phase", "task_phase_tokens_per_second")):
                    ratio = d[key] / p[key]
                    out.append(row(SUITE, f"{size} MB {w}w: {what} tokens/s Dask LocalCluster / pool", ratio,
                                   reference="pool", target=f">= {TARGET_DASK_VS_POOL}x",
                                   ok=ratio >= TARGET_DASK_VS_POOL,
                                   conditions=conditions(report, size_mb=size, workers=w, dask=d[key], pool=p[key],
                                                         rounds={"dask": d["rounds" if key == "tokens_per_second"
                                                                           else "task_rounds"],
                                                                 "pool": p["rounds" if key == "tokens_per_second"
                                                                           else "task_rounds"]},
                                                         load_average=[d["load_average"], p["load_average"]])))
        i = get(size, "inprocess", 1)
        p2 = get(size, "pool", 2)
        if i and p2:
            out.append(row(SUITE, f"{size} MB: build tokens/s pool 2w / in-process", p2["tokens_per_second"]
                           / i["tokens_per_second"], reference="inprocess", conditions=conditions(report, size_mb=size)))
    if len(sizes) > 1:
        small, big = sizes[0], sizes[-1]
        for kind in ("pool", "dask"):
            a, z = get(small, kind, max(WORKERS)), get(big, kind, max(WORKERS))
            if a and z:
                for mem in ("rss", "uss"):
                    k = f"peak_{mem}_per_worker_mb"
                    flat = z[k] / a[k]
                    out.append(row(SUITE, f"{kind} {max(WORKERS)}w: peak {mem.upper()} per worker {big} MB / {small} MB "
                                   "(flat, first rounds)", flat, reference=f"{small} MB", target=f"<= {TARGET_FLAT}x",
                                   ok=flat <= TARGET_FLAT,
                                   conditions=conditions(report, peak_mb=[a[k], z[k]],
                                                         rounds_mb=[a[f"{k}_rounds"], z[f"{k}_rounds"]])))
    for size, kind, w in combos:
        r = get(size, kind, w)
        if size != sizes[-1] and kind != "inprocess" or w != max(WORKERS) and kind != "inprocess":
            continue
        ok = None if r["kind"] == "inprocess" else r["driver_io_over_token_bytes"] <= TARGET_DRIVER_BYTES
        out.append(row(SUITE, f"{r['size_mb']} MB {r['kind']} {r['workers']}w: driver I/O in task phase / token bytes",
                       r["driver_io_over_token_bytes"], reference="token bytes",
                       target=None if ok is None else f"<= {TARGET_DRIVER_BYTES}x", ok=ok,
                       conditions=conditions(report, driver_io_bytes=r["driver_io_bytes_task_phase"],
                                             task_result_bytes=r["task_result_bytes"], token_bytes=r["token_bytes"])))
        if r["kind"] != "inprocess":
            out.append(row(SUITE, f"{r['size_mb']} MB {r['kind']} {r['workers']}w: task results / token bytes",
                           r["task_results_over_token_bytes"], reference="token bytes",
                           conditions=conditions(report, task_result_bytes=r["task_result_bytes"],
                                                 records=r["shards"])))
    for size, sec in (b.get("plan_seconds") or {}).items():
        out.append(row(SUITE, f"{size} MB: plan_build seconds (driver, serial)", sec, unit="s",
                       conditions=conditions(report, size_mb=int(size))))
    for r in report["shards"]["runs"]:
        cond = conditions(report, shards=r["shards"], where=r["where"], load_average=r["load_average"])
        out.append(row(SUITE, f"{r['where']} {r['shards']} shards: commit seconds", r["commit_seconds"], unit="s",
                       target=f"< {TARGET_COMMIT_S:g} s", ok=r["commit_seconds"] < TARGET_COMMIT_S, conditions=cond))
        out.append(row(SUITE, f"{r['where']} {r['shards']} shards: open + first window seconds",
                       r["open_first_window_seconds"], unit="s", conditions=cond))
        if r["where"] == "s3":
            out.append(row(SUITE, f"s3 {r['shards']} shards: open + first window requests", r["open_requests"],
                           unit="requests", target=f"<= {TARGET_OPEN_REQUESTS}",
                           ok=r["open_requests"] <= TARGET_OPEN_REQUESTS, conditions=cond))
    return out


# -- main --------------------------------------------------------------------------------------------------
def run(args: argparse.Namespace, workdir: str) -> dict[str, Any]:
    isolate_caches(workdir)
    local_only_network()
    os.environ["ZARRTOK_CACHE_DIR"] = os.path.join(workdir, "zcache")
    t_start = time.perf_counter()
    before = load_average()
    base, tok_dir, corpus = make_corpus(os.path.join(workdir, "base"), args.base_tokens)
    print(f"base corpus: {corpus['documents']:,} documents, {corpus['jsonl_bytes'] / 1e6:.1f} MB "
          f"({corpus['seconds']:.1f}s); load {before}", flush=True)
    report: dict[str, Any] = {"benchmark": SUITE, "command": " ".join(["python", "-m", f"benchmarks.{SUITE}",
                                                                       *sys.argv[1:]]),
                              "base_corpus": corpus}
    if not args.skip_build:
        report["build"] = build_section(args, workdir, base, tok_dir)
    else:
        report["build"] = {"sizes_mb": [], "runs": []}
    report["shards"] = {"runs": []} if args.skip_shards else shards_section(args, workdir, base, tok_dir)
    report["projection"] = projection(report) if report["build"]["runs"] else {}
    machine = machine_info()
    machine["load_average_before"] = before
    report["machine"] = machine
    report["total_seconds"] = time.perf_counter() - t_start
    return report


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smoke sizes (2 MB + 8 MB; 10 / 100 shards)")
    size.add_argument("--full", action="store_true", help="250 MB + 1 GB; 10 / 100 / 1,000 shards (the default)")
    p.add_argument("--base-tokens", type=int, default=None, help="tokens of the base JSONL the corpora repeat")
    p.add_argument("--shard-tokens", type=int, default=None, help="shard_size of the throughput builds")
    p.add_argument("--shard-docs", type=int, default=None, help="documents of the many-shard corpus")
    p.add_argument("--all-contenders-every-size", action="store_true",
                   help="run every contender at every size (default: only the 2-worker pool and Dask past the first)")
    p.add_argument("--skip-build", action="store_true", help="only the many-shard section")
    p.add_argument("--plan-time-only", action="store_true", help="only plan_build's time at each size (no builds)")
    p.add_argument("--skip-shards", action="store_true", help="no many-shard section")
    p.add_argument("--direct-s3-shards", type=int, default=None,
                   help="S3 stores of more shards are written locally by the tasks and uploaded (moto is slow; "
                        "default 100, 10 with --quick)")
    p.add_argument("--rounds", type=int, default=None, help="rounds of every build (default: 1 quick, 3 full)")
    p.add_argument("--json", default=DEFAULT_JSON)
    p.add_argument("--workdir", default=None)
    args = p.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.direct_s3_shards = args.direct_s3_shards or (10 if args.quick else 100)
    args.base_tokens = args.base_tokens or (300_000 if args.quick else 5_000_000)
    args.shard_tokens = args.shard_tokens or (50_000 if args.quick else 4_000_000)
    args.shard_docs = args.shard_docs or (1_000 if args.quick else 6_000)
    report = run_in_workdir(run, args, "zarrtok-bench-build-scale-")
    report["rows"] = rows(report)
    print(json.dumps(report["projection"], indent=1))
    from benchmarks.common import print_rows

    print_rows(report["rows"])
    write_report(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

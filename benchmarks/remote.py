"""Remote reads: zarrtok over S3 (a local moto server) versus zarr, a local copy, and the link itself.

Run from the repository root::

    python -m benchmarks.remote              # ~120M tokens (29 chunk objects of 8 MiB), ~7 minutes
    python -m benchmarks.remote --tokens 30000000   # a small split (8 chunks): start-up costs dominate
    python -m benchmarks.remote --quick      # ~2M tokens in 256K-token chunks, ~15 seconds (a smoke run)
    python -m benchmarks.remote --tokens 40000000 --json /tmp/remote.json

Method
------
1. **Data, offline.** The corpus and byte-level BPE of ``benchmarks.random_access``
   (``vocab_size=4096``, ``uint16`` tokens), built once locally with :func:`zarrtok.build` (default
   8 MiB chunks) and published to a bucket with :func:`zarrtok.copy`. Everything, Hugging Face
   caches and the server's spill files included, lives in a temporary directory.
2. **Server.** moto's S3 app (``moto[server]``) under werkzeug's threaded WSGI server, in a
   **separate process** bound to 127.0.0.1 (so it does not share the benchmark's GIL), wrapped in a
   WSGI middleware that counts requests and response-body bytes: "bytes transferred" below are
   counted by the server, not by the client. Objects are kept in memory
   (``MOTO_S3_DEFAULT_KEY_BUFFER_SIZE``).
3. **(d) Link ceiling.** Plain s3fs ``cat_file`` of every chunk object of the split, one after the
   other: the MB/s one client gets for whole objects from this server. Informational: the same
   objects fetched concurrently (``fs.cat(paths)``).
4. **(a) Random access, single process.** Windows of ``seq_len=2048`` at uniformly random indices
   (fixed seed): ``zarrtok.open(url, reader_options={"mode": "range"})`` + ``dataset[i]`` versus
   zarr's own ``arr[i*L : i*L+L+1]`` on the same token array through ``zarr.storage.FsspecStore``
   (converted to the same int64 ``(inputs, labels)`` tensors). A third contender, plain s3fs
   ``cat_file(path, start=, end=)`` of exactly the window's bytes, is the per-request ceiling of
   the link. All are first checked to return the local store's tokens. Each contender's round reads
   a prefix of the same random index sequence, sized so that a round takes about
   ``--round-seconds``; rounds are interleaved, the order rotating. Reported: median windows/s, the
   ratio of medians (target >= 3x), server bytes, requests and CPU per window. Informational:
   ``__getitems__`` of 16 random windows (the batch's ranged GETs are issued concurrently).
5. **(b)/(c) A shuffled epoch through a DataLoader.** ``batch 16 x seq 2048``, ``num_workers=2``,
   zarrtok's training loader: ``store.dataloader("train", 2048, 16, shuffle="chunk", seed=0,
   epoch=r, block_chunks=4, num_workers=2, remainder="partial")`` (a ``torch`` DataLoader over the
   chunk-local shuffle, read-ahead driven by its batch sampler; with a shared ``cache_dir`` the
   first chunks start downloading in the parent while the workers start). Contenders:
   (b) the S3 store in ``"cache"`` mode with a **fresh** ``cache_dir`` per round in the temporary
   directory (a cold epoch: every byte comes over the link, both workers share the directory), and
   (c) the local store. Informational: the S3 store with a warm ``cache_dir`` (nothing to fetch),
   and a cold epoch whose ``cache_dir`` is on tmpfs (``/dev/shm``, separating the cost of writing
   the disk cache). One round = one full epoch of each contender (store opened outside the timing;
   worker start-up inside, as for any fresh DataLoader iterator), interleaved with the order
   rotating; round ``r`` uses sampler epoch ``r`` for every contender, and the batches of all
   contenders are checked to be identical. Reported: median batches/s, (b)/(c) (target >= 0.8x),
   server bytes per cold epoch over the split's stored bytes (target <= 1.1x), (b)'s MB/s against
   (d), the time to the first batch and the rate after it.

The machine's cores are shared by the client, its DataLoader workers and the moto server (which
burns CPU for every request it serves; its CPU seconds per phase are reported). The script always
exits 0; a missed target is printed as ``MISS``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any, Self

import numpy as np
import torch

from benchmarks.common import (
    REPO_ROOT,
    Contention,
    calibrate_count,
    command_line,
    conditions,
    cpu_seconds,
    default_json,
    git_state,
    isolate_caches,
    local_only_network,
    machine_info,
    make_corpus,
    mb,
    print_conditions,
    print_machine,
    rotated,
    run_all,
    run_in_workdir,
    summary,
    timed,
    write_report,
)
from benchmarks.common import row as result_row

SEQ_LEN = 2048
BATCH_SIZE = 16
NUM_WORKERS = 2
BLOCK_CHUNKS = 4
TARGET_RANGE_RATIO = 3.0  # (a) zarrtok range mode / zarr __getitem__, windows/s
TARGET_LOADER_RATIO = 0.8  # (b) S3 cold epoch / (c) local epoch, batches/s
TARGET_BYTES_RATIO = 1.1  # (b) bytes the server sent per epoch / the split's stored bytes
QUICK_CHUNK = 262_144
BUCKET = "zarrtok-bench"
PREFIX = "stores/bench"
CONTROL = "/__zarrtok_bench__/stats"
CREDENTIALS = {"key": "testing", "secret": "testing"}
SEED = 4321
DEFAULT_JSON = default_json("remote")


# -- the server (its own process: python -m benchmarks.remote --serve) ---------------------------------
class CountingMiddleware:
    """WSGI middleware around moto's app: counts requests and bytes in/out, per HTTP method.

    ``GET /__zarrtok_bench__/stats`` returns the cumulative counts and the server's CPU seconds (and
    is not counted itself).
    """

    def __init__(self, app: Callable):
        self.app = app
        self.lock = threading.Lock()
        self.counts: dict[str, dict[str, int]] = {}

    def add(self, method: str, **values: int) -> None:
        with self.lock:
            row = self.counts.setdefault(method, {"requests": 0, "bytes_in": 0, "bytes_out": 0})
            for k, v in values.items():
                row[k] += v

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            by_method = {m: dict(row) for m, row in self.counts.items()}
        total = {k: sum(row[k] for row in by_method.values()) for k in ("requests", "bytes_in", "bytes_out")}
        return {**total, "by_method": by_method, "cpu_seconds": time.process_time()}

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Any:
        if environ.get("PATH_INFO", "") == CONTROL:
            body = json.dumps(self.snapshot()).encode()
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        method = environ.get("REQUEST_METHOD", "?")
        self.add(method, requests=1, bytes_in=int(environ.get("CONTENT_LENGTH") or 0))
        return _CountedBody(self.app(environ, start_response), self, method)


class _CountedBody:
    """The app's response iterable, counting the bytes it yields (``close`` is passed through)."""

    def __init__(self, body: Any, counter: CountingMiddleware, method: str):
        self.body, self.counter, self.method = body, counter, method

    def __iter__(self):
        n = 0
        try:
            for piece in self.body:
                n += len(piece)
                yield piece
        finally:
            self.counter.add(self.method, bytes_out=n)

    def close(self) -> None:
        close = getattr(self.body, "close", None)
        if close is not None:
            close()


def serve() -> int:
    """Serve moto's S3 on 127.0.0.1 (a free port, printed as ``PORT <n>``) until terminated."""
    import logging

    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no access-log line per request
    app = CountingMiddleware(DomainDispatcherApplication(create_backend_app))
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=MotoRequestHandler)
    print(f"PORT {server.server_address[1]}", flush=True)
    server.serve_forever()
    return 0


class MotoServer:
    """The S3 server as a child process; ``stats()`` reads its counters."""

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None
        self.url = ""
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def __enter__(self) -> Self:
        tmp = os.path.join(self.workdir, "server-tmp")
        os.makedirs(tmp, exist_ok=True)
        env = {**os.environ, "MOTO_S3_DEFAULT_KEY_BUFFER_SIZE": str(1 << 30), "TMPDIR": tmp,
               "PYTHONPATH": REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.proc = subprocess.Popen([sys.executable, "-m", "benchmarks.remote", "--serve"], cwd=REPO_ROOT,
                                     env=env, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().strip()
        if not line.startswith("PORT "):
            self.proc.kill()
            raise RuntimeError(f"the moto server did not start (it said {line!r})")
        self.url = f"http://127.0.0.1:{int(line.split()[1])}"
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def stats(self) -> dict[str, Any]:
        with self._opener.open(self.url + CONTROL, timeout=30) as r:
            return json.loads(r.read())

    def storage_options(self) -> dict[str, Any]:
        return {**CREDENTIALS, "client_kwargs": {"endpoint_url": self.url, "region_name": "us-east-1"}}


def delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Server counters between two snapshots."""
    def gets(s: dict[str, Any]) -> int:
        return s["by_method"].get("GET", {}).get("requests", 0)

    return {
        "requests": after["requests"] - before["requests"],
        "get_requests": gets(after) - gets(before),
        "bytes_out": after["bytes_out"] - before["bytes_out"],
        "bytes_in": after["bytes_in"] - before["bytes_in"],
        "server_cpu_seconds": after["cpu_seconds"] - before["cpu_seconds"],
    }


# -- timing helpers ------------------------------------------------------------------------------------
# -- (d) link ceiling ----------------------------------------------------------------------------------
def chunk_objects(fs: Any, store: Any, split: str = "train") -> list[tuple[str, int]]:
    """``(path, size)`` of every chunk object of the split's token arrays, in stream order."""
    out = []
    for reader in store.tokens(split).readers:
        layout = reader.spec.raw
        for k in range(layout.num_chunks):
            path = f"{BUCKET}/{PREFIX}/{reader.spec.array_path}/{layout.chunk_key(k)}"
            out.append((path, fs.info(path)["size"]))
    return out


def bench_link(server: MotoServer, objects: list[tuple[str, int]], rounds: int) -> dict[str, Any]:
    import s3fs

    fs = s3fs.S3FileSystem(**server.storage_options(), skip_instance_cache=True)
    paths = [p for p, _ in objects]
    total = sum(s for _, s in objects)
    fs.cat_file(paths[0], start=0, end=16)  # client created, connection made
    rates: dict[str, list[float]] = {"sequential": [], "concurrent": []}
    fetch = {"sequential": lambda: sum(len(fs.cat_file(p)) for p in paths),
             "concurrent": lambda: sum(len(v) for v in fs.cat(paths).values())}
    traffic = []
    for r in range(rounds):
        for name in rotated(list(rates), r):
            before = server.stats()
            got, sec = timed(fetch[name])
            traffic.append(delta(before, server.stats()))
            assert got == total, (got, total)
            rates[name].append(mb(total) / sec)
    return {
        "objects": len(paths), "bytes": total, "rates_MBps": rates,
        "sequential": summary(rates["sequential"]), "concurrent": summary(rates["concurrent"]),
        "server_cpu_ms_per_MB": 1e3 * statistics.median(t["server_cpu_seconds"] / mb(t["bytes_out"]) for t in traffic),
    }


# -- (a) random access ---------------------------------------------------------------------------------
class ZarrWindows:
    """The baseline: zarr's own ``__getitem__`` on the token array, returned like ``TokenDataset``."""

    def __init__(self, url: str, storage_options: dict[str, Any], array_path: str, seq_len: int):
        import zarr

        store = zarr.storage.FsspecStore.from_url(url, storage_options=storage_options, read_only=True)
        self.array = zarr.open_group(store, mode="r")[array_path]
        self.seq_len = seq_len

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        L = self.seq_len
        x = torch.from_numpy(self.array[i * L : i * L + L + 1].astype(np.int64))
        return x[:-1], x[1:]


class RawRangeWindows:
    """The per-request ceiling: plain s3fs ranged GETs of exactly a window's bytes (no zarrtok)."""

    def __init__(self, url: str, storage_options: dict[str, Any], reader: Any, seq_len: int):
        import s3fs

        self.fs = s3fs.S3FileSystem(**storage_options, skip_instance_cache=True)
        self.base = f"{url.split('://', 1)[1]}/{reader.spec.array_path}"
        self.layout, self.chunk, self.seq_len = reader.spec.raw, reader.chunk_size, seq_len
        self.dtype = np.dtype(reader.dtype)

    def __getitem__(self, i: int) -> np.ndarray:
        a, b, pieces = i * self.seq_len, (i + 1) * self.seq_len + 1, []
        while a < b:  # one GET per chunk touched, as zarrtok does
            k = a // self.chunk
            end = min(b, (k + 1) * self.chunk)
            off = (a - k * self.chunk) * self.dtype.itemsize
            path = f"{self.base}/{self.layout.chunk_key(k)}"
            pieces.append(self.fs.cat_file(path, start=off, end=off + (end - a) * self.dtype.itemsize))
            a = end
        return np.frombuffer(b"".join(pieces), dtype=self.dtype)


def bench_random(server: MotoServer, url: str, opts: dict[str, Any], store_local: Any,
                 args: argparse.Namespace) -> dict[str, Any]:
    import zarrtok

    remote = zarrtok.open(url, storage_options=opts, reader_options={"mode": "range"})
    ds = remote.dataset("train", SEQ_LEN)
    local = store_local.dataset("train", SEQ_LEN)
    first_shard = remote.tokens("train").readers[0]
    zarr_ds = ZarrWindows(url, opts, first_shard.spec.array_path, SEQ_LEN)
    raw = RawRangeWindows(url, opts, first_shard, SEQ_LEN)
    n_windows = (first_shard.length - 1) // SEQ_LEN  # the zarr baseline reads the first shard only
    rng = np.random.default_rng(SEED)
    pool = rng.integers(0, n_windows, size=100_000).tolist()

    for i in pool[:16]:  # every contender returns the local store's tokens before anything is timed
        want = local[i]
        for name, got in (("zarrtok range", ds[i]), ("zarr", zarr_ds[i])):
            if not (torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])):
                raise AssertionError(f"window {i}: {name} differs from the local store")
        if not torch.equal(torch.from_numpy(raw[i].astype(np.int64))[:-1], want[0]):
            raise AssertionError(f"window {i}: the plain ranged GETs differ from the local store")

    contenders: dict[str, Callable[[int], Any]] = {
        "zarr_getitem": zarr_ds.__getitem__, "zarrtok_range": ds.__getitem__, "s3fs_ranged_get": raw.__getitem__}
    counts = {name: calibrate_count(fn, pool, args.round_seconds) for name, fn in contenders.items()}
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    traffic: dict[str, list[dict[str, Any]]] = {name: [] for name in contenders}
    for r in range(args.rounds):
        for name in rotated(list(contenders), r):
            before = server.stats()
            sec = run_all(contenders[name], pool[: counts[name]])
            traffic[name].append(delta(before, server.stats()))
            rates[name].append(counts[name] / sec)

    # informational: 16 random windows per __getitems__ call (the batch's ranged GETs run concurrently)
    batches = rng.integers(0, n_windows, size=(4096, BATCH_SIZE)).tolist()

    def get_batch(b: list[int]) -> Any:
        return zarrtok.collate_windows(ds.__getitems__(b))

    nb = calibrate_count(get_batch, batches, args.round_seconds, minimum=2)
    batch_rates = [nb * BATCH_SIZE / run_all(get_batch, batches[:nb]) for _ in range(max(3, args.rounds // 2))]

    def per_window(name: str, key: str) -> float:
        return statistics.median(t[key] / counts[name] for t in traffic[name])

    med = {name: statistics.median(v) for name, v in rates.items()}
    return {
        "seq_len": SEQ_LEN,
        "windows": n_windows,
        "items_per_round": counts,
        "rates": rates,
        "summary": {name: summary(v) for name, v in rates.items()},
        "ratio": med["zarrtok_range"] / med["zarr_getitem"],
        "paired_ratio": statistics.median(a / b for a, b in zip(rates["zarrtok_range"], rates["zarr_getitem"])),
        "ratio_to_plain_ranged_get": med["zarrtok_range"] / med["s3fs_ranged_get"],
        "bytes_per_window": {name: per_window(name, "bytes_out") for name in contenders},
        "requests_per_window": {name: per_window(name, "requests") for name in contenders},
        "server_cpu_ms_per_window": {name: 1e3 * per_window(name, "server_cpu_seconds") for name in contenders},
        "batched_range_windows_per_s": summary(batch_rates),
        "traffic": traffic,
    }


# -- (b)/(c) DataLoader epochs -------------------------------------------------------------------------
def run_epoch(store: Any, epoch: int) -> tuple[int, int, float, float, tuple[float, float]]:
    """One shuffled epoch through a fresh DataLoader: (batches, checksum, seconds, seconds to the first
    batch, (CPU seconds of this process, CPU seconds of the workers))."""
    # zarrtok's training loader: chunk-local shuffle, read-ahead driven by the batch sampler, and (S3
    # contenders, which have a cache_dir shared by the workers) the first chunks started in this
    # process while the workers start. "partial" serves the last, short batch (like drop_last=False).
    loader = store.dataloader("train", SEQ_LEN, BATCH_SIZE, shuffle="chunk", seed=0, epoch=epoch,
                              block_chunks=BLOCK_CHUNKS, num_workers=NUM_WORKERS, remainder="partial")

    def consume() -> tuple[int, int, float]:
        n = check = 0
        first = 0.0
        t0 = time.perf_counter()
        for batch in loader:
            inputs, labels = batch["input_ids"], batch["labels"]
            if n == 0:
                first = time.perf_counter() - t0
            assert inputs.shape[1] == SEQ_LEN and labels.shape == inputs.shape
            n += 1
            check = (check * 1_000_003 + int(inputs[:, :4].sum()) + int(labels[:, -1].sum())) % (1 << 61)
        return n, check, first

    cpu0 = cpu_seconds()
    (n, check, first), sec = timed(consume)  # the workers have exited (and been waited for) at the end
    cpu1 = cpu_seconds()
    return n, check, sec, first, (cpu1[0] - cpu0[0], cpu1[1] - cpu0[1])


def bench_loader(server: MotoServer, url: str, opts: dict[str, Any], local_path: str, split_bytes: int,
                 workdir: str, tmpfs_dir: str | None, args: argparse.Namespace) -> dict[str, Any]:
    import zarrtok

    def cache_dir(name: str, r: int) -> str:
        if name == "remote_warm":
            return os.path.join(workdir, "cache-warm")
        return os.path.join(tmpfs_dir if name == "remote_cold_tmpfs" else workdir, f"cache-cold-{r}")

    def open_store(name: str, r: int) -> Any:
        from zarrtok.read import clear_memory_caches

        clear_memory_caches()  # nothing from an earlier epoch in this process's chunk LRU
        if name == "local":
            return zarrtok.open(local_path)
        options = {"mode": "cache", "cache_dir": cache_dir(name, r)}
        return zarrtok.open(url, storage_options=opts, reader_options=options)

    run_epoch(open_store("remote_warm", 0), epoch=1000)  # fills the warm cache dir (and warms up imports)
    run_epoch(open_store("local", 0), epoch=1000)
    names = ["remote_cold", "local", "remote_warm"] + (["remote_cold_tmpfs"] if tmpfs_dir else [])
    rates: dict[str, list[float]] = {n: [] for n in names}
    first_batch: dict[str, list[float]] = {n: [] for n in names}
    after_first: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    traffic: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    batches = 0
    for r in range(args.loader_rounds):
        checks = {}
        for name in rotated(names, r):
            store = open_store(name, r)
            before = server.stats()
            batches, checks[name], sec, first, cpu_used = run_epoch(store, epoch=r)
            cpu[name].append(cpu_used)
            traffic[name].append(delta(before, server.stats()))
            rates[name].append(batches / sec)
            first_batch[name].append(first)
            after_first[name].append((batches - 1) / (sec - first))
            if name.startswith("remote_cold"):
                shutil.rmtree(cache_dir(name, r), ignore_errors=True)
        if len(set(checks.values())) != 1:
            raise AssertionError(f"round {r}: the contenders' batches differ: {checks}")
    med = {n: statistics.median(v) for n, v in rates.items()}
    cold_bytes = statistics.median(t["bytes_out"] for t in traffic["remote_cold"])
    return {
        "batches_per_epoch": batches,
        "rates": rates,
        "summary": {n: summary(v) for n, v in rates.items()},
        "first_batch_seconds": {n: summary(v) for n, v in first_batch.items()},
        "after_first_batch": {n: summary(v) for n, v in after_first.items()},
        "cpu_seconds_per_epoch": {
            n: {"main": statistics.median(c[0] for c in v), "workers": statistics.median(c[1] for c in v),
                "server": statistics.median(t["server_cpu_seconds"] for t in traffic[n])}
            for n, v in cpu.items()},
        "ratio_cold_to_local": med["remote_cold"] / med["local"],
        "paired_ratio_cold_to_local": statistics.median(c / v for c, v in zip(rates["remote_cold"], rates["local"])),
        "ratio_warm_to_local": med["remote_warm"] / med["local"],
        "ratio_cold_tmpfs_to_local": med["remote_cold_tmpfs"] / med["local"] if tmpfs_dir else None,
        "cold_bytes_per_epoch": cold_bytes,
        "cold_bytes_ratio": cold_bytes / split_bytes,
        "cold_requests_per_epoch": statistics.median(t["requests"] for t in traffic["remote_cold"]),
        "cold_epoch_seconds": batches / med["remote_cold"],
        "cold_MBps": mb(cold_bytes) * med["remote_cold"] / batches,
        "local_demand_MBps": mb(split_bytes) * med["local"] / batches,
        "traffic": traffic,
    }


# -- data ----------------------------------------------------------------------------------------------
def build_local(data_path: str, tok_dir: str, output: str, chunk_size: int | None) -> tuple[Any, float]:
    import zarrtok

    t0 = time.perf_counter()
    store = zarrtok.build("json", data_files=data_path, tokenizer_name=tok_dir, output=output, num_workers=2,
                          progress=False, chunk_size=chunk_size, overwrite="changed")
    return store, time.perf_counter() - t0


def publish(local_path: str, url: str, opts: dict[str, Any]) -> float:
    """Create the bucket and copy the local store into it with ``zarrtok.copy``; return the seconds."""
    import boto3

    import zarrtok

    boto3.client("s3", aws_access_key_id=opts["key"], aws_secret_access_key=opts["secret"],
                 **opts["client_kwargs"]).create_bucket(Bucket=BUCKET)
    t0 = time.perf_counter()
    zarrtok.copy(local_path, url, dst_storage_options=opts, progress=False)
    return time.perf_counter() - t0


# -- report --------------------------------------------------------------------------------------------
def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def print_report(rep: dict[str, Any]) -> list[str]:
    """Print the summary table and details; return the names of the missed targets."""
    m, d, link, ra, ld = rep["machine"], rep["data"], rep["link"], rep["random_access"], rep["loader"]
    dirty = " (zarrtok/ modified)" if rep["git"]["zarrtok_dirty"] else ""
    print_machine(m, (
          f"torch {m['torch']}, numpy {m['numpy']}, zarr {m['zarr']}, zarrtok {m['zarrtok']}, "
          f"s3fs {rep['versions']['s3fs']}, moto {rep['versions']['moto']}; commit {rep['git']['commit'][:10]}{dirty}"))
    print(f"data: {d['tokens']:,} train tokens, {d['chunks']} chunk objects of {d['chunk_size']:,} tokens, "
          f"{mb(d['stored_bytes']):.1f} MB stored ({mb(d['token_bytes']):.1f} MB of tokens); "
          f"zarrtok.copy to the bucket {d['publish_seconds']:.1f}s")

    seq = link["sequential"]["median"]
    ras, lds = ra["summary"], ld["summary"]
    rows = [
        ("(a) random windows/s: range mode vs zarr __getitem__",
         f"{ras['zarrtok_range']['median']:,.0f} vs {ras['zarr_getitem']['median']:,.1f}",
         f"{ra['ratio']:.2f}x", f">= {TARGET_RANGE_RATIO:g}x", ra["ratio"] >= TARGET_RANGE_RATIO),
        ("(b)/(c) epoch batches/s: S3 cache mode, cold vs local",
         f"{lds['remote_cold']['median']:,.1f} vs {lds['local']['median']:,.1f}",
         f"{ld['ratio_cold_to_local']:.2f}x", f">= {TARGET_LOADER_RATIO:g}x",
         ld["ratio_cold_to_local"] >= TARGET_LOADER_RATIO),
        ("(b) bytes sent per epoch / split's stored bytes (chunk objects)",
         f"{mb(ld['cold_bytes_per_epoch']):.1f} / {mb(d['stored_bytes']):.1f} MB",
         f"{ld['cold_bytes_ratio']:.3f}x", f"<= {TARGET_BYTES_RATIO:g}x", ld["cold_bytes_ratio"] <= TARGET_BYTES_RATIO),
        ("(b) bytes sent per epoch / split's token bytes",
         f"{mb(ld['cold_bytes_per_epoch']):.1f} / {mb(d['token_bytes']):.1f} MB",
         f"{ld['cold_bytes_per_epoch'] / d['token_bytes']:.3f}x", f"<= {TARGET_BYTES_RATIO:g}x",
         ld["cold_bytes_per_epoch"] / d["token_bytes"] <= TARGET_BYTES_RATIO),
        ("(b) MB/s vs (d) link ceiling (sequential)", f"{ld['cold_MBps']:,.0f} vs {seq:,.0f}",
         f"{ld['cold_MBps'] / seq:.2f}x", "info", None),
        ("(a) range mode vs plain s3fs ranged GETs",
         f"{ras['zarrtok_range']['median']:,.0f} vs {ras['s3fs_ranged_get']['median']:,.0f}",
         f"{ra['ratio_to_plain_ranged_get']:.2f}x", "info", None),
    ]
    head = ("measure", "value", "ratio", "target", "result")
    cells = [(*row[:4], "" if row[4] is None else verdict(row[4])) for row in rows]
    widths = [max(len(str(r[i])) for r in [head, *cells]) for i in range(5)]
    print(f"\n(d) link ceiling, s3fs cat_file of each chunk object: {seq:,.0f} MB/s sequential (noise "
          f"{link['sequential']['spread']:.0%}), {link['concurrent']['median']:,.0f} MB/s concurrent (fs.cat); "
          f"server {link['server_cpu_ms_per_MB']:.2f} ms CPU per MB sent")
    print("\n" + "  ".join(h.ljust(w) for h, w in zip(head, widths)))
    print("-" * (sum(widths) + 8))
    for row in cells:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))

    names = (("zarr", "zarr_getitem"), ("range", "zarrtok_range"), ("s3fs", "s3fs_ranged_get"))
    print("\n(a) per window, zarr/range/s3fs: server bytes "
          + "/".join(f"{ra['bytes_per_window'][k]:,.0f}" for _, k in names)
          + "; requests " + "/".join(f"{ra['requests_per_window'][k]:.2f}" for _, k in names)
          + "; server CPU ms " + "/".join(f"{ra['server_cpu_ms_per_window'][k]:.2f}" for _, k in names)
          + "; noise " + "/".join(f"{ras[k]['spread']:.0%}" for _, k in names)
          + f"; median of per-round range/zarr ratios {ra['paired_ratio']:.2f}x; informational "
          f"__getitems__({BATCH_SIZE}) in range mode {ra['batched_range_windows_per_s']['median']:,.0f} windows/s")
    fb, af = ld["first_batch_seconds"], ld["after_first_batch"]
    print(f"(b)/(c) {ld['batches_per_epoch']} batches/epoch; cold epoch {ld['cold_epoch_seconds']:.2f}s, "
          f"{ld['cold_requests_per_epoch']:.0f} requests; median of per-round cold/local ratios "
          f"{ld['paired_ratio_cold_to_local']:.2f}x; noise cold/local {lds['remote_cold']['spread']:.0%}/"
          f"{lds['local']['spread']:.0%}; batches identical across contenders")
    print(f"  time to first batch cold/local: {fb['remote_cold']['median']:.3f}s/{fb['local']['median']:.3f}s; "
          f"batches/s after it: {af['remote_cold']['median']:,.0f}/{af['local']['median']:,.0f} "
          f"({af['remote_cold']['median'] / af['local']['median']:.2f}x); the local epoch consumes "
          f"{ld['local_demand_MBps']:,.0f} MB/s of chunk data")
    cpu = ld["cpu_seconds_per_epoch"]
    print("  CPU seconds per epoch (main + workers + server) cold/local: " + "/".join(
        f"{cpu[n]['main']:.2f}+{cpu[n]['workers']:.2f}+{cpu[n]['server']:.2f}" for n in ("remote_cold", "local")))
    print(f"  informational: warm cache_dir {lds['remote_warm']['median']:,.1f} batches/s "
          f"({ld['ratio_warm_to_local']:.2f}x local)", end="")
    if ld["ratio_cold_tmpfs_to_local"]:
        print(f"; cold with the cache_dir on tmpfs {lds['remote_cold_tmpfs']['median']:,.1f} batches/s "
              f"({ld['ratio_cold_tmpfs_to_local']:.2f}x local; first batch {fb['remote_cold_tmpfs']['median']:.3f}s, "
              f"{af['remote_cold_tmpfs']['median']:,.0f} batches/s after it)")
    else:
        print()
    return [row[0].split(":")[0].split(" (")[0] for row in rows if row[4] is False]


def rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The suite's result rows: (a) range mode vs zarr, (b)/(c) cold S3 epoch vs local, (b) bytes per epoch."""
    ra, ld, d = report["random_access"], report["loader"], report["data"]
    cond = conditions(report, tokens=d["tokens"], chunk_size=d["chunk_size"], seq_len=SEQ_LEN, batch_size=BATCH_SIZE,
                      contention=report["contention"])
    bytes_ratio = ld["cold_bytes_per_epoch"] / (d["tokens"] * 2)
    return [
        result_row("remote", "(a) range mode windows/s vs zarr __getitem__", ra["ratio"], reference="zarr __getitem__",
                   target=f">= {TARGET_RANGE_RATIO:g}x", ok=ra["ratio"] >= TARGET_RANGE_RATIO, conditions=cond),
        result_row("remote", "(b)/(c) cold S3 epoch vs local epoch, batches/s", ld["ratio_cold_to_local"],
                   reference="local epoch", target=f">= {TARGET_LOADER_RATIO:g}x",
                   ok=ld["ratio_cold_to_local"] >= TARGET_LOADER_RATIO, conditions=cond),
        result_row("remote", "(b) bytes per epoch vs the split's token bytes", bytes_ratio,
                   reference="the split's token bytes", target=f"<= {TARGET_BYTES_RATIO:g}x",
                   ok=bytes_ratio <= TARGET_BYTES_RATIO, conditions=cond),
    ]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.remote", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="~2M tokens in 256K-token chunks, fewer and shorter rounds")
    p.add_argument("--tokens", type=int, default=None, help="corpus size in tokens (default 120M; 2M with --quick)")
    p.add_argument("--chunk-size", type=int, default=None,
                   help=f"tokens per chunk (default: zarrtok's 8 MiB; {QUICK_CHUNK:,} with --quick)")
    p.add_argument("--json", default=DEFAULT_JSON, help=f"where to write the results (default {DEFAULT_JSON})")
    p.add_argument("--rounds", type=int, default=None, help="random-access rounds per contender (default 7; 3 quick)")
    p.add_argument("--round-seconds", type=float, default=None,
                   help="length of one random-access round (default 1; 0.3 quick)")
    p.add_argument("--loader-rounds", type=int, default=None,
                   help="DataLoader epochs per contender (default 7; 2 quick)")
    p.add_argument("--link-rounds", type=int, default=None, help="link-ceiling rounds (default 5; 2 quick)")
    p.add_argument("--workdir", default=None, help="keep data and stores here instead of a temporary directory")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.tokens = args.tokens or (2_000_000 if args.quick else 120_000_000)
    if args.chunk_size is None and args.quick:
        args.chunk_size = QUICK_CHUNK
    args.rounds = args.rounds or (3 if args.quick else 7)
    args.round_seconds = args.round_seconds or (0.3 if args.quick else 1.0)
    args.loader_rounds = args.loader_rounds or (2 if args.quick else 7)
    args.link_rounds = args.link_rounds or (2 if args.quick else 5)
    return args


def run(args: argparse.Namespace, workdir: str) -> dict[str, Any]:
    isolate_caches(workdir)
    local_only_network()  # only ever talk to 127.0.0.1
    import moto
    import s3fs

    import zarrtok  # after isolate_caches

    t_start = time.perf_counter()
    load_before = os.getloadavg()
    contention = Contention()
    print(f"workdir {workdir}; target {args.tokens:,} tokens", flush=True)
    data_path, tok_dir, corpus = make_corpus(workdir, args.tokens)
    local_path = os.path.join(workdir, "store-local")
    store_local, build_seconds = build_local(data_path, tok_dir, local_path, args.chunk_size)
    info = store_local.info()["splits"]["train"]
    chunk_size = store_local.tokens("train").readers[0].chunk_size
    print(f"corpus {corpus['documents']:,} documents ({corpus['seconds']:.1f}s); built locally: {info['tokens']:,} "
          f"tokens, {info['chunks']} chunk(s) of {chunk_size:,} tokens ({build_seconds:.1f}s)", flush=True)

    with MotoServer(workdir) as server:
        opts = server.storage_options()
        url = f"s3://{BUCKET}/{PREFIX}"
        publish_seconds = publish(local_path, url, opts)
        fs = s3fs.S3FileSystem(**opts, skip_instance_cache=True)
        objects = chunk_objects(fs, zarrtok.open(url, storage_options=opts))
        stored = sum(s for _, s in objects)
        assert stored == info["stored_bytes"], (stored, info["stored_bytes"])
        print(f"server {server.url}; store copied in {publish_seconds:.1f}s", flush=True)

        link = bench_link(server, objects, args.link_rounds)
        print(f"(d) link: {link['sequential']['median']:,.0f} MB/s sequential, "
              f"{link['concurrent']['median']:,.0f} MB/s concurrent", flush=True)
        ra = bench_random(server, url, opts, store_local, args)
        print(f"(a) random access: zarrtok range {ra['summary']['zarrtok_range']['median']:,.0f} w/s, zarr "
              f"{ra['summary']['zarr_getitem']['median']:,.1f} w/s ({ra['ratio']:.2f}x)", flush=True)
        tmpfs_dir = None
        if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
            tmpfs_dir = tempfile.mkdtemp(prefix="zarrtok-bench-remote-", dir="/dev/shm")
        try:
            ld = bench_loader(server, url, opts, local_path, stored, workdir, tmpfs_dir, args)
        finally:
            if tmpfs_dir:
                shutil.rmtree(tmpfs_dir, ignore_errors=True)
        print(f"(b)/(c) epoch: S3 cold {ld['summary']['remote_cold']['median']:,.1f} batches/s, local "
              f"{ld['summary']['local']['median']:,.1f} ({ld['ratio_cold_to_local']:.2f}x); "
              f"{ld['cold_bytes_ratio']:.3f}x the split's bytes", flush=True)
        server_totals = server.stats()
    # the server has exited and been waited for: its CPU is in our children's now
    contended = contention.stop()

    return {
        "benchmark": "remote",
        "command": command_line("remote"),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "git": git_state(),
        "machine": {**machine_info(), "load_average_before": load_before},
        "contention": contended,
        "versions": {"s3fs": s3fs.__version__, "moto": moto.__version__},
        "settings": {
            "tokens_target": args.tokens, "chunk_size": chunk_size, "seq_len": SEQ_LEN, "batch_size": BATCH_SIZE,
            "num_workers": NUM_WORKERS, "block_chunks": BLOCK_CHUNKS, "rounds": args.rounds,
            "round_seconds": args.round_seconds, "loader_rounds": args.loader_rounds,
            "link_rounds": args.link_rounds, "seed": SEED,
            "targets": {"range_ratio": TARGET_RANGE_RATIO, "loader_ratio": TARGET_LOADER_RATIO,
                        "bytes_ratio": TARGET_BYTES_RATIO},
        },
        "corpus": corpus,
        "data": {"tokens": info["tokens"], "documents": info["documents"], "chunks": info["chunks"],
                 "chunk_size": chunk_size, "token_bytes": info["token_bytes"], "stored_bytes": stored,
                 "build_seconds": build_seconds, "publish_seconds": publish_seconds},
        "link": link,
        "random_access": ra,
        "loader": ld,
        "server_totals": server_totals,
        "total_seconds": time.perf_counter() - t_start,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve:
        return serve()
    report = run_in_workdir(run, args, "zarrtok-bench-remote-")
    missed = print_report(report)
    print_conditions(report["machine"], report["contention"])
    print("\nMISS: " + ", ".join(missed) if missed else "\nall targets met")
    report["rows"] = rows(report)
    write_report(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

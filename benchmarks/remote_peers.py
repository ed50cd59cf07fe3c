"""Remote reads, zarrtok vs litdata: the same tokens in the same S3 bucket (a local moto server).

Run from the repository root with the peers environment (``bash benchmarks/peers_env.sh`` makes it)::

    .venv-peers/bin/python -m benchmarks.remote_peers             # ~120M tokens, 29 chunk objects of 8 MiB
    .venv-peers/bin/python -m benchmarks.remote_peers --quick     # ~3M tokens in 256K-token chunks (a smoke run)
    .venv-peers/bin/python -m benchmarks.remote_peers --tokens 30000000 --rounds 5 --json /tmp/rp.json

``benchmarks.remote`` measures zarrtok over S3 against zarr, a local copy and the link; this adds
litdata (0.2.76, ``StreamingDataset`` + ``TokensLoader``) reading the same tokens from the same
server. It reuses ``benchmarks.remote``'s pieces: the moto server in its own process behind the
request/byte-counting WSGI middleware, the corpus and store build, ``zarrtok.copy`` into the bucket
and the link-ceiling measurement.

Method
------
1. **Data, offline.** The corpus and byte-level BPE of ``benchmarks.random_access``
   (``vocab_size=4096``, ``uint16`` tokens), built locally with :func:`zarrtok.build` (default
   8 MiB = 4,194,304-token chunks; 262,144 with ``--quick``) and published with
   ``zarrtok.copy(local, "s3://zarrtok-bench/stores/bench")``.
2. **The same token stream for litdata.** ``np.asarray(store.tokens("train"))`` is dumped flat and
   written with litdata's ``optimize(fn, inputs, output_dir=<local>, chunk_size=C,
   item_loader=TokensLoader(), num_workers=1)`` in a **subprocess** (``optimize`` switches the
   process's multiprocessing start method to ``spawn``, which would make every later DataLoader
   spawn its workers). ``fn`` yields the stream in order in pieces of ``P`` tokens, ``P`` a divisor
   of ``C`` (65,536 for the default sizes), and ``C`` is zarrtok's chunk size in tokens
   (``TokensLoader`` counts ``chunk_size`` in tokens), so every litdata chunk object holds exactly the
   same 8 MiB of tokens as the zarrtok chunk object at the same position (plus litdata's few-hundred-
   byte header; the last one is shorter). The files (``chunk-0-<n>.bin``, ``index.json``) are
   uploaded with boto3 to ``s3://zarrtok-bench/litdata/``.
3. **Server.** ``benchmarks.remote.MotoServer``: moto's S3 app under werkzeug's threaded server in a
   separate process on 127.0.0.1, counting requests and response-body bytes; every "bytes" figure
   below is counted by the server. litdata talks to it through ``storage_options={"endpoint_url":
   ..., "aws_access_key_id": ..., ...}`` (its boto3 client: ``index.json``) and obstore (chunk
   downloads), which needs one monkeypatch to speak plain http: ``allow_http`` added to
   ``litdata.streaming.downloader._OBSTORE_CLIENT_OPTIONS`` (no option or environment variable
   reaches it; see ``benchmarks/PEERS.md``). ``LITDATA_DISABLE_VERSION_CHECK=1`` (no PyPI lookup).
   ``obstore`` is imported in the parent before the workers fork (an import only: obstore's runtime
   starts on first use, in each worker, as litdata intends), as zarrtok's s3fs is.
4. **(headline) One shuffled epoch through a DataLoader, cold cache**: batch 16 x ``seq_len`` 2048,
   ``num_workers=2`` (forked), a fresh cache directory per round in the temporary directory for
   both:

   * zarrtok: ``zarrtok.open(url, storage_options=..., reader_options={"mode": "cache",
     "cache_dir": fresh})`` then ``store.dataloader("train", 2048, 16, shuffle="chunk", seed=0,
     epoch=r, block_chunks=4, num_workers=2, remainder="partial")``, exactly the cold contender (b)
     of ``benchmarks.remote`` (batches are dicts of int64 ``input_ids`` / ``labels`` ``[16, 2048]``,
     views of one ``[16, 2049]`` buffer).
   * litdata: ``StreamingDataset(input_dir="s3://zarrtok-bench/litdata",
     item_loader=TokensLoader(block_size=2049), shuffle=True, seed=r, cache_dir=fresh,
     storage_options=...)`` and ``StreamingDataLoader(ds, batch_size=16, num_workers=2,
     collate_fn=lit_collate)`` (litdata's defaults otherwise, e.g. ``max_pre_download=2``).
     ``lit_collate`` runs in the workers and does what zarrtok's batch read does: it copies the 16
     ``uint16`` blocks into one preallocated ``[16, 2049]`` int64 array and returns
     ``(x[:, :-1], x[:, 1:])`` as torch views, so both loaders ship the same tensors per batch
     and pay comparable per-batch work.

   The dataset/store is opened before the clock starts (zarrtok reads its manifest, litdata its
   ``index.json``; their time is reported as ``open``); the timed part is ``iter(loader)`` (worker
   start-up included, as for any fresh iterator) to the last batch, GC off. The main loop does the
   same for both: per batch it copies the first 8 input tokens and the last label token of every
   row (a 9-token key per window) and one whole row (the spot check). Rounds are interleaved, the
   order rotating, after one untimed warm-up epoch each (its own cold cache); ``--rounds``
   (3; 1 quick). Reported per contender: median batches/s, tokens/s (= windows x 2048 / s),
   time to the first batch and the rate after it, CPU seconds of the main process and of the
   workers, server requests and bytes per epoch against the split's token bytes; the **ratio of
   tokens/s zarrtok / litdata (target >= 1.0x)** and zarrtok's **bytes per epoch / the split's
   token bytes (target <= 1.1x)**.

   Window counts differ: zarrtok's windows are ``(N - 1) // 2048`` windows of 2049 tokens at stride
   2048 over the whole stream (a window may span two chunks); litdata's ``TokensLoader`` windows are
   ``dims[c] // 2049`` blocks at stride 2049 inside each chunk ``c`` (each chunk's tail is dropped).
   Hence the headline is tokens/s, and both counts are reported.

   **Correctness, every round, outside the timing**: the multiset of 9-token keys of the epoch must
   equal the multiset of the keys of the contender's expected windows (zarrtok: starts ``i * 2048``
   for every window ``i``, i.e. each window served exactly once; litdata: starts ``tok0[c] + j *
   2049`` from ``index.json``'s chunk sizes), and each spot-checked row (one per batch) must equal
   the flat stream at a start with its key. Shapes and dtype (int64) are checked on every batch.
5. **Informational: single process, no DataLoader.** litdata iterating the remote dataset
   (``shuffle=False``, fresh cache directory, each block turned into the same int64
   ``(x[:-1], x[1:])`` pair) vs zarrtok reading windows in order with ``dataset[i]``: in
   ``"range"`` mode (one ranged GET per window; a prefix of the split sized to take about
   ``--round-seconds``) and in ``"cache"`` mode with a fresh ``cache_dir`` and read-ahead
   (``set_access_order(range(n), prefetch_now=True)``; the whole split). Windows/s, server bytes.
   These run after every DataLoader epoch: litdata's single-process iteration starts obstore's
   runtime in this process, after which litdata's forked workers would fall back to boto3.
6. **Informational: the link ceiling** (``benchmarks.remote.bench_link``): s3fs ``cat_file`` of every
   zarrtok chunk object one after the other, MB/s.

Notes: litdata's bytes per epoch can exceed its chunk objects by up to one chunk per extra worker:
``StreamingDataset`` divides an epoch's items between the workers by count
(``litdata.utilities.shuffle._associate_chunks_and_intervals_to_workers``), so the chunk holding the
boundary is downloaded by both workers (whether it happens, and which chunk, depends on the round's
shuffle). zarrtok's workers share one ``cache_dir`` and fetch every chunk once.

The client, its two workers and the moto server share the machine's cores. The script always exits
0; a missed target prints ``MISS``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from benchmarks import common
from benchmarks.common import (
    cpu_seconds,
    git_state,
    isolate_caches,
    local_only_network,
    machine_info,
    make_corpus,
    mb,
    print_conditions,
    rotated,
    run_in_workdir,
    summary,
    timed,
    write_report,
)
from benchmarks.peers import litdata as litpeer
from benchmarks.remote import (
    BATCH_SIZE,
    BLOCK_CHUNKS,
    BUCKET,
    NUM_WORKERS,
    PREFIX,
    QUICK_CHUNK,
    SEQ_LEN,
    TARGET_BYTES_RATIO,
    MotoServer,
    bench_link,
    build_local,
    chunk_objects,
    delta,
    publish,
)

LIT_PREFIX = "litdata"
BLOCK = SEQ_LEN + 1                   # litdata block = one (inputs, labels) window
MAX_PIECE = 1 << 16                   # optimize() items: at most this many tokens, a divisor of the chunk size
KEY_TOKENS = 8                        # a window's key: its first 8 tokens + its last one
TARGET_VS_LITDATA = 1.0               # zarrtok / litdata epoch tokens/s
QUICK_TOKENS = 3_000_000
FULL_TOKENS = 120_000_000
NAMES = ("zarrtok", "litdata")
DEFAULT_JSON = common.default_json("remote_peers")
# -- litdata: writing (in a subprocess: benchmarks.peers.litdata) -------------------------------------
def piece_size(chunk_tokens: int) -> int:
    """The largest divisor of ``chunk_tokens`` not above ``MAX_PIECE`` (so pieces fill chunks exactly)."""
    k = -(-chunk_tokens // MAX_PIECE)
    while chunk_tokens % k:
        k += 1
    return chunk_tokens // k


def upload_dir(opts: dict[str, Any], local_dir: str, prefix: str) -> tuple[int, float]:
    """Put every file of ``local_dir`` into ``s3://BUCKET/<prefix>/`` (one PUT each); (bytes, seconds)."""
    import boto3

    client = boto3.client("s3", aws_access_key_id=opts["key"], aws_secret_access_key=opts["secret"],
                          **opts["client_kwargs"])
    total = 0
    t0 = time.perf_counter()
    for name in sorted(os.listdir(local_dir)):
        path = os.path.join(local_dir, name)
        if os.path.isfile(path):
            with open(path, "rb") as f:
                body = f.read()
            client.put_object(Bucket=BUCKET, Key=f"{prefix}/{name}", Body=body)
            total += len(body)
    return total, time.perf_counter() - t0


# -- litdata: reading ----------------------------------------------------------------------------------
def lit_storage_options(server: MotoServer) -> dict[str, Any]:
    return litpeer.storage_options(server.url, server.storage_options())


# -- correctness ---------------------------------------------------------------------------------------
class EpochRecord:
    """What the main loop keeps of an epoch: every row's key, one whole row per batch."""

    def __init__(self) -> None:
        self.heads: list[torch.Tensor] = []
        self.tails: list[torch.Tensor] = []
        self.spots: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.batches = self.windows = 0
        self.first_batch = 0.0
        self.bad_shapes = 0

    def add(self, inputs: torch.Tensor, labels: torch.Tensor) -> None:
        n = inputs.shape[0]
        if inputs.dtype != torch.int64 or labels.dtype != torch.int64 or inputs.shape != (n, SEQ_LEN) \
                or labels.shape != inputs.shape or n > BATCH_SIZE:
            self.bad_shapes += 1
        self.heads.append(inputs[:, :KEY_TOKENS].clone())
        self.tails.append(labels[:, -1].clone())
        j = self.batches % n
        self.spots.append((inputs[j].clone(), labels[j, -1:].clone()))
        self.batches += 1
        self.windows += n


def window_keys(flat: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """``[n, KEY_TOKENS + 1]`` keys (first tokens, last token) of the windows starting at ``starts``."""
    keys = np.empty((len(starts), KEY_TOKENS + 1), dtype=np.int64)
    keys[:, :KEY_TOKENS] = flat[starts[:, None] + np.arange(KEY_TOKENS)]
    keys[:, KEY_TOKENS] = flat[starts + SEQ_LEN]
    return keys


def sorted_rows(a: np.ndarray) -> np.ndarray:
    return a[np.lexsort(a.T[::-1])]


class Expected:
    """A contender's expected windows: the sorted key multiset and key -> starts (for the spot check)."""

    def __init__(self, flat: np.ndarray, starts: np.ndarray):
        self.flat, self.starts = flat, starts
        keys = window_keys(flat, starts)
        self.sorted_keys = sorted_rows(keys)
        self.by_key: dict[bytes, list[int]] = {}
        for k, s in zip(keys, starts.tolist()):
            self.by_key.setdefault(k.tobytes(), []).append(s)

    def check(self, name: str, rec: EpochRecord) -> dict[str, Any]:
        if rec.bad_shapes:
            raise AssertionError(f"{name}: {rec.bad_shapes} batches with a wrong shape or dtype")
        keys = np.concatenate([torch.cat(rec.heads).numpy(), torch.cat(rec.tails).numpy()[:, None]], axis=1)
        if len(keys) != len(self.starts):
            raise AssertionError(f"{name}: {len(keys)} windows in the epoch, expected {len(self.starts)}")
        if not np.array_equal(sorted_rows(keys), self.sorted_keys):
            raise AssertionError(f"{name}: the epoch's windows are not its expected windows, each exactly once")
        for inputs, last in rec.spots:
            window = np.concatenate([inputs.numpy(), last.numpy()])
            cands = self.by_key.get(window[:KEY_TOKENS].tobytes() + window[-1:].tobytes(), [])
            if not any(np.array_equal(self.flat[s:s + BLOCK], window) for s in cands):
                raise AssertionError(f"{name}: a spot-checked window is not a window of the token stream")
        return {"windows": len(keys), "spot_checked": len(rec.spots), "each_window_once": True}


# -- the epoch -----------------------------------------------------------------------------------------
def run_epoch(loader: Any, pair: Callable[[Any], tuple[torch.Tensor, torch.Tensor]]) -> tuple[EpochRecord, float,
                                                                                               tuple[float, float]]:
    """One epoch from ``iter(loader)`` (worker start-up included) to its last batch, GC off:
    (record, seconds, (CPU seconds of this process, of the workers once they have exited))."""
    rec = EpochRecord()

    def consume() -> None:
        t0 = time.perf_counter()
        for batch in loader:
            inputs, labels = pair(batch)
            if rec.batches == 0:
                rec.first_batch = time.perf_counter() - t0
            rec.add(inputs, labels)

    cpu0 = cpu_seconds()
    _, sec = timed(consume)
    cpu1 = cpu_seconds()
    return rec, sec, (cpu1[0] - cpu0[0], cpu1[1] - cpu0[1])


def zarrtok_pair(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return batch["input_ids"], batch["labels"]


def lit_pair(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return batch[0], batch[1]


def bench_epochs(server: MotoServer, url: str, lit_url: str, workdir: str, expected: dict[str, Expected],
                 token_bytes: int, args: argparse.Namespace) -> dict[str, Any]:
    from litdata import StreamingDataLoader

    import zarrtok
    from zarrtok.read import clear_memory_caches

    opts, lopts = server.storage_options(), lit_storage_options(server)

    def open_loader(name: str, cache: str, r: int) -> tuple[Any, Callable]:
        if name == "zarrtok":
            clear_memory_caches()  # nothing from an earlier epoch in this process's chunk LRU
            store = zarrtok.open(url, storage_options=opts, reader_options={"mode": "cache", "cache_dir": cache})
            return store.dataloader("train", SEQ_LEN, BATCH_SIZE, shuffle="chunk", seed=0, epoch=r,
                                    block_chunks=BLOCK_CHUNKS, num_workers=NUM_WORKERS, remainder="partial"), zarrtok_pair
        ds = litpeer.tokens_dataset(lit_url, BLOCK, shuffle=True, seed=r, cache_dir=cache, storage_options=lopts)
        return StreamingDataLoader(ds, batch_size=BATCH_SIZE, num_workers=NUM_WORKERS,
                                   collate_fn=litpeer.collate_pairs), lit_pair

    def one(name: str, r: int, tag: str) -> dict[str, Any]:
        if litpeer.obstore_started_here():
            raise RuntimeError("obstore's runtime was started in this process: litdata's workers would use boto3")
        cache = os.path.join(workdir, f"cache-{name}-{tag}")
        before = server.stats()
        t0 = time.perf_counter()
        loader, pair = open_loader(name, cache, r)
        open_seconds = time.perf_counter() - t0
        rec, sec, cpu = run_epoch(loader, pair)
        traffic = delta(before, server.stats())
        del loader
        check = expected[name].check(name, rec)
        shutil.rmtree(cache, ignore_errors=True)
        return {"round": tag, "batches": rec.batches, "windows": rec.windows, "seconds": sec,
                "batches_per_s": rec.batches / sec, "tokens_per_s": rec.windows * SEQ_LEN / sec,
                "first_batch_seconds": rec.first_batch,
                "after_first_batch_per_s": (rec.batches - 1) / (sec - rec.first_batch) if rec.batches > 1 else None,
                "open_seconds": open_seconds, "cpu_main": cpu[0], "cpu_workers": cpu[1], "traffic": traffic,
                "bytes_ratio_to_token_bytes": traffic["bytes_out"] / token_bytes, "check": check}

    warmup = {name: one(name, 1000, "warmup") for name in NAMES}  # imports, page cache, code paths
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in NAMES}
    for r in range(args.rounds):
        for name in rotated(list(NAMES), r):
            rows[name].append(one(name, r, str(r)))
        print(f"  epoch round {r + 1}/{args.rounds}: " + ", ".join(
            f"{n} {rows[n][-1]['batches_per_s']:,.0f} batches/s ({rows[n][-1]['tokens_per_s'] / 1e6:.2f}M tokens/s, "
            f"{mb(rows[n][-1]['traffic']['bytes_out']):.1f} MB)" for n in NAMES), flush=True)

    def med(name: str, key: str) -> float:
        return statistics.median(row[key] for row in rows[name])

    per = {}
    for name in NAMES:
        per[name] = {
            "batches_per_epoch": rows[name][0]["batches"], "windows_per_epoch": rows[name][0]["windows"],
            "batches_per_s": summary([row["batches_per_s"] for row in rows[name]]),
            "tokens_per_s": summary([row["tokens_per_s"] for row in rows[name]]),
            "epoch_seconds": med(name, "seconds"), "first_batch_seconds": med(name, "first_batch_seconds"),
            "after_first_batch_per_s": statistics.median(
                row["after_first_batch_per_s"] for row in rows[name] if row["after_first_batch_per_s"]),
            "open_seconds": med(name, "open_seconds"),
            "cpu_seconds": {"main": med(name, "cpu_main"), "workers": med(name, "cpu_workers"),
                            "server": statistics.median(row["traffic"]["server_cpu_seconds"] for row in rows[name])},
            "requests_per_epoch": statistics.median(row["traffic"]["requests"] for row in rows[name]),
            "bytes_per_epoch": statistics.median(row["traffic"]["bytes_out"] for row in rows[name]),
        }
        per[name]["bytes_ratio_to_token_bytes"] = per[name]["bytes_per_epoch"] / token_bytes
        per[name]["MBps"] = mb(per[name]["bytes_per_epoch"]) / per[name]["epoch_seconds"]
    z, lt = per["zarrtok"], per["litdata"]
    return {
        "rounds": rows, "warmup": warmup, "summary": per,
        "ratio_tokens_per_s": z["tokens_per_s"]["median"] / lt["tokens_per_s"]["median"],
        "paired_ratio_tokens_per_s": statistics.median(
            a["tokens_per_s"] / b["tokens_per_s"] for a, b in zip(rows["zarrtok"], rows["litdata"])),
        "ratio_batches_per_s": z["batches_per_s"]["median"] / lt["batches_per_s"]["median"],
    }


# -- informational: single process ---------------------------------------------------------------------
def bench_single(server: MotoServer, url: str, lit_url: str, workdir: str, flat: np.ndarray, lit_starts: np.ndarray,
                 args: argparse.Namespace) -> dict[str, Any]:
    import zarrtok
    from zarrtok.read import clear_memory_caches

    opts, lopts = server.storage_options(), lit_storage_options(server)
    range_ds = zarrtok.open(url, storage_options=opts, reader_options={"mode": "range"}).dataset("train", SEQ_LEN)
    n_all = len(range_ds)
    # the range-mode prefix: as many windows as take about --round-seconds
    n = 16
    while True:
        _, sec = timed(lambda n=n: [range_ds[i] for i in range(n)])
        if sec >= 0.2 * args.round_seconds or n >= n_all:
            break
        n = min(n_all, n * 4)
    n_range = max(16, min(n_all, int(n * args.round_seconds / sec)))

    def zarrtok_range(tag: str) -> tuple[int, Any]:
        return n_range, (range_ds[i] for i in range(n_range))

    def zarrtok_cache(tag: str) -> tuple[int, Any]:
        clear_memory_caches()
        store = zarrtok.open(url, storage_options=opts,
                             reader_options={"mode": "cache", "cache_dir": os.path.join(workdir, f"single-z-{tag}")})
        ds = store.dataset("train", SEQ_LEN)
        ds.set_access_order(range(len(ds)), prefetch_now=True)
        return len(ds), (ds[i] for i in range(len(ds)))

    def litdata_iter(tag: str) -> tuple[int, Any]:
        ds = litpeer.tokens_dataset(lit_url, BLOCK, shuffle=False, cache_dir=os.path.join(workdir, f"single-l-{tag}"),
                                    storage_options=lopts)
        return len(ds), (litpeer.to_pair(block) for block in ds)  # the same int64 (inputs, labels) pair per window

    def consume(windows: Any, keep: set[int]) -> tuple[int, dict[int, Any]]:
        n, kept = 0, {}
        for w in windows:
            if n in keep:
                kept[n] = w
            n += 1
        return n, kept

    contenders = {"zarrtok_range_sequential": zarrtok_range, "zarrtok_cache_sequential": zarrtok_cache,
                  "litdata_iterated": litdata_iter}
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in contenders}
    for r in range(args.rounds):
        for name in list(contenders):  # fixed order: litdata last (it starts obstore's runtime here)
            before = server.stats()
            count, windows = contenders[name](str(r))
            keep = {0, count // 2, count - 1}
            (got, kept), sec = timed(lambda w=windows, k=keep: consume(w, k))
            traffic = delta(before, server.stats())
            if got != count:
                raise AssertionError(f"{name}: {got} windows, expected {count}")
            # spot check: the first, middle and last window against the flat stream
            starts = lit_starts if name == "litdata_iterated" else np.arange(count, dtype=np.int64) * SEQ_LEN
            for i in sorted(keep):
                x = torch.from_numpy(flat[starts[i]:starts[i] + BLOCK].astype(np.int64))
                if not (torch.equal(kept[i][0], x[:-1]) and torch.equal(kept[i][1], x[1:])):
                    raise AssertionError(f"{name}: window {i} differs from the token stream")
            rows[name].append({"windows": count, "seconds": sec, "windows_per_s": count / sec,
                               "traffic": traffic})
        for tag in (f"single-z-{r}", f"single-l-{r}"):
            shutil.rmtree(os.path.join(workdir, tag), ignore_errors=True)
    return {"rounds": rows,
            "summary": {name: {"windows": rows[name][0]["windows"],
                               "windows_per_s": summary([row["windows_per_s"] for row in rows[name]]),
                               "bytes": statistics.median(row["traffic"]["bytes_out"] for row in rows[name]),
                               "requests": statistics.median(row["traffic"]["requests"] for row in rows[name])}
                        for name in rows}}


# -- the benchmark -------------------------------------------------------------------------------------
def run(args: argparse.Namespace, workdir: str) -> dict[str, Any]:
    isolate_caches(workdir)
    local_only_network()  # only ever talk to 127.0.0.1
    os.environ["LITDATA_DISABLE_VERSION_CHECK"] = "1"  # no PyPI lookup from StreamingDataset
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    import moto
    import obstore.store  # noqa: F401  (imported before the workers fork; its runtime starts on first use)
    import s3fs

    import zarrtok  # after isolate_caches

    litpeer.patch_for_http()
    t_start = time.perf_counter()
    load_before = os.getloadavg()
    contention = common.Contention()
    print(f"workdir {workdir}; target {args.tokens:,} tokens", flush=True)
    data_path, tok_dir, corpus = make_corpus(workdir, args.tokens)
    local_path = os.path.join(workdir, "store-local")
    store_local, build_seconds = build_local(data_path, tok_dir, local_path, args.chunk_size)
    info = store_local.info()["splits"]["train"]
    readers = store_local.tokens("train").readers
    chunk_size = readers[0].chunk_size
    flat = np.asarray(store_local.tokens("train"))
    assert len(flat) == info["tokens"] and flat.dtype == np.uint16, (len(flat), info["tokens"], flat.dtype)
    token_bytes = flat.nbytes
    print(f"corpus {corpus['documents']:,} documents ({corpus['seconds']:.1f}s); zarrtok store: {len(flat):,} tokens, "
          f"{info['chunks']} chunk(s) of {chunk_size:,} tokens, {len(readers)} shard(s) ({build_seconds:.1f}s)",
          flush=True)

    raw_path = os.path.join(workdir, "train.bin")
    flat.tofile(raw_path)
    lit_out = os.path.join(workdir, "litdata")
    # one input per chunk, in pieces that fill the chunks exactly
    lit_seconds = litpeer.optimize_flat_in_subprocess(raw_path, flat.dtype, len(flat), lit_out, chunk_tokens=chunk_size,
                                                      input_tokens=chunk_size, piece_tokens=piece_size(chunk_size))
    layout = litpeer.layout(lit_out, BLOCK)
    if sum(layout["dims"]) != len(flat):
        raise AssertionError(f"litdata holds {sum(layout['dims'])} tokens, the store {len(flat)}")
    print(f"litdata optimize: {lit_seconds:.1f}s, {len(layout['dims'])} chunks of {max(layout['dims']):,} tokens "
          f"(pieces of {piece_size(chunk_size):,})", flush=True)

    zt_starts = np.arange(len(store_local.dataset("train", SEQ_LEN)), dtype=np.int64) * SEQ_LEN
    expected = {"zarrtok": Expected(flat, zt_starts), "litdata": Expected(flat, layout["starts"])}

    with MotoServer(workdir) as server:
        opts = server.storage_options()
        url = f"s3://{BUCKET}/{PREFIX}"
        lit_url = f"s3://{BUCKET}/{LIT_PREFIX}"
        publish_seconds = publish(local_path, url, opts)
        lit_bytes, lit_upload_seconds = upload_dir(opts, lit_out, LIT_PREFIX)
        fs = s3fs.S3FileSystem(**opts, skip_instance_cache=True)
        objects = chunk_objects(fs, zarrtok.open(url, storage_options=opts))
        stored = sum(s for _, s in objects)
        lit_chunk_bytes = sum(fs.info(f"{BUCKET}/{LIT_PREFIX}/{f}")["size"] for f in layout["files"])
        print(f"server {server.url}; zarrtok.copy {publish_seconds:.1f}s ({mb(stored):.1f} MB of chunk objects), "
              f"litdata upload {lit_upload_seconds:.1f}s ({mb(lit_chunk_bytes):.1f} MB of chunk objects)", flush=True)

        link = bench_link(server, objects, args.link_rounds)
        print(f"link ceiling: {link['sequential']['median']:,.0f} MB/s sequential", flush=True)
        epochs = bench_epochs(server, url, lit_url, workdir, expected, token_bytes, args)
        print(f"epoch: zarrtok/litdata tokens/s {epochs['ratio_tokens_per_s']:.2f}x", flush=True)
        single = bench_single(server, url, lit_url, workdir, flat, layout["starts"], args)
        server_totals = server.stats()
    contended = contention.stop()

    es = epochs["summary"]
    cond = {"tokens": len(flat), "chunk_size": chunk_size, "seq_len": SEQ_LEN, "batch_size": BATCH_SIZE,
            "num_workers": NUM_WORKERS, "rounds": args.rounds, "contention": contended}
    rows = [
        common.row("remote_peers", "cold S3 epoch tokens/s, zarrtok vs litdata (same bucket)",
                   epochs["ratio_tokens_per_s"], reference="litdata", target=f">= {TARGET_VS_LITDATA:g}x",
                   ok=epochs["ratio_tokens_per_s"] >= TARGET_VS_LITDATA, conditions=cond),
        common.row("remote_peers", "zarrtok bytes per epoch vs the split's token bytes",
                   es["zarrtok"]["bytes_ratio_to_token_bytes"], reference="the split's token bytes",
                   target=f"<= {TARGET_BYTES_RATIO:g}x",
                   ok=es["zarrtok"]["bytes_ratio_to_token_bytes"] <= TARGET_BYTES_RATIO, conditions=cond),
        common.row("remote_peers", "litdata bytes per epoch vs the split's token bytes (info)",
                   es["litdata"]["bytes_ratio_to_token_bytes"], reference="the split's token bytes", conditions=cond),
    ]
    return {
        "benchmark": "remote_peers",
        "rows": rows,
        "command": common.command_line("remote_peers", ".venv-peers/bin/python"),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "git": git_state(),
        "machine_info": {**machine_info(), "load_average_before": load_before, "litdata": litpeer.version(),
                         "s3fs": s3fs.__version__, "moto": moto.__version__,
                         "mp_start_method": __import__("multiprocessing").get_start_method()},
        "contention": contended,
        "settings": {"tokens_target": args.tokens, "chunk_size": chunk_size, "seq_len": SEQ_LEN,
                     "batch_size": BATCH_SIZE, "num_workers": NUM_WORKERS, "block_chunks": BLOCK_CHUNKS,
                     "rounds": args.rounds, "round_seconds": args.round_seconds, "link_rounds": args.link_rounds,
                     "litdata_chunk_size_tokens": chunk_size, "litdata_piece_tokens": piece_size(chunk_size),
                     "litdata_block_size": BLOCK, "key_tokens": KEY_TOKENS},
        "corpus": corpus,
        "data": {"tokens": len(flat), "documents": info["documents"], "token_bytes": token_bytes,
                 "zarrtok": {"chunks": info["chunks"], "chunk_size": chunk_size, "shards": len(readers),
                             "stored_bytes": stored, "windows": len(zt_starts), "build_seconds": build_seconds,
                             "publish_seconds": publish_seconds},
                 "litdata": {"chunks": len(layout["dims"]), "chunk_tokens": layout["dims"],
                             "stored_bytes": lit_chunk_bytes, "uploaded_bytes": lit_bytes,
                             "windows": len(layout["starts"]),
                             "tokens_in_windows": len(layout["starts"]) * BLOCK,
                             "optimize_seconds": lit_seconds, "upload_seconds": lit_upload_seconds}},
        "summary": {
            "tokens_per_s": {n: es[n]["tokens_per_s"]["median"] for n in NAMES},
            "batches_per_s": {n: es[n]["batches_per_s"]["median"] for n in NAMES},
            "ratio_tokens_per_s": epochs["ratio_tokens_per_s"],
            "paired_ratio_tokens_per_s": epochs["paired_ratio_tokens_per_s"],
            "windows_per_epoch": {n: es[n]["windows_per_epoch"] for n in NAMES},
            "bytes_per_epoch": {n: es[n]["bytes_per_epoch"] for n in NAMES},
            "bytes_ratio_to_token_bytes": {n: es[n]["bytes_ratio_to_token_bytes"] for n in NAMES},
            "first_batch_seconds": {n: es[n]["first_batch_seconds"] for n in NAMES},
            "single_process_windows_per_s": {n: v["windows_per_s"]["median"] for n, v in single["summary"].items()},
            "link_ceiling_MBps": link["sequential"]["median"],
        },
        "link": link,
        "epoch": epochs,
        "single_process": single,
        "server_totals": server_totals,
        "total_seconds": time.perf_counter() - t_start,
    }


def print_report(rep: dict[str, Any]) -> list[str]:
    m, d, ep, sp = rep["machine_info"], rep["data"], rep["epoch"], rep["single_process"]
    dirty = " (zarrtok/ modified)" if rep["git"]["zarrtok_dirty"] else ""
    common.print_machine(m, (
          f"torch {m['torch']}, numpy {m['numpy']}, zarrtok {m['zarrtok']}, litdata {m['litdata']}, "
          f"s3fs {m['s3fs']}, moto {m['moto']}; commit {rep['git']['commit'][:10]}{dirty}; workers: "
          f"{m['mp_start_method']}"))
    z, lt = d["zarrtok"], d["litdata"]
    print(f"data: {d['tokens']:,} train tokens ({mb(d['token_bytes']):.1f} MB); zarrtok {z['chunks']} chunk objects "
          f"of {z['chunk_size']:,} tokens ({mb(z['stored_bytes']):.1f} MB), {z['windows']:,} windows of 2049 at "
          f"stride 2048; litdata {lt['chunks']} chunk objects ({mb(lt['stored_bytes']):.1f} MB), {lt['windows']:,} "
          f"blocks of 2049 (each chunk's tail dropped: {d['tokens'] - lt['tokens_in_windows']:,} tokens unused)")
    print(f"link ceiling (s3fs cat_file, sequential): {rep['link']['sequential']['median']:,.0f} MB/s")

    es = ep["summary"]
    n_rounds = len(ep["rounds"]["zarrtok"])
    print(f"\nShuffled epoch, batch {BATCH_SIZE} x {SEQ_LEN}, {NUM_WORKERS} workers, cold cache_dir, "
          f"median of {n_rounds} interleaved round(s)")
    head = ("contender", "batches/s", "tokens/s", "epoch s", "1st batch s", "after 1st/s", "windows",
            "MB sent", "x token bytes", "requests", "CPU main+workers+server", "noise")
    table = [head]
    for name in NAMES:
        s = es[name]
        table.append((name, f"{s['batches_per_s']['median']:,.1f}", f"{s['tokens_per_s']['median'] / 1e6:.2f}M",
                      f"{s['epoch_seconds']:.2f}", f"{s['first_batch_seconds']:.3f}",
                      f"{s['after_first_batch_per_s']:,.0f}", f"{s['windows_per_epoch']:,}",
                      f"{mb(s['bytes_per_epoch']):.1f}", f"{s['bytes_ratio_to_token_bytes']:.3f}x",
                      f"{s['requests_per_epoch']:.0f}",
                      "{main:.2f}+{workers:.2f}+{server:.2f}".format(**s["cpu_seconds"]),
                      f"{s['tokens_per_s']['spread']:.0%}"))
    widths = [max(len(r[i]) for r in table) for i in range(len(head))]
    for i, row in enumerate(table):
        print("  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(row, widths))))
        if i == 0:
            print("-" * (sum(widths) + 2 * len(widths)))
    print(f"zarrtok / litdata: tokens/s {ep['ratio_tokens_per_s']:.2f}x (median of per-round ratios "
          f"{ep['paired_ratio_tokens_per_s']:.2f}x), batches/s {ep['ratio_batches_per_s']:.2f}x; open (untimed) "
          f"zarrtok {es['zarrtok']['open_seconds']:.3f}s, litdata {es['litdata']['open_seconds']:.3f}s")
    print("checks: every round, each contender's epoch held exactly its expected windows once (9-token keys) and "
          "every spot-checked window (one per batch) is a slice of the token stream")

    print(f"\nInformational, single process (median of {len(next(iter(sp['rounds'].values())))} round(s)):")
    for name, s in sp["summary"].items():
        print(f"  {name:<26} {s['windows_per_s']['median']:>10,.0f} windows/s  ({s['windows']:,} windows, "
              f"{mb(s['bytes']):.1f} MB, {s['requests']:.0f} requests)")

    print("\nmeasure                                                      value    target   result")
    print("-" * 88)
    for t in rep["rows"]:
        print(f"{t['measure']:<58} {t['value']:>8.3f}x  {t['target'] or 'info':>7}   {t['result'] or ''}")
    return [t["measure"] for t in rep["rows"] if t["result"] == common.MISS]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.remote_peers", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help=f"~{QUICK_TOKENS / 1e6:g}M tokens in 256K-token chunks, 1 round")
    p.add_argument("--tokens", type=int, default=None,
                   help=f"corpus size in tokens (default {FULL_TOKENS / 1e6:g}M; {QUICK_TOKENS / 1e6:g}M with --quick)")
    p.add_argument("--chunk-size", type=int, default=None,
                   help=f"tokens per chunk, both libraries (default zarrtok's 8 MiB; {QUICK_CHUNK:,} with --quick)")
    p.add_argument("--rounds", type=int, default=None, help="epochs per contender (default 3; 1 with --quick)")
    p.add_argument("--round-seconds", type=float, default=None,
                   help="length of the range-mode single-process round (default 2; 0.5 quick)")
    p.add_argument("--link-rounds", type=int, default=None, help="link-ceiling rounds (default 3; 1 quick)")
    p.add_argument("--json", default=DEFAULT_JSON, help=f"where to write the results (default {DEFAULT_JSON})")
    p.add_argument("--workdir", default=None, help="keep data here instead of a temporary directory")
    args = p.parse_args(argv)
    args.tokens = args.tokens or (QUICK_TOKENS if args.quick else FULL_TOKENS)
    if args.chunk_size is None and args.quick:
        args.chunk_size = QUICK_CHUNK
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.round_seconds = args.round_seconds or (0.5 if args.quick else 2.0)
    args.link_rounds = args.link_rounds or (1 if args.quick else 3)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    report = run_in_workdir(run, args, "zarrtok-remote-peers-")
    missed = print_report(report)
    print_conditions(report["machine_info"], report["contention"])
    print("\nMISS: " + "; ".join(missed) if missed else "\nall targets met")
    write_report(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Local read: zarrtok vs a raw ``np.memmap``, Archai's ``FastHfDataset`` and litdata, over the same tokens.

Run from the repository root with the peers environment (``bash benchmarks/peers_env.sh`` makes it)::

    .venv-peers/bin/python -m benchmarks.local_read            # ~50M tokens (default)
    .venv-peers/bin/python -m benchmarks.local_read --quick    # ~3M tokens, a smoke run
    .venv-peers/bin/python -m benchmarks.local_read --tokens 200000000 --workdir /tmp/lr

Method
------
1. **Data.** One corpus and one tokenizer from :func:`benchmarks.random_access.make_corpus` (synthetic
   documents, byte-level BPE, vocab 4096, so tokens are ``uint16``), built once with ``zarrtok.build``
   (``validation_split=0.0``: every document in ``train``).
2. **The same token stream for everyone.** The store's train tokens are dumped flat (``train.bin``
   and ``train.npy``). Contenders:

   * ``raw_memmap`` (the limit): ``np.memmap(train.bin)``, item = Archai's code
     ``x = torch.from_numpy(a[i*L:i*L+L+1].astype(np.int64)); return x[:-1], x[1:]``.
   * ``zarrtok``: ``store.dataset("train", L)``; DataLoader: ``store.dataloader("train", L, 16,
     num_workers=2)`` (``zarrtok_loader``) and a plain ``DataLoader(store.dataset(...), batch_size=16,
     shuffle=True, num_workers=2, collate_fn=zarrtok.collate_windows)`` (``zarrtok_plain``).
   * ``archai``: ``archai...FastHfDataset(np.load("train.npy", mmap_mode="r"), L)`` — Archai's own
     dataset class over the zarrtok dump, exactly what ``FastHfDatasetProvider.get_train_dataset``
     does with its own ``train.npy``. Archai's own cache is also built with
     ``FastHfDatasetProvider.from_hub`` (subprocess, fresh ``HF_DATASETS_CACHE``) on the same JSONL
     and tokenizer: its tokens are checked to be the same multiset as zarrtok's (it carves a shuffled
     90/7.5/2.5 % document split, so its ``train.npy`` is a different stream) and its own train
     dataset is timed as the informational ``archai_own``.
   * ``litdata``: ``optimize()`` with ``TokensLoader()`` over the flat dump, yielded in pieces of
     ``1000 * (L+1)`` tokens with ``chunk_size=8012 * (L+1)`` (litdata's README value), one worker, so
     chunks hold whole ``L+1`` blocks in stream order; ``StreamingDataset(item_loader=
     TokensLoader(block_size=L+1), transform=to_pair)`` where ``to_pair`` turns the ``uint16`` block
     into the same ``(x[:-1], x[1:])`` int64 tensors. DataLoader: litdata's own
     ``StreamingDataLoader(StreamingDataset(..., shuffle=True), batch_size=16, num_workers=2)``
     (shuffle is a dataset option there; a plain DataLoader cannot shuffle an IterableDataset).
     litdata's window grid is stride ``L+1`` (no shared boundary token) and never crosses a chunk,
     so its window ``i`` is not the others' window ``i``: it is checked against the flat stream at
     its own offset instead.

3. **Checks before timing.** zarrtok, archai and raw_memmap return identical tensors for 200
   indices; every litdata window equals the flat stream at its computed offset (chunk boundaries
   from ``index.json``).
4. **(a) Random single windows**, ``L=2048``: the same uniform random indices (below the smallest
   length) for all, single process, warm-up pass, ``--rounds`` interleaved rounds with the order
   rotating, GC off; median windows/s (the machinery of ``benchmarks.random_access``).
   Informational: litdata iterated (``for item in StreamingDataset(shuffle=True)``).
5. **(b) DataLoader**, batch 16, ``L=2048``, ``num_workers=2``, shuffle: one round = one whole epoch
   from ``iter(loader)`` (worker start-up included) to the last batch; rounds interleaved, order
   rotating; median batches/s. Also reported: the steady-state rate after the first 20 batches.

Targets: zarrtok >= 0.9x raw_memmap for single windows; zarrtok's DataLoader >= 1.5x archai and
>= 1.5x litdata. The script always exits 0; a missed target prints ``MISS``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from benchmarks import common
from benchmarks.common import (
    compare,
    isolate_caches,
    machine_info,
    make_corpus,
    print_load,
    run_in_workdir,
    write_report,
)
from benchmarks.peers import archai
from benchmarks.peers import litdata as litpeer
from benchmarks.peers.nanogpt import MemmapWindows

SEQ_LEN = 2048
BATCH_SIZE = 16
NUM_WORKERS = 2
SEED = 4321
LIT_PIECE_BLOCKS = 1000          # optimize() items: 1000 blocks of L+1 tokens
LIT_CHUNK_BLOCKS = 8012          # chunk_size = 8012 * (L+1) tokens, as in litdata's README
TARGET_SINGLE = 0.9              # zarrtok / raw_memmap, single windows
TARGET_LOADER = 1.5              # zarrtok DataLoader / archai and / litdata
WARMUP_BATCHES = 20
DEFAULT_JSON = common.default_json("local_read")


# -- picklable helpers (litdata workers, DataLoader workers) ------------------------------------------
# -- construction -----------------------------------------------------------------------------------
def lit_dataset(out: str, *, shuffle: bool = False):
    """litdata's view of the same tokens: blocks of ``L+1``, as ``(inputs, labels)`` pairs."""
    return litpeer.tokens_dataset(out, SEQ_LEN + 1, shuffle=shuffle, transform=litpeer.to_pair)


# -- checks -----------------------------------------------------------------------------------------
def check_windows(ref: MemmapWindows, others: dict[str, Any], lit: Any, flat: np.ndarray, lit_out: str,
                  indices: Sequence[int]) -> dict[str, Any]:
    for i in indices[:200]:
        a, b = ref[i]
        for name, ds in others.items():
            c, d = ds[i]
            if not (torch.equal(a, c) and torch.equal(b, d) and c.dtype == torch.int64):
                raise AssertionError(f"window {i}: {name} differs from raw_memmap")
    win0, tok0 = litpeer.chunk_starts(lit_out, SEQ_LEN + 1)
    assert len(lit) == int(win0[-1]), (len(lit), win0[-1])
    rng = np.random.default_rng(SEED + 1)
    probe = sorted(set(rng.integers(0, len(lit), size=200).tolist()) | {0, len(lit) - 1}
                   | {int(w) for w in win0[1:-1]} | {int(w) - 1 for w in win0[1:-1]})
    for i in probe:
        c = int(np.searchsorted(win0, i, side="right") - 1)
        start = int(tok0[c] + (i - win0[c]) * (SEQ_LEN + 1))
        x = torch.from_numpy(flat[start:start + SEQ_LEN + 1].astype(np.int64))
        c_in, c_lab = lit[i]
        if not (torch.equal(c_in, x[:-1]) and torch.equal(c_lab, x[1:]) and c_in.dtype == torch.int64):
            raise AssertionError(f"litdata window {i} differs from the flat stream at offset {start}")
    aligned = bool(np.all(tok0[:-1] % (SEQ_LEN + 1) == 0))
    return {"checked_indices": 200, "litdata_checked": len(probe), "litdata_chunks": len(win0) - 1,
            "litdata_chunk_starts_aligned": aligned,
            "litdata_tokens_covered": int(win0[-1]) * (SEQ_LEN + 1), "tokens": len(flat)}


# -- DataLoader timing -------------------------------------------------------------------------------
def time_epoch(make_iter: Callable[[], Any]) -> dict[str, float]:
    t0 = time.perf_counter()
    n = 0
    t_warm = None
    for _ in make_iter():
        n += 1
        if n == WARMUP_BATCHES:
            t_warm = time.perf_counter()
    t1 = time.perf_counter()
    steady = (n - WARMUP_BATCHES) / (t1 - t_warm) if t_warm and n > WARMUP_BATCHES else float("nan")
    return {"batches": n, "seconds": t1 - t0, "rate": n / (t1 - t0), "steady_rate": steady}


def compare_loaders(loaders: dict[str, Callable[[], Any]], rounds: int) -> dict[str, Any]:
    names = list(loaders)
    for name in names:  # warm-up epoch each
        time_epoch(loaders[name])
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    for r in range(rounds):
        for name in common.rotated(names, r):
            runs[name].append(time_epoch(loaders[name]))
        print(f"  loader round {r + 1}/{rounds}: " + ", ".join(
            f"{n} {runs[n][-1]['rate']:.0f}" for n in names), flush=True)
    out = {}
    for name, rs in runs.items():
        rates = [x["rate"] for x in rs]
        out[name] = {"rounds": rs, "median": statistics.median(rates),
                     "steady_median": statistics.median(x["steady_rate"] for x in rs),
                     "spread": (max(rates) - min(rates)) / statistics.median(rates),
                     "batches_per_epoch": rs[0]["batches"]}
    return out


# -- the benchmark -----------------------------------------------------------------------------------
def run(args: argparse.Namespace, workdir: str) -> dict[str, Any]:
    isolate_caches(workdir)
    import datasets
    datasets.disable_progress_bars()
    from litdata import StreamingDataLoader
    from torch.utils.data import DataLoader

    import zarrtok

    # archai's logger opens "archai.log" in the current directory when imported: in workdir
    FastHfDatasetProvider, FastHfDataset = archai.import_classes(workdir)

    t_start = time.perf_counter()
    load_before = common.load_average()
    print(f"workdir {workdir}; target {args.tokens:,} tokens", flush=True)
    data_path, tok_dir, corpus = make_corpus(workdir, args.tokens)
    print(f"corpus: {corpus['documents']:,} documents, {corpus['jsonl_bytes'] / 2**20:.0f} MiB JSONL", flush=True)

    t0 = time.perf_counter()
    store = zarrtok.build("json", data_files=data_path, tokenizer_name=tok_dir, output=os.path.join(workdir, "store"),
                          validation_split=0.0, num_workers=2, progress=False, overwrite="changed")
    build_s = time.perf_counter() - t0
    flat = np.asarray(store.tokens("train"))
    dtype = store.dtype
    raw_path, npy_path = os.path.join(workdir, "train.bin"), os.path.join(workdir, "train.npy")
    flat.tofile(raw_path)
    np.save(npy_path, flat)
    print(f"zarrtok store: {len(flat):,} tokens {dtype} ({build_s:.1f}s)", flush=True)

    lit_out = os.path.join(workdir, "litdata")
    block = SEQ_LEN + 1  # in a subprocess: optimize() would make every later DataLoader spawn its workers
    lit_s = litpeer.optimize_flat_in_subprocess(
        raw_path, dtype, len(flat), lit_out, chunk_tokens=LIT_CHUNK_BLOCKS * block,
        input_tokens=8 * LIT_PIECE_BLOCKS * block,  # one input = 8 pieces; the order of inputs is the stream order
        piece_tokens=LIT_PIECE_BLOCKS * block)
    print(f"litdata optimize: {lit_s:.1f}s", flush=True)

    archai_info = archai.build_cache_in_subprocess(workdir, data_path, tok_dir)
    own = FastHfDatasetProvider.from_cache(archai_info["cache_dir"])
    own_tokens = [np.load(getattr(own, f"{s}_file"), mmap_mode="r") for s in ("train", "validation", "test")]
    counts = sum(np.bincount(np.asarray(t), minlength=65536) for t in own_tokens)
    archai_info.update({
        "split_tokens": [len(t) for t in own_tokens],
        "same_token_multiset_as_zarrtok": bool(np.array_equal(counts, np.bincount(flat, minlength=65536))),
    })
    print(f"archai from_hub: {archai_info['seconds']:.1f}s, splits {archai_info['split_tokens']}, "
          f"same token multiset as zarrtok: {archai_info['same_token_multiset_as_zarrtok']}", flush=True)

    # -- contenders -----------------------------------------------------------------------------------
    ref = MemmapWindows(raw_path, dtype, SEQ_LEN)
    zt = store.dataset("train", SEQ_LEN)
    ar = FastHfDataset(np.load(npy_path, mmap_mode="r"), seq_len=SEQ_LEN)
    ar_own = own.get_train_dataset(seq_len=SEQ_LEN)
    lit = lit_dataset(lit_out)
    assert len(zt) == len(ref) == len(ar), (len(zt), len(ref), len(ar))
    checks = check_windows(ref, {"zarrtok": zt, "archai": ar}, lit, flat, lit_out,
                           np.random.default_rng(SEED).integers(0, len(ref), size=200).tolist())
    print(f"checks passed: {checks}", flush=True)
    # every page of every file in the page cache
    for path in (raw_path, npy_path):
        int(np.memmap(path, dtype=np.uint8, mode="r").sum(dtype=np.uint64))
    for t in own_tokens:
        int(np.asarray(t).sum(dtype=np.uint64))
    for name in os.listdir(lit_out):
        int(np.memmap(os.path.join(lit_out, name), dtype=np.uint8, mode="r").sum(dtype=np.uint64))

    # -- (a) random single windows --------------------------------------------------------------------
    n_idx = min(len(ref), len(lit), len(ar_own))
    indices = np.random.default_rng(SEED).integers(0, n_idx, size=args.windows).tolist()
    single = compare({"reference": ref.__getitem__, "zarrtok": zt.__getitem__, "archai": ar.__getitem__,
                      "litdata": lit.__getitem__, "archai_own": ar_own.__getitem__},
                     indices, rounds=args.rounds, unit="window").to_json()
    for key in ("rates", "median", "spread", "ratio_to_reference"):  # "reference" is raw_memmap
        single[key] = {("raw_memmap" if k == "reference" else k): v for k, v in single[key].items()}
    print("random windows/s: " + ", ".join(f"{k} {v:,.0f}" for k, v in single["median"].items()), flush=True)

    lit_iter_rates = []
    for _ in range(3):
        it_ds = lit_dataset(lit_out, shuffle=True)
        t0 = time.perf_counter()
        n = sum(1 for _ in it_ds)
        lit_iter_rates.append(n / (time.perf_counter() - t0))
    lit_iter = {"rates": lit_iter_rates, "median": statistics.median(lit_iter_rates), "windows": n}
    print(f"litdata iterated (shuffle=True, one epoch): {lit_iter['median']:,.0f} windows/s", flush=True)

    # -- (b) DataLoader -------------------------------------------------------------------------------
    zt_loader = store.dataloader("train", SEQ_LEN, BATCH_SIZE, num_workers=NUM_WORKERS)
    zt_plain = DataLoader(store.dataset("train", SEQ_LEN), batch_size=BATCH_SIZE, shuffle=True,
                          num_workers=NUM_WORKERS, collate_fn=zarrtok.collate_windows)
    ref_loader = DataLoader(ref, batch_size=BATCH_SIZE, shuffle=True, num_workers=NUM_WORKERS)
    ar_loader = DataLoader(ar, batch_size=BATCH_SIZE, shuffle=True, num_workers=NUM_WORKERS)
    lit_loader = StreamingDataLoader(lit_dataset(lit_out, shuffle=True), batch_size=BATCH_SIZE,
                                     num_workers=NUM_WORKERS)
    b_zt, b_ref = next(iter(zt_loader)), next(iter(ref_loader))
    b_lit = next(iter(lit_loader))
    assert b_zt["input_ids"].shape == b_ref[0].shape == b_lit[0].shape == (BATCH_SIZE, SEQ_LEN)
    assert b_zt["input_ids"].dtype == b_ref[0].dtype == b_lit[0].dtype == torch.int64
    loaders = {"raw_memmap": lambda: iter(ref_loader), "zarrtok_loader": lambda: iter(zt_loader),
               "zarrtok_plain": lambda: iter(zt_plain), "archai": lambda: iter(ar_loader),
               "litdata": lambda: iter(lit_loader)}
    loader_results = compare_loaders(loaders, args.loader_rounds)

    single_ratio = single["ratio_to_reference"]["zarrtok"]
    cond = {"tokens": len(flat), "seq_len": SEQ_LEN, "batch_size": BATCH_SIZE, "num_workers": NUM_WORKERS}
    rows = [common.row("local_read", "(a) random windows/s, zarrtok vs raw np.memmap", single_ratio,
                       reference="raw np.memmap", target=f">= {TARGET_SINGLE}x", ok=single_ratio >= TARGET_SINGLE,
                       conditions={**cond, "rounds": args.rounds})]
    for z in ("zarrtok_loader", "zarrtok_plain"):
        for peer in ("archai", "litdata"):
            ratio = loader_results[z]["median"] / loader_results[peer]["median"]
            rows.append(common.row("local_read", f"(b) DataLoader batches/s, {z} vs {peer}", ratio, reference=peer,
                                   target=f">= {TARGET_LOADER}x", ok=ratio >= TARGET_LOADER,
                                   conditions={**cond, "rounds": args.loader_rounds}))
    return {
        "benchmark": "local_read",
        "rows": rows,
        "command": common.command_line("local_read", ".venv-peers/bin/python"),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {**machine_info(), "load_average_before": load_before,
                    "litdata": litpeer.version(), "archai": archai.VERSION,
                    "mp_start_method": __import__("multiprocessing").get_start_method()},
        "settings": {"tokens_target": args.tokens, "seq_len": SEQ_LEN, "batch_size": BATCH_SIZE,
                     "num_workers": NUM_WORKERS, "rounds": args.rounds, "loader_rounds": args.loader_rounds,
                     "windows_per_round": args.windows, "target_single": TARGET_SINGLE,
                     "target_loader": TARGET_LOADER, "litdata_chunk_tokens": LIT_CHUNK_BLOCKS * (SEQ_LEN + 1)},
        "corpus": corpus,
        "tokens": len(flat),
        "windows": {"zarrtok": len(zt), "raw_memmap": len(ref), "archai": len(ar), "litdata": len(lit),
                    "archai_own": len(ar_own)},
        "build_seconds": {"zarrtok": build_s, "litdata_optimize": lit_s, "archai_from_hub": archai_info["seconds"]},
        "archai_own_cache": archai_info,
        "checks": checks,
        "single": single,
        "litdata_iterated": lit_iter,
        "loader": loader_results,
        "total_seconds": time.perf_counter() - t_start,
    }


def print_report(report: dict[str, Any]) -> None:
    m = report["machine"]
    common.print_machine(m, (
          f"torch {m['torch']}, numpy {m['numpy']}, zarrtok {m['zarrtok']}, litdata {m['litdata']}, archai 1.0.0, "
          f"DataLoader workers: {m['mp_start_method']}"))
    print_load(m, "load average")
    print(f"{report['tokens']:,} train tokens, seq_len {SEQ_LEN}; windows: {report['windows']}")
    s = report["single"]
    print(f"\n(a) random single windows, L={SEQ_LEN}, {s['items_per_round']:,} per round, "
          f"{len(s['rates']['zarrtok'])} interleaved rounds, median")
    print(f"{'contender':<12} {'windows/s':>10} {'vs raw':>7} {'noise':>6}")
    for name, med in s["median"].items():
        print(f"{name:<12} {med:>10,.0f} {s['ratio_to_reference'][name]:>6.2f}x {s['spread'][name]:>5.0%}")
    first = report["rows"][0]
    print(f"target zarrtok >= {TARGET_SINGLE}x raw_memmap: {first['value']:.2f}x {first['result']}")
    print(f"informational: litdata iterated (shuffle=True, whole epoch) {report['litdata_iterated']['median']:,.0f} "
          f"windows/s")
    lo = report["loader"]
    print(f"\n(b) DataLoader batch {BATCH_SIZE} x {SEQ_LEN}, num_workers={NUM_WORKERS}, shuffle; one round = one "
          f"epoch incl. worker start-up; median of {len(lo['raw_memmap']['rounds'])} rounds")
    print(f"{'contender':<15} {'batches/s':>9} {'steady':>7} {'batches':>8} {'noise':>6} {'vs raw':>7}")
    for name, x in lo.items():
        print(f"{name:<15} {x['median']:>9,.0f} {x['steady_median']:>7,.0f} {x['batches_per_epoch']:>8} "
              f"{x['spread']:>5.0%} {x['median'] / lo['raw_memmap']['median']:>6.2f}x")
    for t in report["rows"][1:]:
        print(f"target {t['measure'][len('(b) DataLoader batches/s, '):]} {t['target']}: {t['value']:.2f}x "
              f"{t['result']}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.local_read", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="~3M tokens, fewer rounds")
    p.add_argument("--tokens", type=int, default=None, help="corpus size in tokens (default 50M; 3M with --quick)")
    p.add_argument("--rounds", type=int, default=None, help="single-window rounds (default 7; 3 with --quick)")
    p.add_argument("--loader-rounds", type=int, default=None, help="DataLoader epochs per contender (default 5; 2 quick)")
    p.add_argument("--windows", type=int, default=None, help="random windows per round (default 60000; 10000 quick)")
    p.add_argument("--json", default=DEFAULT_JSON, help=f"where to write the results (default {DEFAULT_JSON})")
    p.add_argument("--workdir", default=None, help="keep data here instead of a temporary directory")
    args = p.parse_args(argv)
    args.tokens = args.tokens or (3_000_000 if args.quick else 50_000_000)
    args.rounds = args.rounds or (3 if args.quick else 7)
    args.loader_rounds = args.loader_rounds or (2 if args.quick else 5)
    args.windows = args.windows or (10_000 if args.quick else 60_000)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    report = run_in_workdir(run, args, "zarrtok-localread-")
    print_report(report)
    write_report(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

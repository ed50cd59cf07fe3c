"""Build speed: ``zarrtok.build`` tokens/s and peak memory (PSS of the build's process tree), Hugging Face encoder vs the verified
tiktoken and gigatoken fast paths, with 1 and 2 workers, on the same corpus in the same run.

Run from the repository root::

    python -m benchmarks.build_speed               # ~20M tokens (the random_access corpus), ~5 minutes
    python -m benchmarks.build_speed --tokens 2000000 --rounds 1
    python -m benchmarks.build_speed --profile 50  # cProfile one gigatoken build of a ~50 MB JSONL: where the time goes

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
CONTENDERS = [("hf", 1), ("tiktoken", 1), ("gigatoken", 1), ("hf", 2), ("tiktoken", 2), ("gigatoken", 2)]


def build_one(data_path: str, tok_dir: str, output: str, encoder: str, workers: int) -> dict[str, Any]:
    """Child process: one build from scratch; prints its measurements as JSON."""
    import hashlib

    import numpy as np

    import zarrtok

    # zarrtok imports lazily: import what a build uses (transformers, datasets, zarr, the encoders) before
    # the clock starts, so the time is the build's, not the interpreter's start-up (reported apart)
    t_imports = time.perf_counter()
    import transformers  # noqa: F401

    import zarrtok.ingest.builder
    import zarrtok.ingest.fast_encoding
    import zarrtok.ingest.gigatoken_encoding

    imports = time.perf_counter() - t_imports
    shutil.rmtree(output, ignore_errors=True)
    t0, c0 = time.perf_counter(), _cpu_seconds()
    store = zarrtok.build("json", data_files=data_path, tokenizer_name=tok_dir, output=output, num_workers=workers,
                          encoder=encoder, validation_split=0.0, progress=False)
    seconds, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
    tokens = np.asarray(store.tokens("train"))
    return {"seconds": seconds, "cpu_seconds": cpu, "imports_seconds": imports, "tokens": int(tokens.size),
            "zarrtok_file": zarrtok.__file__,
            "encoder": store.manifest.encoder,
            "digest": hashlib.sha256(tokens.tobytes()).hexdigest()}


def _cpu_seconds() -> float:
    """CPU seconds of this process and its reaped children (the build's workers): on a shared machine,
    tokens per CPU-second is steadier than tokens per wall second."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def run(args: argparse.Namespace, workdir: str) -> dict[str, Any]:
    isolate_caches(workdir)
    t_start = time.perf_counter()
    data_path, tok_dir, corpus = make_corpus(workdir, args.tokens)
    print(f"corpus: {corpus['documents']:,} documents, {os.path.getsize(data_path) / 1e6:.0f} MB", flush=True)
    # warm the page cache (and, for sources that go through datasets, its Arrow cache) before timing
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
            row["tokens_per_cpu_second"] = row["tokens"] / row["cpu_seconds"]
            print(f"round {r} {encoder}/{workers}: {row['tokens_per_second'] / 1e6:.2f}M tok/s, "
                  f"{row['tokens_per_cpu_second'] / 1e6:.2f}M tok/CPU-s, "
                  f"peak {row['peak_pss_mb']:.0f} MB ({row['encoder'][:16]})", flush=True)
            shutil.rmtree(out, ignore_errors=True)
    digests = {row["digest"] for rows in results.values() for row in rows}
    if len(digests) != 1:
        raise AssertionError(f"the builds produced different tokens: {digests}")
    summary = {name: {"tokens_per_second": statistics.median(r["tokens_per_second"] for r in rows),
                      "tokens_per_cpu_second": statistics.median(r["tokens_per_cpu_second"] for r in rows),
                      "peak_pss_mb": statistics.median(r["peak_pss_mb"] for r in rows),
                      "encoder": rows[0]["encoder"]} for name, rows in results.items()}
    return {"benchmark": "build_speed", "command": " ".join(["python", "-m", "benchmarks.build_speed", *sys.argv[1:]]),
            "machine": machine_info(), "corpus": corpus, "results": results, "summary": summary,
            "ratios": {f"{fast} vs {ref}, {w} worker(s)": summary[f"{fast}/{w}"]["tokens_per_second"]
                       / summary[f"{ref}/{w}"]["tokens_per_second"]
                       for w in (1, 2) for fast, ref in (("tiktoken", "hf"), ("gigatoken", "hf"), ("gigatoken", "tiktoken"))},
            "total_seconds": time.perf_counter() - t_start}


# -- where the time goes: one gigatoken build under cProfile -------------------------------------------------
#: Stages of a build: (label, [(file suffix, function), ...], callers not counted). A stage's time is the
#: cumulative time of its functions, less what they spent when called from the excluded callers (the
#: encoder's verification and the planner's size estimate also read and encode a sample).
_NOT_THE_BUILD_LOOP = [("ingest/jsonl.py", "head"), ("ingest/fast_encoding.py", "verify"),
                       ("ingest/builder.py", "_estimates")]
STAGES = [
    ("load tokenizer (AutoTokenizer)", [("ingest/tokenization.py", "load_tokenizer")], []),
    ("open source (scan JSONL blocks, splits)", [("ingest/builder.py", "_open_documents")], []),
    ("choose encoder (shape check + verification)", [("ingest/builder.py", "_choose_encoder")], []),
    ("read + parse (JSON Lines -> str)", [("ingest/jsonl.py", "texts")], _NOT_THE_BUILD_LOOP),
    ("encode (GigatokenDocumentEncoder.encode)", [("ingest/gigatoken_encoding.py", "encode")], _NOT_THE_BUILD_LOOP),
    ("  of which gigatoken encode_batch + ids as numpy", [("ingest/gigatoken_encoding.py", "_encode_flat")],
     [("ingest/gigatoken_encoding.py", "encode_ids")]),
    ("write (ShardWriter.add/close: chunks, CRC, offsets)", [("ingest/writer.py", "add"), ("ingest/writer.py", "close")], []),
    ("commit (manifest, rename)", [("storage/commit.py", "commit_staging")], []),
    ("wait for workers (pool: read+parse+encode+pickle there)", [("multiprocessing/pool.py", "next")], []),
]


def _stage_seconds(stats: Any) -> dict[str, float]:
    def matches(key: tuple, suffix: str, name: str) -> bool:
        return key[0].endswith(suffix) and key[2] == name

    found: dict[str, float] = {}
    for label, functions, excluded in STAGES:
        total = 0.0
        for suffix, name in functions:
            for key, (_cc, _nc, _tt, ct, callers) in stats.stats.items():
                if matches(key, suffix, name):
                    total += ct - sum(c[3] for k, c in callers.items() if any(matches(k, *e) for e in excluded))
        found[label] = total
    # _encode_flat's calls from encode(): only the build loop's share of encode()'s calls
    enc = sum(v[3] for k, v in stats.stats.items() if matches(k, "ingest/gigatoken_encoding.py", "encode"))
    sub = "  of which gigatoken encode_batch + ids as numpy"
    if enc:
        found[sub] *= found["encode (GigatokenDocumentEncoder.encode)"] / enc
    return found


def _profiled_build(data_path: str, tok_dir: str, output: str, workers: int) -> tuple[float, float, dict[str, float], int]:
    import cProfile
    import pstats

    import zarrtok

    shutil.rmtree(output, ignore_errors=True)
    profiler = cProfile.Profile()
    t0 = time.perf_counter()
    profiler.enable()
    store = zarrtok.build("json", data_files=data_path, tokenizer_name=tok_dir, output=output, num_workers=workers,
                          encoder="gigatoken", validation_split=0.0, progress=False)
    profiler.disable()
    seconds = time.perf_counter() - t0
    stats = pstats.Stats(profiler)
    total = sum(ct for (path, _l, name), (_cc, _nc, _tt, ct, _c) in stats.stats.items()
                if path.endswith("ingest/builder.py") and name == "build")
    return seconds, total, _stage_seconds(stats), store.num_tokens("train")


def _transfer_seconds(data_path: str, tok_dir: str) -> dict[str, float]:
    """What moving each task's result between processes costs: pickling (the worker) and unpickling (the
    parent) every batch's ``(tokens, lengths)``, as ``multiprocessing.Pool`` does (the pipe copy aside)."""
    import pickle

    from zarrtok.ingest.gigatoken_encoding import GigatokenDocumentEncoder
    from zarrtok.ingest.jsonl import JsonLinesDocuments
    from zarrtok.ingest.tokenization import backend_json, load_tokenizer

    tok = load_tokenizer(tokenizer_name=tok_dir)
    enc = GigatokenDocumentEncoder(backend_json(tok), eos_token_id=tok.eos_token_id, add_special_tokens=True, dtype="uint16")
    docs = JsonLinesDocuments.open({"train": [data_path]}, columns=["text"], separator="\n\n", validation_split=0.0,
                                   test_split=None, seed=0, splits=None, batch_size=1000)
    tasks = docs.tasks("train", 1000)
    enc.encode(docs.texts(tasks[0]))  # gigatoken's first-call set-up
    t0 = time.perf_counter()
    texts = [docs.texts(task) for task in tasks]
    t1 = time.perf_counter()
    results = [enc.encode(batch) for batch in texts]
    t2 = time.perf_counter()
    nbytes = 0
    for result in results:
        data = pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
        nbytes += len(data)
        pickle.loads(data)
    return {"seconds": time.perf_counter() - t2, "bytes": nbytes, "batches": len(results),
            "unprofiled_read_parse_seconds": t1 - t0, "unprofiled_encode_seconds": t2 - t1}


def profile(args: argparse.Namespace, workdir: str) -> dict[str, Any]:
    isolate_caches(workdir)
    t0 = time.perf_counter()
    import transformers  # noqa: F401  (imported before the builds: its import is not the build's)

    import zarrtok  # noqa: F401

    imports = time.perf_counter() - t0
    data_path, tok_dir, corpus = make_corpus(workdir, int(args.profile * 1e6 / 4.6))
    with open(data_path, "rb") as f:  # warm the page cache
        while f.read(1 << 24):
            pass
    print(f"corpus: {corpus['documents']:,} documents, {os.path.getsize(data_path) / 1e6:.0f} MB", flush=True)
    out = os.path.join(workdir, "store")
    first = build_one(data_path, tok_dir, out, "gigatoken", 1)  # pays gigatoken's import and ~1 s first-call set-up
    seconds, total, stages, tokens = _profiled_build(data_path, tok_dir, out, 1)
    seconds2, total2, stages2, _ = _profiled_build(data_path, tok_dir, out, 2)
    plain = build_one(data_path, tok_dir, out, "gigatoken", 1)
    plain2 = build_one(data_path, tok_dir, out, "gigatoken", 2)
    transfer = _transfer_seconds(data_path, tok_dir)
    shutil.rmtree(out, ignore_errors=True)
    return {"benchmark": "build_speed_profile", "command": " ".join(["python", "-m", "benchmarks.build_speed", *sys.argv[1:]]),
            "machine": machine_info(), "corpus": corpus, "tokens": tokens, "imports_seconds": imports,
            "unprofiled": {"first build, 1 worker": first, "1 worker": plain, "2 workers": plain2},
            "profiled_1_worker": {"seconds": seconds, "build_cumulative": total, "stages": stages},
            "profiled_2_workers_main_process": {"seconds": seconds2, "build_cumulative": total2, "stages": stages2},
            "transfer_pickle_roundtrip": transfer, "total_seconds": time.perf_counter() - t0}


def print_profile(report: dict[str, Any]) -> None:
    tokens = report["tokens"]
    for key in ("first build, 1 worker", "1 worker", "2 workers"):
        u = report["unprofiled"][key]
        print(f"unprofiled gigatoken build, {key}: {u['seconds']:.2f} s, {tokens / u['seconds'] / 1e6:.2f}M tokens/s, "
              f"{u['cpu_seconds']:.2f} CPU-s")
    for key, label in (("profiled_1_worker", "1 worker, in-process"), ("profiled_2_workers_main_process", "2 workers: the main process")):
        p = report[key]
        print(f"\ncProfile, {label}: build() {p['build_cumulative']:.2f} s ({p['seconds']:.2f} s wall)")
        print(f"{'stage':<62} {'seconds':>8} {'share':>6}")
        for label_, sec in p["stages"].items():
            if sec > 0:
                print(f"{label_:<62} {sec:8.2f} {sec / p['build_cumulative']:6.1%}")
        rest = p["build_cumulative"] - sum(v for k, v in p["stages"].items() if not k.startswith(" "))
        print(f"{'other (staging, tokenizer files, progress, ...)':<62} {rest:8.2f} {rest / p['build_cumulative']:6.1%}")
    t = report["transfer_pickle_roundtrip"]
    print(f"\ntransfer: pickle + unpickle of {t['batches']} results ({t['bytes'] / 1e6:.0f} MB): {t['seconds']:.3f} s")
    print(f"without the profiler, one process: read + parse {t['unprofiled_read_parse_seconds']:.2f} s, "
          f"encode {t['unprofiled_encode_seconds']:.2f} s ({tokens / t['unprofiled_encode_seconds'] / 1e6:.1f}M tokens/s)")


# -- where the time goes, stage by stage, before and after (issue 14) ----------------------------------------
#: the stages of a build's pipeline, timed one after the other in one process without a profiler (cProfile
#: inflates per-document Python code several-fold: read + parse showed 2.3 s under it, 0.53 s without)
STAGE_NAMES = ("load tokenizer", "read + parse", "encode", "transfer (pickle + unpickle)", "write (ShardWriter)")


def stages_one(data_path: str, tok_dir: str, workdir: str) -> dict[str, Any]:
    """Child process (``--stages-one``), with the zarrtok tree under test first on ``sys.path``: every stage of a
    1-shard gigatoken build over the whole corpus, unprofiled, then two end-to-end builds (1 and 2 workers).
    A forked pool worker's costs and the driver's are the same stages split over processes."""
    import pickle

    import numpy as np
    import zarr

    import zarrtok

    out: dict[str, Any] = {"zarrtok_file": zarrtok.__file__}
    t0 = time.perf_counter()
    from zarrtok.ingest.tokenization import backend_json, load_tokenizer

    tok = load_tokenizer(tokenizer_name=tok_dir)
    out["load tokenizer"] = time.perf_counter() - t0
    out["driver imports torch"] = "torch" in sys.modules
    from zarrtok.ingest.gigatoken_encoding import GigatokenDocumentEncoder
    from zarrtok.ingest.jsonl import JsonLinesDocuments
    from zarrtok.ingest.writer import ShardWriter

    enc = GigatokenDocumentEncoder(backend_json(tok), eos_token_id=tok.eos_token_id, add_special_tokens=True,
                                   dtype="uint16")
    docs = JsonLinesDocuments.open({"train": [data_path]}, columns=["text"], separator="\n\n", validation_split=0.0,
                                   test_split=None, seed=0, splits=None, batch_size=1000)
    tasks = docs.tasks("train", 1000)
    enc.encode(docs.texts(tasks[0]))  # gigatoken's first-call set-up (~0.4 s, once per process)
    timings = dict.fromkeys(STAGE_NAMES[1:], 0.0)
    root = zarr.open_group(os.path.join(workdir, "stages-store"), mode="w")
    writer = ShardWriter(root.create_group("shard"), dtype=np.dtype("uint16"), chunk_size=4 << 20,
                         checksum="crc32c", block_bytes=16384)
    tokens = nbytes = 0
    for task in tasks:  # one batch at a time through every stage: memory stays that of one batch
        a = time.perf_counter()
        texts = docs.texts(task)
        b = time.perf_counter()
        result = enc.encode(texts)
        c = time.perf_counter()
        blob = pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
        result = pickle.loads(blob)
        d = time.perf_counter()
        writer.add(*result)
        e = time.perf_counter()
        timings["read + parse"] += b - a
        timings["encode"] += c - b
        timings["transfer (pickle + unpickle)"] += d - c
        timings["write (ShardWriter)"] += e - d
        tokens += result[0].size
        nbytes += len(blob)
    a = time.perf_counter()
    writer.close()
    timings["write (ShardWriter)"] += time.perf_counter() - a
    shutil.rmtree(os.path.join(workdir, "stages-store"), ignore_errors=True)
    out.update(timings)
    out.update({"tokens": tokens, "transfer_bytes": nbytes, "batches": len(tasks)})
    return out


def stages(args: argparse.Namespace, workdir: str) -> dict[str, Any]:
    """``--stages MB``: the stage table and end-to-end gigatoken builds (1 and 2 workers) for the zarrtok tree in
    ``--before-tree`` and this one, on one generated corpus, in the same run."""
    isolate_caches(workdir)
    t_start = time.perf_counter()
    data_path, tok_dir, corpus = _reuse_corpus(workdir, int(args.stages * 1e6 / 4.6))
    print(f"corpus: {corpus['documents']:,} documents, {os.path.getsize(data_path) / 1e6:.0f} MB", flush=True)
    with open(data_path, "rb") as f:  # warm the page cache
        while f.read(1 << 24):
            pass
    trees = {"before": os.path.abspath(args.before_tree)} if args.before_tree else {}
    trees["after"] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    report: dict[str, Any] = {"benchmark": "build_speed_stages", "command": " ".join(
        ["python", "-m", "benchmarks.build_speed", *sys.argv[1:]]), "corpus": corpus, "trees": trees, "runs": {}}
    for name, tree in trees.items():
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        load = os.getloadavg()
        child = subprocess.run(_in_tree(tree, "--stages-one", data_path, tok_dir, workdir), stdout=subprocess.PIPE,
                               text=True, env=env, check=True)
        run = {"stages": json.loads(child.stdout.strip().splitlines()[-1]), "load_average_before": load}
        for workers in (1, 2):
            out = os.path.join(workdir, f"store-{name}-{workers}")
            load = os.getloadavg()
            proc = subprocess.Popen(_in_tree(tree, "--one", data_path, tok_dir, out, "gigatoken", str(workers)),
                                    stdout=subprocess.PIPE, text=True, env=env)
            memory = PeakMemory(proc.pid)
            stdout = proc.stdout.read()
            peak = memory.stop()
            if proc.wait() != 0:
                raise RuntimeError(f"build {name}/{workers} failed: {stdout}")
            row = json.loads(stdout.strip().splitlines()[-1])
            row.update({"peak_pss_mb": peak, "tokens_per_second": row["tokens"] / row["seconds"],
                        "load_average_before": load, "load_average_after": os.getloadavg()})
            run[f"build, {workers} worker(s)"] = row
            shutil.rmtree(out, ignore_errors=True)
            print(f"{name} {workers}w: {row['seconds']:.1f} s, {row['tokens_per_second'] / 1e6:.2f}M tokens/s, "
                  f"peak PSS {peak:.0f} MB, load {load[0]:.2f}", flush=True)
        report["runs"][name] = run
    digests = {r[f"build, {w} worker(s)"]["digest"] for r in report["runs"].values() for w in (1, 2)}
    report["same_tokens"] = len(digests) == 1
    report["machine"] = machine_info()
    report["total_seconds"] = time.perf_counter() - t_start
    return report


def _in_tree(tree: str, *argv: str) -> list[str]:
    """A child running this benchmark's ``argv`` with the zarrtok package of ``tree`` (first on ``sys.path``,
    ahead of the editable install, whose finder comes after ``sys.path``)."""
    bench_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = (f"import sys; sys.path.insert(0, {bench_root!r}); import benchmarks.build_speed as b; "
            f"sys.path.insert(0, {tree!r}); sys.exit(b.main({list(argv)!r}))")
    return [sys.executable, "-c", code]


def _reuse_corpus(workdir: str, num_tokens: int) -> tuple[str, str, dict[str, Any]]:
    """:func:`benchmarks.common.make_corpus`, reused when ``workdir`` already holds it for ``num_tokens``."""
    meta = os.path.join(workdir, "corpus.json")
    if os.path.exists(meta):
        with open(meta) as f:
            info = json.load(f)
        if info.get("num_tokens") == num_tokens and os.path.exists(info["path"]):
            return info["path"], info["tokenizer"], {**info, "reused": True}
    data_path, tok_dir, info = make_corpus(workdir, num_tokens)
    info = {**info, "num_tokens": num_tokens, "path": data_path, "tokenizer": tok_dir}
    with open(meta, "w") as f:
        json.dump(info, f)
    return data_path, tok_dir, {**info, "reused": False}


def print_stages(report: dict[str, Any]) -> None:
    runs = report["runs"]
    names = list(runs)
    print(f"\n{'stage (one process, whole corpus, seconds)':<44}" + "".join(f"{n:>10}" for n in names))
    for stage in STAGE_NAMES:
        print(f"{stage:<44}" + "".join(f"{runs[n]['stages'][stage]:10.2f}" for n in names))
    rest = {n: runs[n]["build, 1 worker(s)"]["seconds"] - sum(runs[n]["stages"][k] for k in STAGE_NAMES) for n in names}
    print(f"{'rest of a 1-worker build (scan, verify, plan...)':<44}" + "".join(f"{rest[n]:10.2f}" for n in names))
    for w in (1, 2):
        key = f"build, {w} worker(s)"
        print(f"{'end to end, ' + str(w) + ' worker(s)':<44}" + "".join(f"{runs[n][key]['seconds']:10.2f}" for n in names)
              + "   (" + ", ".join(f"{runs[n][key]['tokens_per_second'] / 1e6:.2f}M tok/s, "
                                   f"{runs[n][key]['peak_pss_mb']:.0f} MB" for n in names) + ")")
    print(f"same tokens in every build: {report['same_tokens']}")


def rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The suite's result rows: build tokens/s of each fast path over Hugging Face's encoder (and gigatoken
    over tiktoken)."""
    return [row("build_speed", f"build tokens/s, {k}", v, reference=k.split(" vs ")[1].split(",")[0],
                conditions=conditions(report, tokens=report["results"]["hf/1"][0]["tokens"],
                                      rounds=len(report["results"]["hf/1"])))
            for k, v in report["ratios"].items()]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=20_000_000, help="corpus size in tokens (default 20M)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of the four builds (default 3)")
    p.add_argument("--json", default=DEFAULT_JSON)
    p.add_argument("--workdir", default=None, help="keep data here instead of a temporary directory")
    p.add_argument("--profile", type=float, default=None, metavar="MB",
                   help="instead: cProfile one gigatoken build (1 and 2 workers) of a JSONL corpus of about MB megabytes")
    p.add_argument("--stages", type=float, default=None, metavar="MB",
                   help="instead: time each stage of the build (and end-to-end gigatoken builds) on a corpus of about "
                        "MB megabytes, for this tree and --before-tree")
    p.add_argument("--before-tree", default=None, help="a zarrtok source tree to compare with (e.g. a `git archive`)")
    p.add_argument("--stages-one", nargs=3, metavar=("DATA", "TOKENIZER", "WORKDIR"), help=argparse.SUPPRESS)
    p.add_argument("--one", nargs=5, metavar=("DATA", "TOKENIZER", "OUTPUT", "ENCODER", "WORKERS"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        data_path, tok_dir, output, encoder, workers = args.one
        print(json.dumps(build_one(data_path, tok_dir, output, encoder, int(workers))))
        return 0
    if args.stages_one:
        print(json.dumps(stages_one(*args.stages_one)))
        return 0
    if args.stages:
        report = run_in_workdir(stages, args, "zarrtok-bench-stages-")
        print_stages(report)
        write_report(report, args.json.replace("build_speed.json", "build_speed_stages.json"))
        return 0
    if args.profile:
        report = run_in_workdir(profile, args, "zarrtok-bench-profile-")
        print_profile(report)
        write_report(report, args.json.replace("build_speed.json", "build_speed_profile.json"))
        return 0
    report = run_in_workdir(run, args, "zarrtok-bench-build-")
    print("\nencoder / workers   tokens/s   tokens/CPU-s   peak PSS (process tree)")
    for name, s in report["summary"].items():
        print(f"{name:<18} {s['tokens_per_second'] / 1e6:6.2f}M  {s['tokens_per_cpu_second'] / 1e6:8.2f}M  "
              f"{s['peak_pss_mb']:8.0f} MB   {s['encoder'][:40]}")
    for k, v in report["ratios"].items():
        print(f"{k}: {v:.2f}x")
    report["rows"] = rows(report)
    write_report(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The ``zarrtok`` command line: ``build``, ``append``, ``info``, ``sample``, ``cp``, ``verify``, ``stats``, ``explain`` and ``demo``, over the public API."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any, Sequence

from . import __version__


def _storage_options(args: argparse.Namespace, prefix: str = "") -> dict[str, Any]:
    options: dict[str, Any] = {}
    if getattr(args, f"{prefix}storage_options_json", None):
        with open(getattr(args, f"{prefix}storage_options_json"), encoding="utf-8") as f:
            options.update(json.load(f))
    for item in getattr(args, f"{prefix}storage_option", None) or []:
        if "=" not in item:
            raise ValueError(f"--{prefix.replace('_', '-')}storage-option expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        try:
            options[key] = json.loads(value)
        except ValueError:
            options[key] = value
    return options


def _add_storage_args(p: argparse.ArgumentParser, prefix: str = "") -> None:
    p.add_argument(f"--{prefix}storage-option", action="append", metavar="KEY=VALUE",
                   help="fsspec storage option (repeatable; VALUE parsed as JSON when possible)")
    p.add_argument(f"--{prefix}storage-options-json", metavar="FILE", help="JSON file of fsspec storage options")


def _add_source_args(p: argparse.ArgumentParser, verb: str) -> None:
    """The options ``build`` and ``append`` share: the source, split rules, encoding, layout, engine."""
    same = "must match the store (refused otherwise)" if verb == "append" else None
    p.add_argument("--config", help="dataset config name (dataset_config_name)")
    p.add_argument("--data-dir")
    p.add_argument("--data-files", nargs="+", help="data files (local paths or URLs, globs)")
    p.add_argument("--revision")
    p.add_argument("--column", action="append", help="text column (repeatable; default 'text')")
    p.add_argument("--column-separator", default="\n\n", help="joins several columns into one document")
    p.add_argument("--validation-split", type=float, default=0.0)
    p.add_argument("--test-split", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--split", action="append", help=f"only {verb} these splits (repeatable)")
    p.add_argument("--num-workers", type=int, default=1)
    p.add_argument("--no-eos-token", action="store_true", help=same or "do not append EOS after documents")
    p.add_argument("--no-special-tokens", action="store_true", help=same or "add_special_tokens=False when encoding")
    p.add_argument("--chunk-size", type=int, help="must match the store's (default: the store's)" if same
                   else "tokens per chunk (default: 8 MiB worth)")
    p.add_argument("--shard-size", type=int, help="tokens per shard before starting a new one")
    p.add_argument("--batch-size", type=int, default=1000, help="documents per tokenization task")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--encoder", choices=["auto", "hf", "gigatoken", "tiktoken"], default="auto",
                   help="auto: the first verified fast path (gigatoken, tiktoken) that reproduces the tokenizer, else HF")
    p.add_argument("--json", action="store_true", help="print the store info (or the plan) as JSON")
    p.add_argument("--plan-only", action="store_true",
                   help="write the plan of shard tasks next to the store and stop (then build-task, commit)")
    p.add_argument("--dask-scheduler", metavar="ADDR", help="run the shard tasks on this Dask scheduler (tcp://...)")


def _source_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """``build()`` arguments from the options of :func:`_add_source_args`."""
    data_files: Any = args.data_files
    if data_files and len(data_files) == 1:
        data_files = data_files[0]
    extra = {} if args.plan_only else {"scheduler": args.dask_scheduler}
    return dict(
        dataset_config_name=args.config, data_dir=args.data_dir, data_files=data_files or None,
        revision=args.revision, tokenizer_name=args.tokenizer_name, columns=args.column or None,
        column_separator=args.column_separator, validation_split=args.validation_split,
        test_split=args.test_split, seed=args.seed, splits=args.split or None, num_workers=args.num_workers,
        use_eos_token=not args.no_eos_token, add_special_tokens=not args.no_special_tokens,
        chunk_size=args.chunk_size, shard_size=args.shard_size, storage_options=_storage_options(args),
        batch_size=args.batch_size, progress=not args.no_progress, encoder=args.encoder, **extra,
    )


def _cmd_build(args: argparse.Namespace) -> int:
    from .ingest.builder import build, plan_build

    run = plan_build if args.plan_only else build
    store = run(args.dataset, output=args.output, shuffle=args.shuffle, overwrite=args.overwrite,
                checksum=None if args.no_checksum else "crc32c", **_source_kwargs(args))
    if args.plan_only:
        return _print_plan(store, args)
    _print_info(store.info(), as_json=args.json)
    return 0


def _cmd_append(args: argparse.Namespace) -> int:
    from .ingest.builder import build, plan_build

    run = plan_build if args.plan_only else build
    result = run(args.dataset, output=args.store, mode="append", allow_duplicate=args.allow_duplicate,
                 **_source_kwargs(args))
    if args.plan_only:
        return _print_plan(result, args)
    _print_info(result.info(), as_json=args.json)
    return 0


def _print_plan(plan: Any, args: argparse.Namespace) -> int:
    where = getattr(args, "output", None) or args.store
    if plan is None:
        print(f"{where} already holds this store: nothing to plan")
        return 0
    summary = {"store": where, "plan": plan.key, "tasks": len(plan.tasks), "pending": len(plan.pending()),
               "fingerprint": plan.fingerprint, "staging": plan.staging.url, "mode": plan.data.get("mode", "create")}
    print(json.dumps(summary, indent=2) if args.json else
          f"planned {summary['tasks']} task(s) (plan {summary['plan']}, {summary['pending']} pending); run "
          f"`zarrtok build-task {where} --task K` for K in 0..{summary['tasks'] - 1}, then "
          f"`zarrtok commit {where}`")
    return 0


def _cmd_build_task(args: argparse.Namespace) -> int:
    from .ingest.builder import run_plan_task

    record = run_plan_task(args.store, args.task, storage_options=_storage_options(args), key=args.plan)
    print(json.dumps(record) if args.json else
          f"task {args.task}: shard {record['split']}/{record['name']} ({record['num_tokens']:,} tokens, "
          f"{record['num_documents']:,} documents)")
    return 0


def _cmd_commit(args: argparse.Namespace) -> int:
    from .ingest import plan as _plan
    from .ingest.builder import commit_build

    plan = _plan.find_plan(args.store, _storage_options(args), args.plan)
    store = commit_build(plan)
    _print_info(store.info(), as_json=args.json)
    return 0


def _print_info(info: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(info, indent=2, default=str))
        return
    tok = info["tokenizer"]
    print(f"store        {info['url']}")
    print(f"fingerprint  {info['fingerprint']}")
    print(f"format       zarrtok v{info['format_version']}  (written by zarrtok {info['zarrtok_version']}, {info['created']})")
    print(f"dtype        {info['dtype']}   chunk {info['chunk_size']:,} tokens   checksum {info['checksum']}")
    print(f"tokenizer    {tok.get('class')} {tok.get('name_or_path')!r}  len={tok.get('len')}  "
          f"eos={tok.get('eos_token')!r}({info['eos_token_id']})  sha256={str(tok.get('sha256'))[:12]}")
    print(f"encoder      {info['encoder']}")
    if len(info.get("history") or []) > 1:
        steps = ", ".join(f"{h['action']} {h.get('created') or ''} (+{h.get('documents') or 0:,} docs)"
                          for h in info["history"])
        print(f"history      {steps}")
    print(f"{'split':<12} {'tokens':>14} {'documents':>11} {'shards':>6} {'chunks':>7} {'bytes':>14} {'stored':>14}")
    for name, s in info["splits"].items():
        print(f"{name:<12} {s['tokens']:>14,} {s['documents']:>11,} {s['shards']:>6} {s['chunks']:>7} "
              f"{s['token_bytes']:>14,} {s['stored_bytes']:>14,}")


def _cmd_info(args: argparse.Namespace) -> int:
    from .read.store import open as open_store

    _print_info(open_store(args.path, storage_options=_storage_options(args)).info(), as_json=args.json)
    return 0


def _cmd_sample(args: argparse.Namespace) -> int:
    from .read.store import open as open_store

    store = open_store(args.path, storage_options=_storage_options(args))
    dataset = store.dataset(args.split, args.seq_len)
    inputs, labels = dataset[args.index]
    if args.ids:
        print(json.dumps({"index": args.index, "inputs": inputs.tolist(), "labels": labels.tolist()}))
    else:
        window = inputs.tolist() + labels[-1:].tolist()
        print(store.tokenizer.decode(window))
    return 0


def _cmd_cp(args: argparse.Namespace) -> int:
    from .read.store import copy

    store = copy(args.src, args.dst, src_storage_options=_storage_options(args, "src_"),
                 dst_storage_options=_storage_options(args, "dst_"), overwrite=args.overwrite,
                 progress=not args.no_progress)
    print(f"copied {args.src} -> {store.url} (fingerprint {store.fingerprint[:12]})")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from .read.store import open as open_store

    report = open_store(args.path, storage_options=_storage_options(args)).verify(progress=not args.no_progress)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        for problem in report.problems:
            print(f"BAD {problem}")
        print(f"{'OK' if report.ok else 'FAILED'}: {report.url}: {report.chunks_checked:,} chunks, "
              f"{report.bytes_checked / 1e6:,.1f} MB checked in {report.seconds:.2f}s, "
              f"{len(report.problems)} problem(s)")
    return 0 if report.ok else 1


def _cmd_stats(args: argparse.Namespace) -> int:
    from .read.analysis import DEFAULT_SEQ_LENS, format_stats
    from .read.store import open as open_store

    store = open_store(args.path, storage_options=_storage_options(args))
    splits = args.split or store.splits
    seq_lens = args.seq_len or list(DEFAULT_SEQ_LENS)
    results = {split: store.stats(split, seq_lens, progress=not args.no_progress, refresh=args.refresh)
               for split in splits}
    if args.json:
        out = {split: dict(st) for split, st in results.items()}
        if not args.token_counts:
            for st in out.values():
                st.pop("token_counts", None)
        print(json.dumps(out, indent=2, default=str))
    else:
        tokenizer = store.tokenizer
        print("\n\n".join(format_stats(st, tokenizer) for st in results.values()))
    if args.plot:
        from .read.plots import plot_stats

        plot_stats(results[splits[0]], args.plot, tokenizer=store.tokenizer, store=store, title=f"{store.url} [{splits[0]}]")
        print(f"plot written to {args.plot}", file=sys.stderr)
    return 0


def _cmd_explain(args: argparse.Namespace) -> int:
    from .read.analysis import format_explanation
    from .read.store import open as open_store

    store = open_store(args.path, storage_options=_storage_options(args))
    explanation = store.explain(args.split, args.seq_len, args.index, text=not args.no_text)
    if args.json:
        print(json.dumps(explanation, indent=2, ensure_ascii=False))
    else:
        print(format_explanation(explanation))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    summary = run_demo(args.output, num_docs=args.docs, num_workers=args.num_workers)
    _print_info(summary["store"], as_json=False)
    print()
    print(f"train windows (seq_len 128): {summary['train_windows']:,}   validation windows: {summary['validation_windows']:,}")
    print(f"labels are inputs shifted by one: {summary['labels_shifted']}")
    print(f"stored tokens of the first document == tokenizer(doc) + [eos]: {summary['first_document_matches_tokenizer']}")
    print(f"training loader: {summary['loader_batches_per_epoch']:,} shuffled batches/epoch; stopped halfway, "
          f"saved state, resumed in a new loader == one uninterrupted epoch: {summary['loader_resume_exact']}")
    print(f"--- decoded train window {summary['sample_index']} ---")
    print(summary["sample_text"])
    ok = summary["labels_shifted"] and summary["first_document_matches_tokenizer"] and summary["loader_resume_exact"]
    return 0 if ok else 1


def make_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``zarrtok`` command."""
    parser = argparse.ArgumentParser(prog="zarrtok", description="Tokenize datasets into Zarr token stores and read them.")
    parser.add_argument("--version", action="version", version=f"zarrtok {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors in the log")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (anywhere on the line)")
    sub = parser.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build", help="tokenize a dataset into a store")
    b.add_argument("dataset", help="load_dataset path/name: json, text, parquet, csv, a hub name or a local dir")
    b.add_argument("--output", "-o", required=True, help="store path or fsspec URL")
    b.add_argument("--tokenizer-name", required=True, help="tokenizer name or local directory")
    _add_source_args(b, "build")
    b.add_argument("--shuffle", action="store_true", help="shuffle document order in every split (seeded)")
    b.add_argument("--no-checksum", action="store_true", help="no per-chunk crc32c")
    b.add_argument("--overwrite", action="store_true", help="replace an existing store")
    _add_storage_args(b)
    b.set_defaults(func=_cmd_build)

    ap = sub.add_parser("append", help="add documents to a store as new shards (old readers keep their view)")
    ap.add_argument("store", help="the store path or URL to append to")
    ap.add_argument("dataset", help="load_dataset path/name of the documents to add: json, parquet, ...")
    ap.add_argument("--tokenizer-name", help="check this tokenizer is the store's (default: use the store's)")
    _add_source_args(ap, "append")
    ap.add_argument("--allow-duplicate", action="store_true", help="append a source the store already holds")
    _add_storage_args(ap)
    ap.set_defaults(func=_cmd_append)

    bt = sub.add_parser("build-task", help="run one shard task of a planned build (idempotent)")
    bt.add_argument("store", help="the store path or URL given to build --plan-only")
    bt.add_argument("--task", type=int, required=True, help="task index (e.g. $SLURM_ARRAY_TASK_ID)")
    bt.add_argument("--plan", help="plan key, when several builds into the store are planned")
    bt.add_argument("--json", action="store_true")
    _add_storage_args(bt)
    bt.set_defaults(func=_cmd_build_task)

    cm = sub.add_parser("commit", help="commit a planned build once all its tasks are done")
    cm.add_argument("store")
    cm.add_argument("--plan", help="plan key, when several builds into the store are planned")
    cm.add_argument("--json", action="store_true")
    _add_storage_args(cm)
    cm.set_defaults(func=_cmd_commit)

    i = sub.add_parser("info", help="describe a store")
    i.add_argument("path")
    i.add_argument("--json", action="store_true")
    _add_storage_args(i)
    i.set_defaults(func=_cmd_info)

    s = sub.add_parser("sample", help="print the decoded text of one window")
    s.add_argument("path")
    s.add_argument("--split", default="train")
    s.add_argument("--seq-len", type=int, required=True)
    s.add_argument("--index", type=int, default=0)
    s.add_argument("--ids", action="store_true", help="print token ids as JSON instead of text")
    _add_storage_args(s)
    s.set_defaults(func=_cmd_sample)

    c = sub.add_parser("cp", help="copy a store between two paths/URLs (verified, crash-safe)")
    c.add_argument("src")
    c.add_argument("dst")
    c.add_argument("--overwrite", action="store_true", help="replace an existing store at DST")
    c.add_argument("--no-progress", action="store_true")
    _add_storage_args(c, "src-")
    _add_storage_args(c, "dst-")
    c.set_defaults(func=_cmd_cp)

    v = sub.add_parser("verify", help="check every chunk's CRC, metadata, offsets, tokenizer and ids of a store")
    v.add_argument("path")
    v.add_argument("--json", action="store_true", help="print the report as JSON")
    v.add_argument("--no-progress", action="store_true")
    _add_storage_args(v)
    v.set_defaults(func=_cmd_verify)

    st = sub.add_parser("stats", help="statistics of a store's splits (cached in the store), optionally plotted")
    st.add_argument("path")
    st.add_argument("--split", action="append", help="split (repeatable; default: every split)")
    st.add_argument("--seq-len", type=int, action="append", help="seq_len for window statistics (repeatable; "
                    "default 512, 2048, 8192)")
    st.add_argument("--json", action="store_true", help="print the statistics as JSON")
    st.add_argument("--token-counts", action="store_true", help="with --json: include the count of every token id")
    st.add_argument("--plot", metavar="OUT.png", help="write the plots of the first split (needs matplotlib)")
    st.add_argument("--refresh", action="store_true", help="recompute even when cached")
    st.add_argument("--no-progress", action="store_true")
    _add_storage_args(st)
    st.set_defaults(func=_cmd_stats)

    e = sub.add_parser("explain", help="which documents (and source rows) one training window is made of")
    e.add_argument("path")
    e.add_argument("--split", default="train")
    e.add_argument("--seq-len", type=int, required=True)
    e.add_argument("--index", type=int, required=True, help="window index (as TokenDataset)")
    e.add_argument("--json", action="store_true")
    e.add_argument("--no-text", action="store_true", help="do not decode the pieces")
    _add_storage_args(e)
    e.set_defaults(func=_cmd_explain)

    d = sub.add_parser("demo", help="offline end-to-end demo on generated data")
    d.add_argument("--output", "-o", default="zarrtok-demo")
    d.add_argument("--docs", type=int, default=5000)
    d.add_argument("--num-workers", type=int, default=1)
    d.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``zarrtok`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    if debug:
        argv.remove("--debug")
    args = make_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .errors import ZarrtokError

    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("zarrtok: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - every error is one line and exit status 2 (--debug: traceback)
        if debug:
            raise
        kind = "" if isinstance(exc, (ZarrtokError, ValueError)) else f"{type(exc).__name__}: "
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"zarrtok: error: {kind}{message}", file=sys.stderr)
        return 2

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

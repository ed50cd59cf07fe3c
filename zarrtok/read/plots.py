"""Plots of a split's statistics (matplotlib, the optional ``zarrtok[notebooks]`` extra): the
document-length histogram (log scale), a Zipf plot of token frequencies, the most frequent tokens
decoded, and the fraction of training windows that cross a document boundary against seq_len.

Regenerate the README's image with::

    python -m zarrtok.read.plots --demo docs/store-stats.png

(an offline, deterministic store built from :mod:`zarrtok.testing.corpus`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["CURVE_SEQ_LENS", "plot_crossing", "plot_document_lengths", "plot_stats", "plot_top_tokens", "plot_zipf"]

#: seq_lens of the boundary-crossing curve (powers of two, 16 .. 32768)
CURVE_SEQ_LENS = tuple(2**k for k in range(4, 16))


def _pyplot():
    try:
        import matplotlib

        # no display needed; notebooks (ipykernel) pick their inline backend themselves
        if "matplotlib.pyplot" not in sys.modules and not os.environ.get("MPLBACKEND") and "ipykernel" not in sys.modules:
            matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - exercised only without the extra
        raise ImportError("plots need matplotlib: pip install 'zarrtok[notebooks]' (or matplotlib)") from None
    return plt


def _show_token(text: str | None, token_id: int) -> str:
    if text is None:
        return str(token_id)
    return (text.replace(" ", "\u2423").replace("\n", "\u21b5").replace("\t", "\u2192") or "''")[:14]


def plot_document_lengths(stats: dict[str, Any], ax=None):
    """Histogram of non-empty document lengths on log-spaced bins, log x axis, with median and p99."""
    plt = _pyplot()
    ax = ax or plt.gca()
    dl = stats["document_length"]
    edges = np.asarray(dl["histogram"]["edges"], dtype=float)
    counts = np.asarray(dl["histogram"]["counts"], dtype=float)
    ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color="#4c72b0", edgecolor="white", linewidth=0.4)
    ax.set_xscale("log")
    q = dl.get("quantiles") or {}
    for key, label, style in (("0.5", "median", "-"), ("0.99", "p99", "--")):
        if key in q:
            ax.axvline(q[key], color="#c44e52", linestyle=style, linewidth=1, label=f"{label} {q[key]:,.0f}")
    ax.set_xlabel("document length (tokens, log scale)")
    ax.set_ylabel("documents")
    ax.set_title(f"{stats['num_documents']:,} documents ({stats['empty_documents']:,} empty)")
    ax.legend(frameon=False, fontsize=8)
    return ax


def plot_zipf(stats: dict[str, Any], ax=None):
    """Token frequency against frequency rank, log-log, with the slope of a least-squares fit."""
    plt = _pyplot()
    ax = ax or plt.gca()
    counts = np.sort(np.asarray(stats["token_counts"], dtype=np.int64))[::-1]
    counts = counts[counts > 0]
    if counts.size == 0:
        return ax
    ranks = np.arange(1, counts.size + 1)
    freq = counts / counts.sum()
    ax.loglog(ranks, freq, color="#55a868", linewidth=1.5, label="tokens")
    if counts.size > 10:
        lo, hi = 1, max(2, int(counts.size * 0.5))
        slope, intercept = np.polyfit(np.log(ranks[lo:hi]), np.log(freq[lo:hi]), 1)
        ax.loglog(ranks, np.exp(intercept) * ranks**slope, color="grey", linestyle=":", linewidth=1,
                  label=f"fit: slope {slope:.2f}")
    ax.set_xlabel("rank")
    ax.set_ylabel("frequency")
    ax.set_title(f"Zipf: {stats['distinct_tokens']:,} of {stats['vocab_size']:,} ids used")
    ax.legend(frameon=False, fontsize=8)
    return ax


def plot_top_tokens(stats: dict[str, Any], ax=None, *, tokenizer: Any = None, k: int = 20):
    """The ``k`` most frequent tokens (decoded with ``tokenizer``; ``␣`` is a space, ``↵`` a newline)."""
    from .analysis import StoreStats

    plt = _pyplot()
    ax = ax or plt.gca()
    rows = StoreStats(stats).top_tokens(k, tokenizer)
    total = max(1, stats["num_tokens"])
    labels = [_show_token(text, i) for i, _, text in rows]
    shares = [c / total for _, c, _ in rows]
    y = np.arange(len(rows))
    ax.barh(y, shares, color="#8172b2")
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("share of tokens")
    ax.set_title(f"top {len(rows)} tokens")
    ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:.0%}"))
    return ax


def crossing_curve(offsets: np.ndarray, seq_lens: Sequence[int] = CURVE_SEQ_LENS) -> dict[str, list[float]]:
    """Boundary-crossing fraction and documents per window for each seq_len (offsets only)."""
    from .analysis import seq_len_stats

    rows = [seq_len_stats(offsets, L) for L in seq_lens]
    rows = [r for r in rows if r["windows"] > 0]
    return {"seq_len": [r["seq_len"] for r in rows], "crossing_fraction": [r["crossing_fraction"] for r in rows],
            "documents_per_window": [r["documents_per_window"] for r in rows],
            "padding_fraction": [r["padding_fraction"] for r in rows]}


def plot_crossing(stats: dict[str, Any], ax=None, *, curve: dict[str, list[float]] | None = None):
    """Fraction of windows that cross a document boundary (and the padding a per-document layout
    would need) against seq_len; ``curve`` from :func:`crossing_curve`, else the stats' seq_lens."""
    plt = _pyplot()
    ax = ax or plt.gca()
    if curve is None:
        rows = sorted(stats["seq_lens"].values(), key=lambda r: r["seq_len"])
        curve = {"seq_len": [r["seq_len"] for r in rows], "crossing_fraction": [r["crossing_fraction"] for r in rows],
                 "padding_fraction": [r["padding_fraction"] for r in rows]}
    ax.semilogx(curve["seq_len"], curve["crossing_fraction"], "o-", color="#dd8452", label="windows crossing a boundary")
    ax.semilogx(curve["seq_len"], curve["padding_fraction"], "s--", color="#937860", markersize=4,
                label="padding, one document per row")
    ax.set_xscale("log", base=2)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("seq_len")
    ax.set_ylabel("fraction")
    median = (stats["document_length"].get("quantiles") or {}).get("0.5")
    if median:
        ax.axvline(median, color="grey", linestyle=":", linewidth=1, label=f"median document {median:,.0f}")
    ax.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:.0%}"))
    ax.set_title("documents vs windows")
    ax.legend(frameon=False, fontsize=8, loc="center right")
    return ax


def plot_stats(stats: dict[str, Any], out: str | None = None, *, tokenizer: Any = None, store: Any = None,
               title: str | None = None, dpi: int = 110):
    """The four plots in one 2x2 figure; saved to ``out`` when given. With ``store`` the crossing
    curve uses many seq_lens (computed from the split's document offsets)."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    plot_document_lengths(stats, axes[0, 0])
    plot_zipf(stats, axes[0, 1])
    plot_top_tokens(stats, axes[1, 0], tokenizer=tokenizer)
    curve = crossing_curve(store.documents(stats["split"])) if store is not None else None
    plot_crossing(stats, axes[1, 1], curve=curve)
    fig.suptitle(title or f"split {stats['split']}: {stats['num_tokens']:,} tokens")
    fig.tight_layout()
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        fig.savefig(out, dpi=dpi, metadata={"Software": None})
    return fig


def _demo(out: str, docs: int = 4000) -> None:
    """Build the offline demo store (generated corpus, trained tokenizer) and plot its train split."""
    import tempfile

    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import datasets

    from ..ingest.builder import build
    from ..testing.corpus import generate_documents, train_tokenizer

    texts = generate_documents(docs, seed=0)
    tokenizer = train_tokenizer(texts[:1000], vocab_size=2048)
    with tempfile.TemporaryDirectory(prefix="zarrtok-plot-demo-") as tmp:
        store = build(datasets.Dataset.from_dict({"text": texts}), tokenizer=tokenizer,
                      output=os.path.join(tmp, "store"), progress=False)
        stats = store.stats("train", progress=False)
        plot_stats(stats, out, tokenizer=store.tokenizer, store=store,
                   title=f"zarrtok stats: {docs:,} generated documents, {stats['num_tokens']:,} tokens")
    print(f"wrote {out}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zarrtok.read.plots", description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo", metavar="OUT.png", required=True, help="build the offline demo store and plot it")
    parser.add_argument("--docs", type=int, default=4000)
    args = parser.parse_args(argv)
    _demo(args.demo, args.docs)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

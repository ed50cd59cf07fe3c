"""Notebook analysis of a token store: statistics, decoding, window explanations with provenance and
token-sequence search. numpy only (no torch); every scan reads the split chunk by chunk, so memory
stays bounded by a block of tokens plus one count per vocabulary id, locally and on object storage.

The methods live in :class:`AnalysisMixin` (a base of :class:`~zarrtok.read.store.TokenStore`), so
``store.stats(split)``, ``store.decode(...)``, ``store.document(...)``, ``store.explain(...)``,
``store.provenance(...)`` and ``store.find(...)`` work on any opened store. See ``docs/analysis.md``.

Statistics are cached by the store's content (the split's shard ids): in a writable local store as
the JSON bytes of a uint8 Zarr array ``<root>/indices/<generation>/stats-<split>.json`` (like the
tokenizer files, so the store stays a clean Zarr hierarchy; ``bytes(group[path][:])`` is the JSON),
else as a JSON file in ``$ZARRTOK_CACHE_DIR/stats/`` (default ``~/.cache/zarrtok/stats/``). A second
call is a small read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from .store import TokenStore

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_SEQ_LENS",
    "STATS_VERSION",
    "AnalysisMixin",
    "StoreStats",
    "compute_token_counts",
    "document_length_stats",
    "format_explanation",
    "format_stats",
    "seq_len_stats",
]

DEFAULT_SEQ_LENS = (512, 2048, 8192)
#: bumped whenever the cached JSON's meaning changes (older entries are recomputed)
STATS_VERSION = 1
#: tokens handed to one ``np.bincount`` call (its int64 temporary stays in cache: ~2 MiB)
COUNT_BLOCK = 1 << 18
#: tokens read per step of a scan (one default chunk: a zero-copy view of a mapped chunk)
READ_BLOCK = 1 << 22
QUANTILES = (0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1.0)
HISTOGRAM_BINS = 48
#: the root group of derived data (docs/format.md: "index objects keyed by generation")
INDICES_GROUP = "indices"


# -- counting (the part that reads every token) ----------------------------------------------------
def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return None
    return tqdm(total=total, desc=desc, unit="tok", unit_scale=True, leave=False)


def _blocks(length: int, chunk_size: int, block: int = READ_BLOCK) -> Iterable[tuple[int, int]]:
    """``[a, b)`` read blocks covering ``[0, length)``, aligned to chunk boundaries where possible."""
    if chunk_size > 0:
        block = max(chunk_size, (block // chunk_size) * chunk_size)
    for a in range(0, length, block):
        yield a, min(length, a + block)


def compute_token_counts(tokens: Any, vocab_size: int, *, progress: bool = False, desc: str = "counting",
                         block: int = READ_BLOCK) -> np.ndarray:
    """Occurrences of every token id (int64, length >= ``vocab_size``), reading ``tokens`` (anything
    with ``len()`` and ``read(a, b)``, e.g. a :class:`~zarrtok.read.token_array.TokenArray`) in
    blocks; memory: one block (a view for memory-mapped chunks) plus the counts."""
    counts = np.zeros(max(1, int(vocab_size)), dtype=np.int64)
    n = len(tokens)
    bar = _progress(n, desc, progress)
    try:
        for a, b in _blocks(n, int(getattr(tokens, "chunk_size", 0) or 0), block):
            data = tokens.read(a, b)
            for i in range(0, data.size, COUNT_BLOCK):
                part = np.bincount(data[i : i + COUNT_BLOCK], minlength=counts.size)
                if part.size > counts.size:  # an id beyond the declared vocabulary: grow, never drop
                    part[: counts.size] += counts
                    counts = part
                else:
                    counts += part
            if bar is not None:
                bar.update(b - a)
    finally:
        if bar is not None:
            bar.close()
    return counts


# -- document and window statistics (from the document offsets alone) ----------------------------
def _unique_sorted(x: np.ndarray) -> np.ndarray:
    """``np.unique`` of an already non-decreasing array, in one pass (no sort, no hashing)."""
    if x.size < 2:
        return x
    keep = np.empty(x.size, dtype=bool)
    keep[0] = True
    np.not_equal(x[1:], x[:-1], out=keep[1:])
    return x[keep]


def document_length_stats(offsets: np.ndarray, *, bins: int = HISTOGRAM_BINS) -> dict[str, Any]:
    """Length distribution of the non-empty documents (tokens, EOS included): mean, quantiles and a
    log-spaced histogram (``edges`` are integer bin edges, ``counts[k]`` documents with length in
    ``[edges[k], edges[k+1])``)."""
    lengths = np.diff(np.asarray(offsets, dtype=np.int64))
    nonempty = lengths[lengths > 0]
    out: dict[str, Any] = {"documents": int(lengths.size), "empty": int(lengths.size - nonempty.size)}
    if nonempty.size == 0:
        out.update(mean=0.0, std=0.0, min=0, max=0, quantiles={}, histogram={"edges": [1, 2], "counts": [0]})
        return out
    hi = int(nonempty.max())
    edges = np.unique(np.round(np.geomspace(1, hi + 1, num=bins + 1)).astype(np.int64))
    if edges[-1] <= hi:
        edges = np.append(edges, hi + 1)
    counts = np.histogram(nonempty, bins=edges)[0]
    out.update(
        mean=float(nonempty.mean()),
        std=float(nonempty.std()),
        min=int(nonempty.min()),
        max=hi,
        quantiles={f"{q:g}": float(v) for q, v in zip(QUANTILES, np.quantile(nonempty, QUANTILES))},
        histogram={"edges": edges.tolist(), "counts": counts.astype(np.int64).tolist()},
    )
    return out


def seq_len_stats(offsets: np.ndarray, seq_len: int) -> dict[str, Any]:
    """What training on ``seq_len`` windows (``TokenDataset``: window ``i`` reads tokens
    ``[i*L, i*L + L + 1)``) means for this split, from the document offsets alone:

    * ``windows``: ``(N - 1) // L`` (0 when ``N - 1 < L``);
    * ``crossing_windows`` / ``crossing_fraction``: windows whose ``L + 1`` tokens hold more than one
      document (a document starts at a position in ``(i*L, i*L + L]``);
    * ``documents_per_window``: mean number of (non-empty) documents a window touches;
    * ``tail_dropped``: tokens after the last window (never an input nor a label);
    * ``padding_per_document`` / ``padding_fraction``: pad tokens a per-document layout would need
      (every document cut into ``L``-token rows, the last row of each padded), and that padding as a
      share of the padded total;
    * ``packed_padding_lower_bound``: the fewest pad tokens any packing of those remainders into
      ``L``-token rows could need (``ceil(sum(r) / L) * L - sum(r)``).
    """
    L = int(seq_len)
    if L <= 0:
        raise ValueError(f"seq_len must be positive, got {seq_len}")
    offsets = np.asarray(offsets, dtype=np.int64)
    n = int(offsets[-1]) if offsets.size else 0
    windows = (n - 1) // L if n - 1 >= L else 0
    lengths = np.diff(offsets)
    lengths = lengths[lengths > 0]
    starts = _unique_sorted(offsets[1:-1])  # document starts inside the stream (empty documents collapse)
    starts = starts[(starts > 0) & (starts < n)]
    # a start s lies inside window i's (i*L, i*L + L] exactly when i == (s - 1) // L
    crossing = _unique_sorted((starts - 1) // L)
    crossing = int(np.count_nonzero(crossing < windows))
    if windows:
        # documents touched = 1 + starts inside the window, summed over windows
        inside = int(np.count_nonzero((starts - 1) // L < windows))
        per_window = 1.0 + inside / windows
    else:
        per_window = 0.0
    remainders = lengths % L
    padding = int(np.sum(L - remainders[remainders > 0]))
    rem_total = int(remainders.sum())
    packed_lb = int(-(-rem_total // L) * L - rem_total)
    return {
        "seq_len": L,
        "windows": int(windows),
        "crossing_windows": crossing,
        "crossing_fraction": crossing / windows if windows else 0.0,
        "documents_per_window": per_window,
        "tail_dropped": int(n - windows * L - 1) if windows else n,
        "padding_per_document": padding,
        "padding_fraction": padding / (padding + n) if (padding + n) else 0.0,
        "packed_padding_lower_bound": packed_lb,
    }


# -- the result ------------------------------------------------------------------------------------
class StoreStats(dict):
    """The statistics of one split: a plain JSON-able ``dict`` (see :meth:`AnalysisMixin.stats`)
    with helpers returning pandas DataFrames (pandas imported lazily)."""

    @property
    def token_counts(self) -> np.ndarray:
        return np.asarray(self["token_counts"], dtype=np.int64)

    def top_tokens(self, k: int = 20, tokenizer: Any = None) -> list[tuple[int, int, str | None]]:
        """The ``k`` most frequent ids as ``(id, count, decoded)`` (decoded only with a tokenizer)."""
        counts = self.token_counts
        order = np.argsort(-counts, kind="stable")[:k]
        out = []
        for i in order:
            if counts[i] == 0:
                break
            text = tokenizer.decode([int(i)]) if tokenizer is not None else None
            out.append((int(i), int(counts[i]), text))
        return out

    def to_frame(self, kind: str = "summary", *, tokenizer: Any = None, k: int = 50):
        """A pandas DataFrame: ``"summary"`` (one row of scalars), ``"seq_lens"`` (one row per
        seq_len), ``"quantiles"``, ``"histogram"`` (document lengths), ``"tokens"`` (the ``k`` most
        frequent ids, decoded with ``tokenizer``)."""
        import pandas as pd

        if kind == "summary":
            keys = ("split", "num_tokens", "num_documents", "empty_documents", "eos_count", "vocab_size",
                    "distinct_tokens", "unused_ids")
            row = {key: self[key] for key in keys}
            dl = self["document_length"]
            row.update(doc_len_mean=dl["mean"], doc_len_median=dl["quantiles"].get("0.5"), doc_len_max=dl["max"])
            return pd.DataFrame([row])
        if kind == "seq_lens":
            return pd.DataFrame(list(self["seq_lens"].values())).set_index("seq_len")
        if kind == "quantiles":
            q = self["document_length"]["quantiles"]
            return pd.DataFrame({"quantile": [float(x) for x in q], "tokens": list(q.values())}).set_index("quantile")
        if kind == "histogram":
            h = self["document_length"]["histogram"]
            return pd.DataFrame({"from": h["edges"][:-1], "to": [e - 1 for e in h["edges"][1:]],
                                 "documents": h["counts"]})
        if kind == "tokens":
            rows = self.top_tokens(k, tokenizer)
            total = max(1, self["num_tokens"])
            return pd.DataFrame({"id": [r[0] for r in rows], "count": [r[1] for r in rows],
                                 "share": [r[1] / total for r in rows], "token": [r[2] for r in rows]})
        raise ValueError(f"unknown table {kind!r}: use summary, seq_lens, quantiles, histogram or tokens")

    def frames(self, tokenizer: Any = None) -> dict[str, Any]:
        """Every table of :meth:`to_frame`, by name."""
        return {k: self.to_frame(k, tokenizer=tokenizer) for k in ("summary", "seq_lens", "quantiles", "histogram",
                                                                    "tokens")}


def format_stats(stats: dict[str, Any], tokenizer: Any = None, top: int = 10) -> str:
    """A human-readable summary (the CLI's output)."""
    s = StoreStats(stats)
    dl = s["document_length"]
    q = dl["quantiles"]
    lines = [
        (f"split {s['split']}: {s['num_tokens']:,} tokens, {s['num_documents']:,} documents "
         f"({s['empty_documents']:,} empty), {s['eos_count']:,} EOS"),
        f"vocabulary: {s['distinct_tokens']:,} of {s['vocab_size']:,} ids used ({s['unused_ids']:,} never seen)",
    ]
    if q:
        lines.append(
            "document length (tokens): mean {:.1f}  min {}  p1 {:g}  p10 {:g}  median {:g}  p90 {:g}  p99 {:g}  max {}"
            .format(dl["mean"], dl["min"], q["0.01"], q["0.1"], q["0.5"], q["0.9"], q["0.99"], dl["max"]))
    lines.append(f"{'seq_len':>8} {'windows':>12} {'crossing':>9} {'docs/win':>9} {'tail':>8} {'pad/doc':>8}")
    for row in s["seq_lens"].values():
        lines.append(f"{row['seq_len']:>8} {row['windows']:>12,} {row['crossing_fraction']:>8.1%} "
                     f"{row['documents_per_window']:>9.2f} {row['tail_dropped']:>8,} {row['padding_fraction']:>7.1%}")
    tops = s.top_tokens(top, tokenizer)
    if tops:
        lines.append("top tokens: " + ", ".join(
            f"{t!r}:{c / max(1, s['num_tokens']):.1%}" if t is not None else f"{i}:{c / max(1, s['num_tokens']):.1%}"
            for i, c, t in tops))
    lines.append(f"(computed in {s.get('seconds', 0):.2f}s; cached at {s.get('cache_path')})")
    return "\n".join(lines)


def format_explanation(ex: dict[str, Any]) -> str:
    """A human-readable explanation of one window (the CLI's output)."""
    lines = [(f"window {ex['index']} of {ex['split']} at seq_len {ex['seq_len']}: tokens [{ex['start']:,}, "
              f"{ex['stop']:,}) ({ex['windows']:,} windows), {len(ex['documents'])} document(s)")]
    for d in ex["documents"]:
        src = d.get("source")
        where = "source unrecorded" if src is None else _describe_source(src)
        flags = ("starts here" if d["is_start"] else "continues") + (", ends here" if d["is_end"] else "")
        lines.append(f"  window[{d['window_start']}:{d['window_stop']}]  document {d['document']} tokens "
                     f"[{d['doc_token_start']}:{d['doc_token_stop']}] of {d['doc_length']} ({flags})  "
                     f"row {d['row']} of {where}")
        if d.get("text") is not None:
            text = d["text"]
            lines.append("      " + repr(text if len(text) <= 160 else text[:77] + " ... " + text[-77:]))
    return "\n".join(lines)


def _describe_source(src: dict[str, Any]) -> str:
    for key in ("path", "file", "name", "url"):
        if src.get(key):
            extra = f" [{src['split']}]" if src.get("split") else ""
            return f"{src.get('kind', 'source')} {src[key]}{extra}"
    return json.dumps(src, sort_keys=True)


# -- the cache ------------------------------------------------------------------------------------
def _cache_base() -> str:
    base = os.environ.get("ZARRTOK_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "zarrtok")
    return os.path.join(base, "stats")


def _read_json(path: str) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _write_json_atomic(path: str, data: dict[str, Any]) -> bool:
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".stats-", suffix=".tmp", dir=os.path.dirname(path))
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, separators=(",", ":"))
        os.replace(tmp, path)
        return True
    except OSError as exc:
        logger.debug("could not write stats cache %s: %s", path, exc)
        try:
            os.unlink(tmp)  # type: ignore[possibly-undefined]
        except (OSError, UnboundLocalError):
            pass
        return False


def _indices_are_store_entries() -> bool:
    """Whether the commit protocol treats ``<root>/indices`` as part of a store (it then overwrites and
    deletes stores holding one); until it does, statistics go to the local cache directory."""
    try:
        from ..storage.commit import STORE_ENTRIES
    except ImportError:  # pragma: no cover
        return False
    return INDICES_GROUP in STORE_ENTRIES


def _read_store_json(root: str, path: str) -> dict[str, Any] | None:
    """A JSON document stored as a uint8 Zarr array inside the store (like the tokenizer files)."""
    if not os.path.exists(os.path.join(root, path, "zarr.json")):
        return None
    try:
        import zarr

        arr = zarr.open_array(zarr.storage.LocalStore(root, read_only=True), path=path, mode="r")
        return json.loads(bytes(np.asarray(arr[:], dtype=np.uint8)))
    except Exception as exc:  # noqa: BLE001 - a damaged cache entry is recomputed, never fatal
        logger.debug("ignoring unreadable stats %s/%s: %s", root, path, exc)
        return None


def _write_store_json(root: str, path: str, data: dict[str, Any]) -> bool:
    """Write ``data`` as a uint8 Zarr array (CRC-32C like every store array) at ``root/path``, under
    plain Zarr groups, so the store stays a clean Zarr hierarchy. Written under a temporary name and
    renamed into place."""
    import shutil
    import uuid

    try:
        import zarr
        from zarr.codecs import Crc32cCodec

        payload = np.frombuffer(json.dumps(data, separators=(",", ":")).encode(), dtype=np.uint8)
        store = zarr.storage.LocalStore(root)
        parent = path.rpartition("/")[0]
        group = zarr.open_group(store, mode="a", path=INDICES_GROUP)
        for part in parent.split("/")[1:]:
            group = group.require_group(part)
        tmp = f"tmp-{uuid.uuid4().hex}"
        arr = group.create_array(tmp, shape=(payload.size,), chunks=(max(1, payload.size),), dtype="uint8",
                                 compressors=[Crc32cCodec()], filters=None, fill_value=0,
                                 config={"write_empty_chunks": True})
        arr[:] = payload
        final = os.path.join(root, path)
        if os.path.exists(final):
            shutil.rmtree(final, ignore_errors=True)
        os.rename(os.path.join(root, parent, tmp), final)
        return True
    except Exception as exc:  # noqa: BLE001 - fall back to the local cache
        logger.debug("could not write stats into %s: %s", root, exc)
        try:
            shutil.rmtree(os.path.join(root, parent, tmp), ignore_errors=True)  # type: ignore[possibly-undefined]
        except (NameError, UnboundLocalError):
            pass
        return False


# -- the mixin --------------------------------------------------------------------------------------
class AnalysisMixin:
    """Analysis methods of :class:`~zarrtok.read.store.TokenStore` (``self`` is the store)."""

    # ---- identity and cache ----
    def _content_key(self: TokenStore, split: str) -> str:
        """A digest of what the split's tokens are: its shard ids (content identities) in order."""
        info = self._split(split)
        parts = [self.manifest.fingerprint, split] + [
            f"{self.manifest.shard_key(split, s)}:{s.num_tokens}:{s.num_documents}" for s in info.shards]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]

    def _index_dir(self: TokenStore) -> str:
        """The store's derived-data folder for this generation: ``indices/<generation>`` (format-1
        stores: a digest of fingerprint + creation time)."""
        m = self.manifest
        return m.generation or hashlib.sha256(f"{m.fingerprint}|{m.created}".encode()).hexdigest()[:32]

    def _in_store_stats(self: TokenStore, split: str) -> tuple[str, str] | None:
        """``(root, array path)`` of the split's stats inside a writable local store, else None.
        Only while the storage layer counts ``indices`` as part of a store (so that a later
        ``build(overwrite=True)`` still recognises the store as zarrtok's)."""
        if not self.location.is_local or not _indices_are_store_entries():
            return None
        root = self.location.local_path
        if not os.access(root, os.W_OK):
            return None
        return root, f"{INDICES_GROUP}/{self._index_dir()}/stats-{split}.json"

    def _local_stats_path(self: TokenStore, split: str) -> str:
        return os.path.join(_cache_base(), f"{self._content_key(split)}-{split}.json")

    def _load_cached_stats(self: TokenStore, split: str) -> tuple[dict[str, Any] | None, str | None]:
        key = self._content_key(split)
        candidates: list[tuple[str, Any]] = []
        where = self._in_store_stats(split)
        if where is not None:
            candidates.append((os.path.join(*where), lambda: _read_store_json(*where)))
        local = self._local_stats_path(split)
        candidates.append((local, lambda: _read_json(local)))
        for path, read in candidates:
            data = read()
            if data and data.get("stats_version") == STATS_VERSION and data.get("key") == key:
                return data, path
        return None, None

    def _save_stats(self: TokenStore, split: str, data: dict[str, Any]) -> str | None:
        where = self._in_store_stats(split)
        if where is not None and _write_store_json(*where, data):
            return os.path.join(*where)
        local = self._local_stats_path(split)
        return local if _write_json_atomic(local, data) else None

    # ---- statistics ----
    def vocab_size(self: TokenStore) -> int:
        """Ids the tokenizer can produce (``max(len, max_id + 1)`` from the manifest; else the dtype's range)."""
        tok = self.manifest.tokenizer
        size = max(int(tok.get("len") or 0), int(tok.get("max_id") or -1) + 1)
        if size <= 0:
            size = 1 << 16 if self.dtype.itemsize == 2 else 1 << 17
        return size

    def stats(self: TokenStore, split: str = "train", seq_lens: Sequence[int] = DEFAULT_SEQ_LENS, *,
              progress: bool = True, refresh: bool = False, cache: bool = True) -> StoreStats:
        """Statistics of ``split``, computed chunk by chunk (memory: one read block plus one count per id):

        ``num_tokens``, ``num_documents``, ``empty_documents``, ``eos_count``, ``vocab_size``,
        ``distinct_tokens``, ``unused_ids``, ``token_counts`` (occurrences per id), ``document_length``
        (mean, std, min, max, ``quantiles``, log-spaced ``histogram``) and ``seq_lens``: per seq_len,
        windows, crossing fraction, documents per window, tail dropped and padding (see
        :func:`seq_len_stats`). Cached by the split's content (see the module doc); ``refresh=True``
        recomputes, ``cache=False`` neither reads nor writes the cache. A cached entry missing some
        seq_len gets it from the document offsets alone (no token is re-read).
        """
        seq_lens = [int(x) for x in seq_lens]
        key = self._content_key(split)
        data, path = (None, None) if (refresh or not cache) else self._load_cached_stats(split)
        changed = False
        if data is None:
            t0 = time.perf_counter()
            tokens = self.tokens(split)
            offsets = self.documents(split)
            counts = compute_token_counts(tokens, self.vocab_size(), progress=progress, desc=f"stats {split}")
            eos = self.eos_token_id
            doc = document_length_stats(offsets)
            data = {
                "stats_version": STATS_VERSION,
                "key": key,
                "url": self.url,
                "split": split,
                "fingerprint": self.fingerprint,
                "dtype": self.dtype.name,
                "num_tokens": len(tokens),
                "num_documents": int(offsets.size - 1),
                "empty_documents": doc["empty"],
                "eos_token_id": eos,
                "eos_count": int(counts[eos]) if eos is not None and eos < counts.size else 0,
                "vocab_size": int(counts.size),
                "distinct_tokens": int(np.count_nonzero(counts)),
                "unused_ids": int(counts.size - np.count_nonzero(counts)),
                "document_length": doc,
                "token_counts": counts.tolist(),
                "seq_lens": {},
                "seconds": time.perf_counter() - t0,
                "computed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            changed = True
        missing = [L for L in seq_lens if str(L) not in data["seq_lens"]]
        if missing:
            offsets = self.documents(split)
            for L in missing:
                data["seq_lens"][str(L)] = seq_len_stats(offsets, L)
            changed = True
        if changed and cache:
            path = self._save_stats(split, data)
        result = StoreStats(data)
        result["seq_lens"] = {str(L): data["seq_lens"][str(L)] for L in seq_lens}  # the ones asked for, in order
        result["cache_path"] = path
        return result

    # ---- decoding ----
    def decode(self: TokenStore, split: str, start: int = 0, stop: int | None = None) -> str:
        """The text of tokens ``[start, stop)`` of ``split`` (Python slice semantics), decoded with the
        stored tokenizer (special tokens kept, so document boundaries show as EOS)."""
        tokens = self.tokens(split)
        a, b, _ = slice(start, stop).indices(len(tokens))
        ids = tokens.read(a, max(a, b)).tolist()
        return self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def document_tokens(self: TokenStore, split: str, d: int, *, eos: bool = False) -> np.ndarray:
        """Token ids of document ``d`` (row ``d`` of the source split); its trailing EOS only with ``eos=True``."""
        offsets = self.documents(split)
        n = offsets.size - 1
        if not -n <= d < n:
            raise IndexError(f"document {d} out of range: split {split!r} has {n} documents")
        d = d % n
        a, b = int(offsets[d]), int(offsets[d + 1])
        ids = self.tokens(split).read(a, b)
        if (not eos and ids.size and self.eos_token_id is not None and self.config.get("use_eos_token", True)
                and int(ids[-1]) == self.eos_token_id):
            ids = ids[:-1]
        return ids

    def document(self: TokenStore, split: str, d: int, *, eos: bool = False) -> str:
        """The text of document ``d`` of ``split`` (the build's EOS removed unless ``eos=True``); for
        a lossless tokenizer (byte-level BPE) this is the source text."""
        ids = self.document_tokens(split, d, eos=eos).tolist()
        return self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    # ---- provenance ----
    def _provenance_table(self: TokenStore, split: str) -> dict[str, np.ndarray] | None:
        """Flattened provenance runs of the split in global document numbering, or None when any
        shard lacks them (or they do not add up to the shard's documents)."""
        cache = self.__dict__.setdefault("_provenance_tables", {})
        if split in cache:
            return cache[split]
        info = self._split(split)
        first_doc, source, first_row = [], [], []
        base = 0
        table: dict[str, np.ndarray] | None = None
        ok = bool(info.shards)
        for shard in info.shards:
            runs = shard.provenance
            if shard.num_documents and not runs:
                ok = False
                break
            if sum(int(r[2]) for r in runs) != shard.num_documents:
                logger.warning("%s: provenance of %s/%s does not add up to its %d documents; ignored",
                               self.url, split, shard.name, shard.num_documents)
                ok = False
                break
            pos = base
            for src, row, count in runs:
                if int(count) <= 0:
                    continue
                first_doc.append(pos)
                source.append(int(src))
                first_row.append(int(row))
                pos += int(count)
            base += shard.num_documents
        if ok:
            table = {"first_doc": np.asarray(first_doc, dtype=np.int64),
                     "source": np.asarray(source, dtype=np.int64),
                     "first_row": np.asarray(first_row, dtype=np.int64)}
        cache[split] = table
        return table

    def locate_documents(self: TokenStore, split: str, docs: Any) -> tuple[np.ndarray, np.ndarray]:
        """Vectorised provenance: ``(source_index, row)`` arrays for the documents ``docs`` of
        ``split``. Without recorded provenance, ``source_index`` is -1 and ``row`` is the document
        index within the split (which is the row of the split after the build's split rules)."""
        d = np.asarray(docs, dtype=np.int64)
        table = self._provenance_table(split)
        if table is None or table["first_doc"].size == 0:
            return np.full(d.shape, -1, dtype=np.int64), d.copy()
        run = np.searchsorted(table["first_doc"], d, side="right") - 1
        return table["source"][run], table["first_row"][run] + (d - table["first_doc"][run])

    def provenance(self: TokenStore, split: str, d: int) -> dict[str, Any]:
        """Where document ``d`` of ``split`` came from: ``{"source_index", "source"
        (the manifest's source record, or None), "row", "shard", "shard_document", "recorded"}``;
        without recorded provenance ``row`` is the document index within the split."""
        n = self.num_documents(split)
        if not -n <= d < n:
            raise IndexError(f"document {d} out of range: split {split!r} has {n} documents")
        d = d % n
        src, row = self.locate_documents(split, [d])
        shard_name, local = None, d
        for shard in self._split(split).shards:
            if local < shard.num_documents:
                shard_name = shard.name
                break
            local -= shard.num_documents
        s = int(src[0])
        sources = self.manifest.sources
        return {
            "document": d,
            "recorded": s >= 0,
            "source_index": s if s >= 0 else None,
            "source": dict(sources[s]) if 0 <= s < len(sources) else None,
            "row": int(row[0]),
            "shard": shard_name,
            "shard_document": int(local),
        }

    # ---- windows ----
    def explain(self: TokenStore, split: str, seq_len: int, index: int, *, text: bool = True) -> dict[str, Any]:
        """What training window ``index`` of ``seq_len`` (as ``TokenDataset``: tokens ``[i*L, i*L+L+1)``,
        inputs ``[:-1]``, labels ``[1:]``) is made of: per document it touches, its positions in the
        window (``window_start`` / ``window_stop`` index the window's ``L + 1`` tokens), which of its
        tokens (``doc_token_start`` / ``doc_token_stop``), whether the window holds its start / end,
        its provenance (``source``, ``row``, see :meth:`provenance`) and, with ``text=True``, the
        decoded piece."""
        L = int(seq_len)
        if L <= 0:
            raise ValueError(f"seq_len must be positive, got {seq_len}")
        n = self.num_tokens(split)
        windows = (n - 1) // L if n - 1 >= L else 0
        if not -windows <= index < windows:
            raise IndexError(f"window {index} out of range: {split!r} has {windows} windows of seq_len {L}")
        index = index % windows
        start, stop = index * L, index * L + L + 1
        offsets = self.documents(split)
        d0 = int(np.searchsorted(offsets, start, side="right")) - 1
        d1 = int(np.searchsorted(offsets, stop - 1, side="right")) - 1
        docs = [d for d in range(d0, d1 + 1) if offsets[d + 1] > offsets[d]]
        src, rows = self.locate_documents(split, docs)
        tokenizer = self.tokenizer if text else None
        tokens = self.tokens(split)
        out = []
        for d, s, r in zip(docs, src, rows):
            a, b = int(offsets[d]), int(offsets[d + 1])
            lo, hi = max(start, a), min(stop, b)
            entry = {
                "document": d,
                "doc_start": a,
                "doc_length": b - a,
                "window_start": lo - start,
                "window_stop": hi - start,
                "doc_token_start": lo - a,
                "doc_token_stop": hi - a,
                "is_start": a >= start,
                "is_end": b <= stop,
                "source_index": int(s) if s >= 0 else None,
                "source": dict(self.manifest.sources[s]) if 0 <= s < len(self.manifest.sources) else None,
                "row": int(r),
            }
            if tokenizer is not None:
                entry["text"] = tokenizer.decode(tokens.read(lo, hi).tolist(), skip_special_tokens=False,
                                                 clean_up_tokenization_spaces=False)
            out.append(entry)
        return {"split": split, "seq_len": L, "index": index, "windows": windows, "start": start, "stop": stop,
                "documents": out}

    # ---- search ----
    def find(self: TokenStore, split: str, text_or_ids: str | Sequence[int] | np.ndarray, *,
             max_hits: int | None = 1000, progress: bool = False, block: int = READ_BLOCK) -> np.ndarray:
        """Token positions where the sequence occurs in ``split`` (int64, ascending, at most
        ``max_hits``; ``None`` for all). A string is encoded with the stored tokenizer without
        special tokens; BPE tokens depend on context, so search for ``" word"`` (with the leading
        space) to find it mid-sentence, or pass ids. A scan block by block with an overlap of
        ``len(ids) - 1`` tokens; vectorised (candidates of the first id, narrowed id by id)."""
        if isinstance(text_or_ids, str):
            ids = np.asarray(self.tokenizer(text_or_ids, add_special_tokens=False)["input_ids"], dtype=np.int64)
        else:
            ids = np.asarray(text_or_ids, dtype=np.int64).ravel()
        m = int(ids.size)
        if m == 0:
            raise ValueError("find: empty probe")
        tokens = self.tokens(split)
        n = len(tokens)
        hits: list[np.ndarray] = []
        found = 0
        if m > n:
            return np.zeros(0, dtype=np.int64)
        info = np.iinfo(self.dtype)
        if ids.min() < info.min or ids.max() > info.max:
            return np.zeros(0, dtype=np.int64)
        probe = ids.astype(self.dtype)
        bar = _progress(n, f"find in {split}", progress)
        try:
            for a, b in _blocks(n, int(tokens.chunk_size or 0), max(block, m)):
                end = min(n, b + m - 1)
                data = tokens.read(a, end)
                limit = min(b - a, data.size - m + 1)  # matches starting in [a, b) only
                if limit > 0:
                    cand = np.flatnonzero(data[:limit] == probe[0])
                    for k in range(1, m):
                        if cand.size == 0:
                            break
                        cand = cand[data[cand + k] == probe[k]]
                    if cand.size:
                        hits.append(cand.astype(np.int64) + a)
                        found += cand.size
                if bar is not None:
                    bar.update(b - a)
                if max_hits is not None and found >= max_hits:
                    break
        finally:
            if bar is not None:
                bar.close()
        result = np.concatenate(hits) if hits else np.zeros(0, dtype=np.int64)
        return result[:max_hits] if max_hits is not None else result

    def find_documents(self: TokenStore, split: str, text_or_ids: str | Sequence[int] | np.ndarray, *,
                       max_hits: int | None = 1000, progress: bool = False) -> list[dict[str, Any]]:
        """:meth:`find` with each hit's document, its offset in the document and its provenance."""
        pos = self.find(split, text_or_ids, max_hits=max_hits, progress=progress)
        offsets = self.documents(split)
        docs = np.searchsorted(offsets, pos, side="right") - 1
        src, rows = self.locate_documents(split, docs)
        sources = self.manifest.sources
        return [{"position": int(p), "document": int(d), "offset": int(p - offsets[d]),
                 "source": dict(sources[s]) if 0 <= s < len(sources) else None, "row": int(r)}
                for p, d, s, r in zip(pos, docs, src, rows)]

"""The gigatoken fast path: byte-level BPE tokenizers encoded by ``gigatoken`` (same ids, verified).

``gigatoken`` (MIT, ``pip install gigatoken``) loads a ``tokenizer.json`` and runs its byte-level
BPE with a SIMD pre-tokenizer and a pre-token cache. Its core encoder (``encode_batch``) does not
run the whole Hugging Face pipeline, and some settings it loads without honouring them (measured
with gigatoken 0.10.0: BPE ``dropout``, ``end_of_word_suffix`` and ``continuing_subword_prefix``
are ignored, ``single_word`` added tokens split differently, and no post-processor adds its
tokens). So, as for the tiktoken path (:mod:`.fast_encoding`), it is only used when it provably
gives the tokenizer's ids:

1. **Shape check** (:func:`gigatoken_compatibility`): a ``BPE`` model without dropout, subword
   prefix/suffix or byte fallback; no normalizer; a ``ByteLevel`` pre-tokenizer, or a ``Split``
   regex followed by ``ByteLevel`` whose regex gigatoken implements; added tokens without
   ``single_word``; a post-processor that adds no ids (none, ``ByteLevel``), or — with
   ``add_special_tokens=True`` — a ``TemplateProcessing`` (or a ``Sequence`` of them) whose single
   template is special tokens around the sequence, which this module adds itself (a BOS, an EOS);
   anything else with ``add_special_tokens=True`` is refused. Then gigatoken must load the JSON.
2. **Verification on the actual corpus** (:func:`.fast_encoding.verify`): the first documents of
   every split, :data:`.fast_encoding.PROBES`, long documents and each added token in context are
   encoded both ways, ids and the assembled ``(tokens, lengths)`` compared; any difference and the
   build does not use it.

Threads (measured on the 2-vCPU build machine, gigatoken 0.10.0, ~20 MB generated corpus, 4.95M
tokens, a fresh tokenizer per run, batches of 1,000 documents, ids as numpy buffers; the machine
was shared with other work at load average ~7, so wall rates move by 2x between runs — the
per-CPU-second rates are the stable part): one thread encodes ~30M tokens per CPU-second (HF
``tokenizers``: ~0.4M per CPU-second on the same box), i.e. encoding is no longer where a build
spends its time (JSON parsing alone is slower; see benchmarks/README.md ``build_speed``). Wall
rates: ``parallel=False`` 14.8-17.6M tokens/s; ``parallel=True`` on 1 / 2 rayon threads
13.2-17.6M / 16.8-39.6M; 1 / 2 worker processes (one thread each) 9.4-12.0M / 8.3-9.2M. Neither
form of parallelism gained reliably on 2 contended cores. Hence: **one thread per zarrtok worker
process** (gigatoken's own default inside a multiprocessing worker or forked child: it also avoids
its documented deadlock in a pool built before ``fork``), and gigatoken's thread pool only in the
single-process build (``num_workers=1``), where the main thread waits for the encode anyway.
``encode_files(JsonlFileSource)`` (reading and parsing in Rust) ran at 2.4-3.5M tokens/s on the
same file against 4.3-5.4M for ``json.loads`` + ``encode_batch`` of the strings, and it returns the
whole corpus at once (no bounded memory, no split rules, one column only): not used.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np

from .tokenization import DocumentEncoder, plain_bpe_refusal

logger = logging.getLogger(__name__)

NAME = "gigatoken"

#: gigatoken caches the ids of every pre-token it has seen, per ``Tokenizer`` object, without a bound
#: (measured, 0.10.0: RSS +400 MB after 38 MB of text made of unique random words; +42 MB after the
#: 20 MB generated corpus, whose vocabulary is small). The encoder starts a fresh ``Tokenizer`` (which
#: frees the cache; ~20 ms) after this many characters of input, so a build's memory stays flat.
CACHE_RESET_CHARS = 32 * 1024 * 1024


def gigatoken_version() -> str | None:
    """The installed gigatoken version, or ``None`` when it cannot be imported."""
    try:
        import gigatoken  # noqa: F401
    except Exception:  # ImportError, or a broken wheel on this platform
        return None
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gigatoken")
    except PackageNotFoundError:  # pragma: no cover - imported but not installed as a distribution
        return "unknown"


def _post_processor_ids(post: dict[str, Any] | None) -> tuple[list[int], list[int]] | str:
    """``(prefix_ids, suffix_ids)`` a post-processor adds around one sequence, or the reason it
    cannot be reproduced."""
    if not post or post.get("type") == "ByteLevel":
        return [], []
    kind = post.get("type")
    if kind == "Sequence":
        prefix: list[int] = []
        suffix: list[int] = []
        for sub in post.get("processors") or []:
            got = _post_processor_ids(sub)
            if isinstance(got, str):
                return got
            prefix, suffix = prefix + got[0], suffix + got[1]
        return prefix, suffix
    if kind == "TemplateProcessing":
        specials = post.get("special_tokens") or {}
        prefix, suffix, sequences = [], [], 0
        for item in post.get("single") or []:
            if "Sequence" in item:
                if item["Sequence"].get("id") != "A":
                    return f"the TemplateProcessing single template uses sequence {item['Sequence'].get('id')!r}"
                sequences += 1
            elif "SpecialToken" in item:
                name = item["SpecialToken"].get("id")
                if name not in specials:
                    return f"the TemplateProcessing special token {name!r} is not defined"
                (suffix if sequences else prefix).extend(int(i) for i in specials[name].get("ids") or [])
            else:
                return f"the TemplateProcessing single template has an item {item!r}"
        if sequences != 1:
            return f"the TemplateProcessing single template holds {sequences} sequences, not one"
        return prefix, suffix
    return f"the post-processor ({kind}) may add ids"


def gigatoken_compatibility(tokenizer_json: str, *, add_special_tokens: bool) -> tuple[dict[str, Any] | None, str]:
    """``(spec, "")`` when the tokenizer has a shape gigatoken reproduces, else ``(None, reason)``.

    ``spec`` holds ``prefix`` and ``suffix``: the ids the post-processor adds around each document
    (empty without ``add_special_tokens``).
    """
    if gigatoken_version() is None:
        return None, "gigatoken is not installed (or cannot be imported on this platform)"
    spec = json.loads(tokenizer_json)
    refusal = plain_bpe_refusal(spec)
    if refusal:
        return None, refusal
    pre = spec.get("pre_tokenizer") or {}
    if pre.get("type") == "Sequence":
        parts = pre.get("pretokenizers") or []
        if not (len(parts) == 2 and parts[0].get("type") == "Split" and parts[1].get("type") == "ByteLevel"
                and parts[0].get("behavior") == "Isolated" and not parts[0].get("invert")
                and not parts[1].get("use_regex", True)):
            return None, "the pre-tokenizer is not Split(regex, Isolated) + ByteLevel(use_regex=False)"
    elif pre.get("type") != "ByteLevel":
        return None, f"the pre-tokenizer {pre.get('type')!r} is not byte-level"
    for tok in spec.get("added_tokens") or []:
        if tok.get("single_word"):
            return None, f"added token {tok.get('content')!r} uses single_word"
    if add_special_tokens:
        ids = _post_processor_ids(spec.get("post_processor"))
        if isinstance(ids, str):
            return None, ids
        prefix, suffix = ids
    else:
        prefix, suffix = [], []
    try:
        _load(tokenizer_json)
    except Exception as exc:  # gigatoken refuses what it does not implement (e.g. an unknown Split regex)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return None, f"gigatoken cannot load it: {first}"
    return {"prefix": prefix, "suffix": suffix}, ""


def _load(tokenizer_json: str):
    import gigatoken

    return gigatoken.Tokenizer.from_json(tokenizer_json)


class GigatokenDocumentEncoder(DocumentEncoder):
    """:class:`~zarrtok.ingest.tokenization.DocumentEncoder` with gigatoken doing the BPE (same output).

    Picklable by value (carries the tokenizer JSON; gigatoken is rebuilt lazily per process).
    ``encode`` never builds per-token Python objects: gigatoken's ids arrive as one ``uint32``
    buffer plus offsets, and the post-processor's ids and EOS are inserted with numpy.
    """

    name = NAME

    def __init__(self, tokenizer_json: str, *, eos_token_id: int | None, add_special_tokens: bool, dtype: str):
        spec, reason = gigatoken_compatibility(tokenizer_json, add_special_tokens=add_special_tokens)
        if spec is None:
            raise ValueError(f"the gigatoken fast path cannot reproduce this tokenizer: {reason}")
        super().__init__(tokenizer_json, eos_token_id=eos_token_id, add_special_tokens=add_special_tokens, dtype=dtype)
        self.prefix = np.asarray(spec["prefix"], dtype=np.int64)
        self.suffix = np.asarray(spec["suffix"], dtype=np.int64)
        self._gigatoken = None
        self._chars = 0  # input characters since the gigatoken object (and its cache) was created

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_gigatoken"] = None  # rebuilt from the JSON in the worker
        state["_chars"] = 0
        return state

    @property
    def gigatoken(self):
        if self._gigatoken is None:
            self._gigatoken = _load(self.tokenizer_json)
        return self._gigatoken

    def _encode_flat(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """gigatoken's ids of ``texts`` without the post-processor's: ``(uint32 ids, int64 offsets)``.

        ``parallel=None``: gigatoken's own thread pool in the main process, one thread inside a
        worker process (zarrtok's workers are then the parallelism; see the module docstring)."""
        layout = self.gigatoken.encode_batch(texts).layout
        offsets = np.asarray(layout.offsets, dtype=np.int64)
        ids = np.asarray(layout.content.data)
        if offsets.size and offsets[0]:
            ids, offsets = ids[offsets[0]:], offsets - offsets[0]
        return ids[: offsets[-1] if offsets.size else 0], offsets

    def encode_ids(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, as ``tokenizer(text)["input_ids"]`` gives them (verification only)."""
        ids, offsets = self._encode_flat(list(texts))
        pre, suf = self.prefix.tolist(), self.suffix.tolist()
        return [pre + ids[a:b].tolist() + suf for a, b in zip(offsets[:-1], offsets[1:])]

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(tokens, lengths)`` as :meth:`DocumentEncoder.encode` gives them: tokens of all documents in
        order, EOS after each non-empty one when enabled; empty documents contribute nothing."""
        texts = list(texts)
        lengths = np.zeros(len(texts), dtype=np.int64)
        chars = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
        nonempty = np.flatnonzero(chars)
        if nonempty.size == 0:
            return np.zeros(0, dtype=self.dtype), lengths
        self._chars += int(chars.sum())
        if self._chars > CACHE_RESET_CHARS:  # bound gigatoken's pre-token cache (see CACHE_RESET_CHARS)
            self._gigatoken, self._chars = None, int(chars.sum())
        if nonempty.size < len(texts):
            texts = [texts[i] for i in nonempty]
        ids, offsets = self._encode_flat(texts)
        if ids.size:
            top = int(ids.max())
            if top > np.iinfo(self.dtype).max:
                raise OverflowError(
                    f"token id {top} does not fit the store dtype {self.dtype}; "
                    "the tokenizer produced an id beyond its declared vocabulary"
                )
        extra = [int(i) for i in self.prefix] + [int(i) for i in self.suffix]
        eos = self.eos_token_id
        if eos is not None:
            extra.append(int(eos))
        if extra and max(extra) > np.iinfo(self.dtype).max:
            raise OverflowError(f"token id {max(extra)} does not fit the store dtype {self.dtype}")
        counts = np.diff(offsets) + len(extra)
        lengths[nonempty] = counts
        if not extra:
            return ids.astype(self.dtype, copy=False), lengths
        # Vectorised assembly: every document becomes prefix + ids + suffix + [eos] in one output array.
        ends = np.cumsum(counts)
        starts = ends - counts
        out = np.empty(int(ends[-1]), dtype=self.dtype)
        keep = np.ones(out.size, dtype=bool)
        fixed = [(starts + j, v) for j, v in enumerate(self.prefix.tolist())]
        tail = self.suffix.tolist() + ([int(eos)] if eos is not None else [])
        fixed += [(ends - len(tail) + j, v) for j, v in enumerate(tail)]
        for positions, value in fixed:
            out[positions] = value
            keep[positions] = False
        out[keep] = ids
        return out, lengths


def describe(encoder: GigatokenDocumentEncoder) -> str:
    """``gigatoken==X`` for the manifest (the builder adds what it was verified against)."""
    return f"{NAME}=={gigatoken_version()}"

"""A guarded fast path for the build: byte-level BPE tokenizers re-expressed as a ``tiktoken`` encoding.

Hugging Face ``tokenizers`` encodes ~0.45M tokens/s per thread on these machines; ``tiktoken`` runs
the same byte-level BPE at ~2M. It is only used when it provably gives the same ids:

1. **Shape check** (:func:`tiktoken_compatibility`): a ``BPE`` model without dropout, byte
   fallback, subword prefix/suffix; no normalizer; a ``ByteLevel`` pre-tokenizer with its GPT-2
   regex (``use_regex=True``) and no added prefix space, or a ``Split`` regex followed by a
   regex-free ``ByteLevel``; a post-processor that adds no ids (none, ``ByteLevel``, or any when
   ``add_special_tokens=False``); added tokens without ``lstrip``/``rstrip``/``single_word``;
   all 256 single bytes in the vocabulary, and merges whose results have increasing ids (so the
   merge priority equals tiktoken's rank order).
2. **Verification on the actual corpus** (:func:`verify`): the first documents of every split plus
   adversarial probes are encoded both ways; any difference and the build uses Hugging Face.

The store's manifest records which encoder produced it (``encoder``). ``build(encoder="hf")`` opts
out; ``encoder="tiktoken"`` insists (an error naming the reason when it cannot be used). The same
gate (:func:`verify`, :func:`fast_encoder`) guards the gigatoken path (:mod:`.gigatoken_encoding`),
which ``encoder="auto"`` prefers (:data:`FAST_ENCODERS`: gigatoken, then tiktoken, then HF).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Iterable

import numpy as np

from .tokenization import DocumentEncoder, plain_bpe_refusal

logger = logging.getLogger(__name__)

#: The GPT-2 pre-tokenizer regex, as ``tokenizers``' ByteLevel(use_regex=True) applies it.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

#: Texts every verification includes besides the corpus sample (unicode, whitespace, specials, ...).
PROBES = [
    "", " ", "  ", "\n", "\n\n\n", "\t", " \t\n ", "a", "hello world", "  leading", "trailing  ",
    "it's they're we've I'm you'll he'd 's 't", "numbers 123 4567 3.14159 1,000,000",
    "naïve café Zürich 東京 Ελληνικά русский עברית 🙂🚀 e\u0301 \u00a0nbsp \u2009thin \u3000ideographic",
    "tabs\tand\nnewlines\r\nand   runs    of     spaces", "x" * 300, "emoji 🙂🙂🙂🙂", "\x00\x07\x1b control",
    "punct!!! ??? ... --- ((( ))) [[[ ]]] {{{ }}}",
    "mixed123abc ABC_def-ghi/jkl",
    # very long documents: one long piece, and ~170k characters of mixed text (many pieces)
    "x" * 20_000, "naïve café 東京 it's  \n\t 123 🙂 " * 6_000,
]


def added_token_probes(tokenizer_json: str, limit: int = 64) -> list[str]:
    """Each added (special) token of the tokenizer in context: alone, repeated, between words and
    whitespace (where ``lstrip``/``rstrip`` and the split around special tokens matter)."""
    tokens = [t.get("content") for t in (json.loads(tokenizer_json).get("added_tokens") or [])][:limit]
    out = []
    for tok in tokens:
        if tok:
            out += [tok, tok + tok, f"before{tok}after", f" {tok} ", f"a  {tok}\n b", f"{tok}'s {tok}123"]
    return out


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map (what byte-level BPE vocabularies are written in)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _is_byte_level(component: dict[str, Any] | None) -> bool:
    return bool(component) and component.get("type") == "ByteLevel"


def tiktoken_compatibility(tokenizer_json: str, *, add_special_tokens: bool) -> tuple[dict[str, Any] | None, str]:
    """``(spec, "")`` when the tokenizer has a shape tiktoken reproduces, else ``(None, reason)``.

    ``spec`` holds what :func:`make_encoding` needs: ``pattern``, ``ranks`` (bytes -> id) and
    ``special`` (added token text -> id).
    """
    try:
        import tiktoken  # noqa: F401
    except ImportError:
        return None, "tiktoken is not installed"
    spec = json.loads(tokenizer_json)
    refusal = plain_bpe_refusal(spec)
    if refusal:
        return None, refusal
    model = spec["model"]
    pre = spec.get("pre_tokenizer") or {}
    if _is_byte_level(pre):
        if pre.get("add_prefix_space") or not pre.get("use_regex", True):
            return None, "the ByteLevel pre-tokenizer adds a prefix space or has no regex"
        pattern = GPT2_PATTERN
    elif pre.get("type") == "Sequence" and len(pre.get("pretokenizers", [])) == 2:
        split, byte_level = pre["pretokenizers"]
        regex = (split.get("pattern") or {}).get("Regex")
        if (split.get("type") != "Split" or regex is None or split.get("behavior") != "Isolated" or split.get("invert")
                or not _is_byte_level(byte_level) or byte_level.get("use_regex") or byte_level.get("add_prefix_space")):
            return None, "the pre-tokenizer is not Split(regex, Isolated) + ByteLevel(use_regex=False)"
        pattern = regex
    else:
        return None, f"the pre-tokenizer {pre.get('type')!r} is not byte-level"
    post = spec.get("post_processor")
    if add_special_tokens and post and not _is_byte_level(post):
        return None, f"the post-processor ({post.get('type')}) may add ids"
    special: dict[str, int] = {}
    for tok in spec.get("added_tokens") or []:
        if tok.get("lstrip") or tok.get("rstrip") or tok.get("single_word"):
            return None, f"added token {tok.get('content')!r} uses lstrip/rstrip/single_word"
        special[tok["content"]] = int(tok["id"])
    byte_of = {c: b for b, c in _bytes_to_unicode().items()}
    ranks: dict[bytes, int] = {}
    for text, token_id in model.get("vocab", {}).items():
        if text in special and special[text] == token_id:
            continue  # added tokens are split off before BPE; tiktoken handles them as special tokens
        try:
            key = bytes(byte_of[c] for c in text)
        except KeyError:
            return None, f"vocabulary entry {text!r} is not byte-level"
        if key in ranks:
            return None, f"two vocabulary entries decode to the same bytes {key!r}"
        ranks[key] = int(token_id)
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        return None, f"{len(missing)} single bytes are missing from the vocabulary (e.g. {missing[0]})"
    last = -1
    for merge in model.get("merges", []):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        merged = model["vocab"].get(left + right)
        if merged is None or merged <= last:
            return None, "merge priorities do not follow the ids of the merged tokens"
        last = merged
    if set(ranks.values()) & set(special.values()):
        return None, "an added token shares its id with a vocabulary entry"
    return {"pattern": pattern, "ranks": ranks, "special": special}, ""


def make_encoding(spec: dict[str, Any]):
    """The ``tiktoken.Encoding`` of a compatible tokenizer (from :func:`tiktoken_compatibility`)."""
    import tiktoken

    return tiktoken.Encoding(name="zarrtok-bpe", pat_str=spec["pattern"], mergeable_ranks=spec["ranks"],
                             special_tokens=spec["special"])


class TiktokenDocumentEncoder(DocumentEncoder):
    """:class:`~zarrtok.tokenization.DocumentEncoder` with tiktoken doing the BPE (same output).

    Picklable by value (carries the tokenizer JSON; the encoding is rebuilt lazily per process).
    """

    name = "tiktoken"

    def __init__(self, tokenizer_json: str, *, eos_token_id: int | None, add_special_tokens: bool, dtype: str):
        spec, reason = tiktoken_compatibility(tokenizer_json, add_special_tokens=add_special_tokens)
        if spec is None:
            raise ValueError(f"the tiktoken fast path cannot reproduce this tokenizer: {reason}")
        super().__init__(tokenizer_json, eos_token_id=eos_token_id, add_special_tokens=add_special_tokens, dtype=dtype)
        self._spec: dict[str, Any] | None = spec
        self._encoding = None

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_spec"] = state["_encoding"] = None  # rebuilt from the JSON in the worker
        return state

    @property
    def encoding(self):
        if self._encoding is None:
            if self._spec is None:
                self._spec, _ = tiktoken_compatibility(self.tokenizer_json, add_special_tokens=self.add_special_tokens)
            self._encoding = make_encoding(self._spec)
        return self._encoding

    def encode_ids(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, as ``tokenizer(text)["input_ids"]`` gives them. In the main process
        (a ``num_workers=1`` build) on every usable core through ``Encoding.encode_batch`` (the same
        ``encode`` per text, in threads: tiktoken releases the GIL); in a worker process one thread,
        the workers being the parallelism (as for gigatoken)."""
        texts = list(texts)
        threads = _encode_threads()
        if threads > 1 and len(texts) > 1:
            return self.encoding.encode_batch(texts, num_threads=threads, allowed_special="all")
        encode = self.encoding.encode
        return [encode(t, allowed_special="all") for t in texts]


def _encode_threads() -> int:
    """Threads for a fast encoder's batch: the usable cores in the main process, 1 in a worker
    (a ``multiprocessing`` child: pool and Dask workers)."""
    import multiprocessing

    if multiprocessing.parent_process() is not None:
        return 1
    try:
        return max(1, min(8, len(os.sched_getaffinity(0))))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, min(8, os.cpu_count() or 1))


def verification_texts(sample: Iterable[str], tokenizer_json: str) -> list[str]:
    """What :func:`verify` encodes both ways: the non-empty corpus sample, :data:`PROBES` and
    :func:`added_token_probes`."""
    return [t for t in list(sample) + PROBES + added_token_probes(tokenizer_json) if t]


def verify(fast: DocumentEncoder, reference: Any, texts: Iterable[str]) -> tuple[bool, str]:
    """Encode ``texts`` (plus :data:`PROBES` and the tokenizer's added tokens in context) with both
    encoders; ``(True, "")`` when every id matches — per text, and in the assembled ``encode()``
    output with EOS and empty documents — else ``(False, description of the first difference)``."""
    name = getattr(fast, "name", "tiktoken")
    sample = verification_texts(texts, fast.tokenizer_json)
    got = fast.encode_ids(sample)
    want = DocumentEncoder.encode_ids(reference, sample)
    for i, (a, b) in enumerate(zip(got, want)):
        if a != b:
            j = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            return False, f"text {i} ({sample[i][:60]!r}...) differs at token {j}: {name} {a[j:j + 5]} vs hf {b[j:j + 5]}"
    # The assembly (EOS, empty documents, dtype) on a few texts: the ids of every text are compared
    # above; re-encoding 400 of them with the reference took ~0.7 s of a 1 GB build's planning
    # (profile: 2.56 s for the two reference encodes of 1,027 + 402 texts).
    with_empty = ["", *sample[:16], "", *sample[16:32], ""]
    got_tokens, got_lengths = fast.encode(with_empty)
    want_tokens, want_lengths = DocumentEncoder.encode(reference, with_empty)
    if not (np.array_equal(got_lengths, want_lengths) and np.array_equal(got_tokens, want_tokens)
            and got_tokens.dtype == want_tokens.dtype):
        return False, f"the assembled tokens of encode() differ: {name} vs hf"
    return True, ""


#: The fast paths ``encoder="auto"`` tries, in order of preference (then Hugging Face).
FAST_ENCODERS = ("gigatoken", "tiktoken")


def fast_encoder(name: str, tokenizer_json: str, reference: DocumentEncoder, *, reference_name: str,
                 sample: list[str], eos_token_id: int | None, add_special_tokens: bool, dtype: str
                 ) -> tuple[DocumentEncoder | None, str, bool]:
    """The verified fast encoder ``name`` (``"gigatoken"`` or ``"tiktoken"``) for a build.

    Returns ``(encoder, description, False)`` when its shape check passes and it gives the ids of
    ``reference`` (Hugging Face) on :func:`verification_texts` — ``description`` is what the
    manifest records, e.g. ``"gigatoken==0.10.0 (verified against hf-tokenizers==0.23.3 on 1042
    texts)"`` — else ``(None, reason, differs)``, where
    ``differs`` tells a verification difference (worth a warning) from an unsupported shape or a
    missing package."""
    if name == "gigatoken":
        from . import gigatoken_encoding as module

        cls, version = module.GigatokenDocumentEncoder, module.gigatoken_version
    elif name == "tiktoken":
        cls, version = TiktokenDocumentEncoder, _tiktoken_version
    else:
        raise ValueError(f"unknown fast encoder {name!r}")
    try:  # the constructor runs the shape check
        fast = cls(tokenizer_json, eos_token_id=eos_token_id, add_special_tokens=add_special_tokens, dtype=dtype)
    except ValueError as exc:
        return None, str(exc), False
    ok, difference = verify(fast, reference, sample)
    if not ok:
        return None, f"the {name} fast path differs from the tokenizer on this corpus: {difference}", True
    n = len(verification_texts(sample, tokenizer_json))
    return fast, f"{name}=={version()} (verified against {reference_name} on {n} texts)", False


def _tiktoken_version() -> str:
    import tiktoken

    return tiktoken.__version__

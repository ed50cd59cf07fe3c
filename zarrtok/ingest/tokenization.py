"""Tokenizers: loading, serialising as ``tokenizer.json`` (never pickle), and batched encoding.

The build encodes with the tokenizer's Rust backend (``tokenizers.Tokenizer``), which is what a
``transformers`` fast tokenizer calls underneath, so ``store tokens == tokenizer(doc)["input_ids"]
+ [eos]`` for every non-empty document.
"""

from __future__ import annotations

import logging
import os
import tempfile
from itertools import chain
from typing import TYPE_CHECKING, Any

import numpy as np
import tokenizers

if TYPE_CHECKING:  # transformers is imported by the driver only (load_tokenizer): a worker encoding from
    # tokenizer.json never needs it (measured: a spawned worker's import of this module 2.1 s -> ~0.4 s)
    from transformers import PreTrainedTokenizerBase

from ..format import dtype_for_max_id
from ..read.tokenizer import ALLOWED_FILES, tokenizer_json_digest

logger = logging.getLogger(__name__)



def load_tokenizer(tokenizer: Any = None, tokenizer_name: str | os.PathLike | None = None) -> PreTrainedTokenizerBase:
    """Return a fast ``transformers`` tokenizer from an instance, a hub name or a local directory."""
    if tokenizer is not None and tokenizer_name is not None:
        raise ValueError("pass either `tokenizer` or `tokenizer_name`, not both")
    if tokenizer is None and tokenizer_name is None:
        raise ValueError("a tokenizer is required: pass `tokenizer` (an instance) or `tokenizer_name` (name or path)")
    import transformers  # (AutoTokenizer imports torch, through transformers' configuration module)
    from transformers import PreTrainedTokenizerBase
    if tokenizer is None or isinstance(tokenizer, (str, os.PathLike)):
        name = os.fspath(tokenizer_name if tokenizer is None else tokenizer)
        if _plain_fast_directory(name):
            tokenizer = transformers.PreTrainedTokenizerFast.from_pretrained(name)
        else:
            tokenizer = transformers.AutoTokenizer.from_pretrained(name)
    elif isinstance(tokenizer, tokenizers.Tokenizer):
        tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer)
    if not isinstance(tokenizer, PreTrainedTokenizerBase):
        raise TypeError(f"unsupported tokenizer type {type(tokenizer).__name__}: expected a transformers tokenizer")
    if not getattr(tokenizer, "is_fast", False) or getattr(tokenizer, "backend_tokenizer", None) is None:
        raise TypeError(
            f"{type(tokenizer).__name__} is not a fast tokenizer: zarrtok stores tokenizers as tokenizer.json "
            "and encodes with the `tokenizers` backend; load it with use_fast=True"
        )
    return tokenizer


#: ``tokenizer_class`` values for which ``AutoTokenizer`` resolves to ``PreTrainedTokenizerFast`` itself
#: (transformers 5: ``TokenizersBackend``, of which ``PreTrainedTokenizerFast`` is the alias)
_PLAIN_FAST_CLASSES = {"PreTrainedTokenizerFast", "TokenizersBackend"}


def _plain_fast_directory(path: str) -> bool:
    """A local tokenizer directory that ``AutoTokenizer`` would load as the generic fast tokenizer:
    ``tokenizer.json`` and a ``tokenizer_config.json`` naming that class, no remote code (``auto_map``).
    Loaded with ``PreTrainedTokenizerFast.from_pretrained`` directly, the same object (same class, files
    and ids) without ``AutoTokenizer``'s import of the model configuration module, which imports torch
    (measured, transformers 5.23 / torch 2.13 on the 2-core machine: 3.8 s and ~200 MB RSS -> 1.3 s, no
    torch; a forked pool's workers inherit the driver's pages, so this is the whole build's saving)."""
    import json

    if not (os.path.isdir(path) and os.path.isfile(os.path.join(path, "tokenizer.json"))):
        return False
    try:
        with open(os.path.join(path, "tokenizer_config.json"), encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError):
        return False
    return (isinstance(config, dict) and config.get("tokenizer_class") in _PLAIN_FAST_CLASSES
            and "auto_map" not in config)


def backend_json(tokenizer: PreTrainedTokenizerBase) -> str:
    """The backend tokenizer serialised as JSON, with truncation and padding switched off."""
    backend = tokenizers.Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.no_truncation()
    backend.no_padding()
    return backend.to_str()


def tokenizer_digest(tokenizer: PreTrainedTokenizerBase) -> str:
    """SHA-256 of everything in the tokenizer that decides token ids (what the manifest records and
    :func:`zarrtok.read.tokenizer.tokenizer_from_files` checks on load)."""
    return tokenizer_json_digest(backend_json(tokenizer))


def max_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """Largest id the tokenizer can produce: from ``len(tokenizer)`` and the backend vocabulary with added tokens."""
    backend_size = tokenizer.backend_tokenizer.get_vocab_size(with_added_tokens=True)
    ids = list(tokenizer.get_vocab().values())
    return max(len(tokenizer), backend_size, (max(ids) + 1) if ids else 0) - 1


def choose_dtype(tokenizer: PreTrainedTokenizerBase) -> np.dtype:
    """``uint16`` when every id fits, else ``uint32`` (never chosen from ``vocab_size`` alone)."""
    return dtype_for_max_id(max_token_id(tokenizer))


def tokenizer_summary(tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    """Small JSON-able description of a tokenizer for the store manifest."""
    return {
        "class": type(tokenizer).__name__,
        "name_or_path": str(getattr(tokenizer, "name_or_path", "") or ""),
        "len": len(tokenizer),
        "max_id": max_token_id(tokenizer),
        "eos_token": tokenizer.eos_token,
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "sha256": tokenizer_digest(tokenizer),
    }


def tokenizer_files(tokenizer: PreTrainedTokenizerBase) -> dict[str, bytes]:
    """The tokenizer's files as written by ``save_pretrained`` (``tokenizer.json``, its config, a chat
    template...), never a pickle."""
    with tempfile.TemporaryDirectory(prefix="zarrtok-tok-") as tmp:
        tokenizer.save_pretrained(tmp)
        files = {}
        for name in sorted(os.listdir(tmp)):
            path = os.path.join(tmp, name)
            if not os.path.isfile(path) or name not in ALLOWED_FILES:
                continue  # only data files readers accept: never pickles or code
            with open(path, "rb") as f:
                files[name] = f.read()
    if "tokenizer.json" not in files:
        files["tokenizer.json"] = tokenizer.backend_tokenizer.to_str().encode("utf-8")
    return files


def plain_bpe_refusal(spec: dict[str, Any]) -> str | None:
    """Why a parsed ``tokenizer.json`` is not a plain BPE model that a fast path (tiktoken, gigatoken)
    can reproduce — no dropout, subword affixes, byte fallback or normalizer — or ``None``. Each fast
    path then checks its own pre-tokenizer and post-processor shapes."""
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        return f"the model is {model.get('type')!r}, not BPE"
    for key in ("dropout", "continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(key):
            return f"the BPE model sets {key}={model[key]!r}"
    if model.get("byte_fallback"):
        return "the BPE model uses byte_fallback (SentencePiece-style), not byte-level BPE"
    if spec.get("normalizer"):
        return f"the tokenizer has a normalizer ({spec['normalizer'].get('type')})"
    return None


class DocumentEncoder:
    """Encodes batches of document texts into one flat token array plus per-document token counts.

    Picklable by value (it carries the tokenizer as JSON), so worker processes can rebuild it.
    """

    def __init__(self, tokenizer_json: str, *, eos_token_id: int | None, add_special_tokens: bool, dtype: str):
        self.tokenizer_json = tokenizer_json
        self.eos_token_id = eos_token_id
        self.add_special_tokens = add_special_tokens
        self.dtype = np.dtype(dtype)
        self._backend: tokenizers.Tokenizer | None = None

    @property
    def backend(self) -> tokenizers.Tokenizer:
        if self._backend is None:
            self._backend = tokenizers.Tokenizer.from_str(self.tokenizer_json)
        return self._backend

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_backend"] = None
        return state

    def encode_ids(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, as ``tokenizer(text)["input_ids"]`` gives them."""
        return [e.ids for e in self.backend.encode_batch_fast(texts, add_special_tokens=self.add_special_tokens)]

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(tokens, lengths)``: tokens of all documents in order (EOS after each non-empty
        one when enabled) and each document's token count. Empty documents contribute nothing."""
        lengths = np.zeros(len(texts), dtype=np.int64)
        nonempty = [i for i, t in enumerate(texts) if t]
        if not nonempty:
            return np.zeros(0, dtype=self.dtype), lengths
        id_lists = self.encode_ids([texts[i] for i in nonempty])
        eos = self.eos_token_id
        if eos is not None:
            for ids in id_lists:
                ids.append(eos)
        counts = np.fromiter((len(ids) for ids in id_lists), dtype=np.int64, count=len(id_lists))
        lengths[nonempty] = counts
        total = int(counts.sum())
        flat = np.fromiter(chain.from_iterable(id_lists), dtype=np.int64, count=total)
        if total:
            top = int(flat.max())
            if top > np.iinfo(self.dtype).max or int(flat.min()) < 0:
                raise OverflowError(
                    f"token id {top} does not fit the store dtype {self.dtype}; "
                    "the tokenizer produced an id beyond its declared vocabulary"
                )
        return flat.astype(self.dtype), lengths

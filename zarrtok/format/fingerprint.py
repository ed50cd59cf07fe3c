"""The store fingerprint: a SHA-256 of everything that determines the tokens.

``FINGERPRINTED_FIELDS`` is the declared list of what goes in; a build that finds a store with the
same fingerprint at its output reuses it instead of encoding again. What is deliberately *not* in
it: the encoder that ran (every encoder is verified to give the same ids), ``num_workers``,
``batch_size``, chunk and shard sizes (they change the layout, not the token stream).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

#: The keys of the payload :func:`compute_fingerprint` hashes (a build passes exactly these).
FINGERPRINTED_FIELDS = (
    "format_version",  # the on-disk format the tokens are written in
    "source",  # source identity: builder/name, config, revision, data files (size + mtime), datasets fingerprints
    "tokenizer_sha256",  # digest of the tokenizer's files
    "dtype",  # uint16 / uint32
    "columns",
    "column_separator",
    "use_eos_token",
    "eos_token_id",
    "add_special_tokens",
    "validation_split",
    "test_split",
    "seed",
    "shuffle",
    "splits",
)


def compute_fingerprint(payload: dict[str, Any]) -> str:
    """SHA-256 over the canonical JSON of ``payload`` (whose keys must be :data:`FINGERPRINTED_FIELDS`)."""
    missing = set(FINGERPRINTED_FIELDS) - set(payload)
    extra = set(payload) - set(FINGERPRINTED_FIELDS)
    if missing or extra:
        raise ValueError(f"fingerprint payload mismatch: missing {sorted(missing)}, undeclared {sorted(extra)}")
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def appended_fingerprint(base: str, appended: str) -> str:
    """The fingerprint of a store after an append: SHA-256 of the canonical JSON
    ``{"append": <the appended source's build fingerprint>, "base": <the store's before>}`` (so the
    same appends in the same order give the same fingerprint)."""
    canonical = json.dumps({"append": appended, "base": base}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

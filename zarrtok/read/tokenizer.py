"""Restoring a store's tokenizer safely: only the JSON files zarrtok writes, no remote code, and a
digest check against the manifest.

A store pulled from a shared bucket is data, never code: file names outside :data:`ALLOWED_FILES`
are refused, ``auto_map`` entries (which make ``transformers`` offer to import Python from the
directory) are dropped, ``trust_remote_code=False`` is passed explicitly, and the restored
``tokenizer.json`` must hash to the ``sha256`` the manifest recorded at build time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from typing import Any

from ..errors import IncompleteStoreError

logger = logging.getLogger(__name__)

#: The tokenizer files a store may hold (what ``save_pretrained`` of a fast tokenizer writes).
ALLOWED_FILES = frozenset({"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                           "chat_template.jinja", "chat_template.json", "vocab.json", "merges.txt", "vocab.txt"})


def tokenizer_json_digest(tokenizer_json: str) -> str:
    """SHA-256 of everything in a ``tokenizer.json`` that decides token ids (truncation and padding
    switched off, canonical JSON)."""
    import tokenizers

    backend = tokenizers.Tokenizer.from_str(tokenizer_json)
    backend.no_truncation()
    backend.no_padding()
    canonical = json.dumps(json.loads(backend.to_str()), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def check_tokenizer_files(files: dict[str, bytes], *, expected_sha256: str | None, where: str) -> dict[str, bytes]:
    """Validate stored tokenizer files; return them with any ``auto_map`` removed from the config."""
    for name in files:
        if name not in ALLOWED_FILES:
            raise IncompleteStoreError(
                f"{where}: unexpected tokenizer file {name!r} in the store (allowed: {sorted(ALLOWED_FILES)}); "
                "zarrtok never loads code or other files from a store"
            )
    if "tokenizer.json" not in files:
        raise IncompleteStoreError(f"{where}: the store has no tokenizer/tokenizer.json")
    try:
        digest = tokenizer_json_digest(files["tokenizer.json"].decode("utf-8"))
    except Exception as exc:  # noqa: BLE001 - any parse failure means a damaged file
        raise IncompleteStoreError(f"{where}: tokenizer/tokenizer.json cannot be parsed: {exc}") from None
    if expected_sha256 and digest != expected_sha256:
        raise IncompleteStoreError(
            f"{where}: tokenizer/tokenizer.json has sha256 {digest[:16]}..., the manifest recorded "
            f"{expected_sha256[:16]}...: the tokenizer was replaced; its ids would not match the stored tokens"
        )
    out = dict(files)
    if "tokenizer_config.json" in out:
        try:
            config = json.loads(out["tokenizer_config.json"])
        except ValueError as exc:
            raise IncompleteStoreError(f"{where}: tokenizer/tokenizer_config.json is not JSON: {exc}") from None
        if not isinstance(config, dict):
            raise IncompleteStoreError(f"{where}: tokenizer/tokenizer_config.json is not a JSON object")
        if config.pop("auto_map", None) is not None:
            logger.warning("%s: ignoring the tokenizer config's auto_map (zarrtok never runs code from a store)", where)
        out["tokenizer_config.json"] = json.dumps(config).encode()
    return out


def tokenizer_from_files(files: dict[str, bytes], *, expected_sha256: str | None = None, where: str = "store") -> Any:
    """Rebuild a working ``transformers`` fast tokenizer from checked stored files (no remote code)."""
    import transformers

    files = check_tokenizer_files(files, expected_sha256=expected_sha256, where=where)
    config = json.loads(files.get("tokenizer_config.json", b"{}"))
    special = {k: v for k, v in config.items() if k.endswith("_token") and isinstance(v, str)}
    with tempfile.TemporaryDirectory(prefix="zarrtok-tok-") as tmp:
        for name, data in files.items():
            with open(os.path.join(tmp, name), "wb") as f:
                f.write(data)
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(tmp, trust_remote_code=False,
                                                                   local_files_only=True)
        except Exception as exc:  # noqa: BLE001 - e.g. an unknown tokenizer class in the config
            logger.warning("AutoTokenizer could not restore the stored tokenizer (%s); using PreTrainedTokenizerFast",
                           exc)
            tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_file=os.path.join(tmp, "tokenizer.json"),
                                                             **special)
        if not getattr(tokenizer, "is_fast", False):
            tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_file=os.path.join(tmp, "tokenizer.json"),
                                                             **special)
        tokenizer.name_or_path = where  # not the deleted temporary directory
        return tokenizer

"""Reading stores: ``open()`` / :class:`TokenStore`, the :class:`TokenSource` protocol, the token
array over shards, local / remote / Zarr-fallback readers, caches keyed by store content, shared
memory and the safe tokenizer restore. Never imports torch or :mod:`zarrtok.train` at import time."""

from .cache import clear_memory_caches
from .source import TokenSource, as_token_source
from .store import TokenStore, copy, open  # noqa: A004
from .token_array import TokenArray

__all__ = ["open", "copy", "TokenStore", "TokenArray", "TokenSource", "as_token_source", "clear_memory_caches"]

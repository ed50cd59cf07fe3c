"""Storage: locations (local paths and fsspec URLs), the per-process registry, the object I/O layer
(retries, counters), memory maps, commit and copy. Never imports torch, datasets or transformers."""

from .commit import commit_staging, staging_location
from .copying import copy_store
from .location import Location, as_location
from .manifest_io import read_manifest, read_root_metadata
from .objects import ObjectIO, RetryPolicy, io_stats, reset_io_stats

__all__ = ["Location", "as_location", "ObjectIO", "RetryPolicy", "io_stats", "reset_io_stats", "read_manifest",
           "read_root_metadata", "commit_staging", "staging_location", "copy_store"]

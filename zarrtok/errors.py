"""Exceptions raised by zarrtok. Each one names what is wrong and where."""

from __future__ import annotations


class ZarrtokError(Exception):
    """Base class for zarrtok's own errors."""


class StoreNotFoundError(ZarrtokError, FileNotFoundError):
    """No zarrtok store exists at the given location."""


class IncompleteStoreError(ZarrtokError):
    """A store exists but was never committed (a crashed or running build), or is damaged."""


class StoreExistsError(ZarrtokError, FileExistsError):
    """The output location already holds a different store (or other data)."""


class FormatVersionError(ZarrtokError):
    """The store was written by a newer, incompatible zarrtok format."""


class ChecksumError(IncompleteStoreError):
    """A chunk's bytes do not match its stored CRC-32C (corruption at rest, in a cache or in transit)."""


class ObjectIOError(ZarrtokError, OSError):
    """Reading or writing a store object failed for good (after the retry budget); names the URL."""


class StoreChangedError(IncompleteStoreError):
    """The store was replaced (rebuilt, overwritten) after it was opened: reopen it. Raised instead of
    mixing the tokens of two generations."""

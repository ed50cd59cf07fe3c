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

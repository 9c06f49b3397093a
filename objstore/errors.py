"""The object server's exceptions: one shallow hierarchy under :class:`ObjstoreError`.

Each class is also one of the kinds in :mod:`runtime.errors`; memcached's words for them
(``CLIENT_ERROR``/``SERVER_ERROR``) are chosen once, by :func:`objstore.replies.error_reply`.
"""

from __future__ import annotations

from runtime import errors as kinds

__all__ = ["CorruptRecord", "ObjstoreError", "StorageError"]


class ObjstoreError(Exception):
    """Base of every error the objstore package raises on purpose."""


class StorageError(ObjstoreError):
    """Base of the storage errors."""


class CorruptRecord(StorageError, kinds.Corruption):
    """A record failed its checksum or is not a record at all."""

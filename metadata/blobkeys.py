"""Blob ids as PostgreSQL stores them (schema 8): the 32 bytes of the SHA-256.

Everywhere outside the database a blob id is its 64 lowercase hex digits (object servers,
the director's index, skeletons, logs).  ``message_blobs.blob_id`` and
``messages.skeleton_id`` hold the raw digest as ``bytea`` instead: half the bytes in the
row and in each index that carries the id.  The store converts at its boundary, in the
queries of :mod:`metadata.messages` and :mod:`metadata.references`; callers never see a
``bytea`` id.  Byte order of the digests is the order of their hex spellings, so an
``ORDER BY`` or a ``>`` cursor over the column means what it meant over the text.
"""

from __future__ import annotations

from metadata.records import BLOB_ID

__all__ = ["blob_key", "blob_name"]


def blob_key(blob_id: str) -> bytes:
    """A blob id (64 lowercase hex digits) as PostgreSQL stores it since schema 8: the
    32 bytes of the SHA-256 (``bytea``), half the size of the text in every row and index."""
    if not BLOB_ID.match(blob_id):
        raise ValueError(f"blob id is not a lowercase hex SHA-256: {blob_id!r}")
    return bytes.fromhex(blob_id)


def blob_name(key: bytes) -> str:
    """The blob id a stored ``bytea`` key stands for (:func:`blob_key`'s inverse)."""
    return key.hex()

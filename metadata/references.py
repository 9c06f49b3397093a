"""The blob references as gc sees them: which blob ids some message still uses.

References are per-message rows (``message_blobs``), sharded with their user; no row is
shared by the users of a blob, so fan-out delivery never waits on a common lock.  The price
is that "is this blob still used?" is a question about every user at once, which only gc
asks.  gc is mark-and-sweep with a grace period (see docs/metadata.md): it takes the blobs
the director's index has held for longer than the grace period as *candidates* and keeps
those :meth:`References.referenced` reports, or streams the whole live set with
:meth:`References.iter_blob_ids` when candidates are many.  Both read only; both query
``message_blobs`` by ``blob_id`` (its own index), never joining two users' rows.  The
column holds each id's 32 bytes (schema 8, :mod:`metadata.blobkeys`); ids come and go as
hex here like everywhere else.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

from metadata.blobkeys import blob_key, blob_name
from metadata.db import Database
from metadata.records import BLOB_ID

__all__ = ["References"]


class References:
    """Read-only queries over every user's blob references."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def referenced(self, blob_ids: Iterable[str]) -> set[str]:
        """The members of ``blob_ids`` that at least one message references now."""
        # An id that is not 64 lowercase hex digits names no stored reference.
        wanted = sorted({blob_key(b) for b in blob_ids if BLOB_ID.match(b)})
        if not wanted:
            return set()
        async with self.db.connection() as conn:
            rows = await conn.fetch(
                "SELECT b FROM unnest($1::bytea[]) AS b WHERE EXISTS "
                "(SELECT 1 FROM message_blobs r WHERE r.blob_id = b)", wanted)
        return {blob_name(r["b"]) for r in rows}

    async def iter_blob_ids(self, *, after: str = "", batch: int = 10_000,
                            ) -> AsyncIterator[list[str]]:
        """Every referenced blob id once, ascending, in batches; resumable from ``after``
        (the last id of a batch already processed)."""
        cursor = blob_key(after) if after else b""
        while True:
            async with self.db.connection() as conn:
                rows = await conn.fetch(
                    "SELECT DISTINCT blob_id FROM message_blobs WHERE blob_id > $1 "
                    "ORDER BY blob_id LIMIT $2", cursor, batch)
            if not rows:
                return
            ids = [blob_name(r["blob_id"]) for r in rows]
            yield ids
            cursor = rows[-1]["blob_id"]

    async def count(self, blob_id: str) -> int:
        """How many messages reference ``blob_id`` (an operator's and a test's question).

        :raises ValueError: ``blob_id`` is not 64 lowercase hex digits.
        """
        async with self.db.connection() as conn:
            return int(await conn.fetchval(
                "SELECT count(*) FROM message_blobs WHERE blob_id = $1", blob_key(blob_id)))

"""The blob references as gc sees them: which blob ids some message still uses.

References are per-message rows (``message_blobs``), sharded with their user; no row is
shared by the users of a blob, so fan-out delivery never waits on a common lock.  The price
is that "is this blob still used?" is a question about every user at once, which only gc
asks.  gc is mark-and-sweep with a grace period (see docs/metadata.md): it takes the blobs
the director's index has held for longer than the grace period as *candidates* and keeps
those :meth:`References.referenced` reports, or streams the whole live set with
:meth:`References.iter_blob_ids` when candidates are many.  Both read only; both query
``message_blobs`` by ``blob_id`` (its own index), never joining two users' rows.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

from metadata.db import Database

__all__ = ["References"]


class References:
    """Read-only queries over every user's blob references."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def referenced(self, blob_ids: Iterable[str]) -> set[str]:
        """The members of ``blob_ids`` that at least one message references now."""
        wanted = sorted(set(blob_ids))
        if not wanted:
            return set()
        async with self.db.connection() as conn:
            rows = await conn.fetch(
                "SELECT b FROM unnest($1::text[]) AS b WHERE EXISTS "
                "(SELECT 1 FROM message_blobs r WHERE r.blob_id = b)", wanted)
        return {r["b"] for r in rows}

    async def iter_blob_ids(self, *, after: str = "", batch: int = 10_000,
                            ) -> AsyncIterator[list[str]]:
        """Every referenced blob id once, ascending, in batches; resumable from ``after``
        (the last id of a batch already processed)."""
        cursor = after
        while True:
            async with self.db.connection() as conn:
                rows = await conn.fetch(
                    "SELECT DISTINCT blob_id FROM message_blobs WHERE blob_id > $1 "
                    "ORDER BY blob_id LIMIT $2", cursor, batch)
            if not rows:
                return
            ids = [r["blob_id"] for r in rows]
            yield ids
            cursor = ids[-1]

    async def count(self, blob_id: str) -> int:
        """How many messages reference ``blob_id`` (an operator's and a test's question)."""
        async with self.db.connection() as conn:
            return int(await conn.fetchval(
                "SELECT count(*) FROM message_blobs WHERE blob_id = $1", blob_id))

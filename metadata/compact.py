"""Bring rows stored before schema 6 to its compact form, online, in small batches.

Schema 6 (``migrations/0006_compact_messages.sql``) stores ``messages.header_fields``
empty when the lines of ``search_header`` say the same
(:func:`metadata.messages._lines_hold_fields`); a row stored before keeps its list.
:func:`compact_batch` empties the lists of one batch of such rows where the stored text
proves them redundant (in SQL: the lines equal the list joined, no value holds a line
break, every name is plain ASCII without a colon).  Rows whose text does not match
(schema 1 rows' word lists, text cut at its limit) keep their list, which SEARCH HEADER
reads for them.  The space freed is reused by later rows (VACUUM), or returned to the
file system by a table rewrite the operator schedules (pg_repack, VACUUM FULL).

Each batch is one short transaction over at most ``batch`` rows in key order, resumable
from the last key; deliveries and IMAP sessions go on meanwhile (a row being changed by
another transaction waits for it, as any UPDATE does; messages rows are written only
by delivery, SORT's key back-fill and deletion).
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

__all__ = ["CompactBatch", "compact_batch"]

# Rows after the key (user_id, id), in key order; those whose list the lines repeat get
# an empty list.  Names: printable ASCII without a colon (0x21-0x39, 0x3b-0x7e) and not
# empty, the condition a new row is held to.
_COMPACT = r"""
WITH batch AS (
    SELECT user_id, id FROM messages WHERE (user_id, id) > ($1, $2)
    ORDER BY user_id, id LIMIT $3
), redundant AS (
    SELECT m.user_id, m.id FROM batch b
    JOIN messages m ON m.user_id = b.user_id AND m.id = b.id
    WHERE m.header_fields <> '[]'::jsonb
      AND NOT EXISTS (SELECT 1 FROM jsonb_array_elements(m.header_fields) AS h(f)
                      WHERE h.f->>0 !~ '^[\x21-\x39\x3b-\x7e]+$'
                         OR strpos(h.f->>1, E'\n') > 0)
      AND m.search_header = (SELECT string_agg(h.f->>0 || ': ' || (h.f->>1), E'\n' ORDER BY n)
                             FROM jsonb_array_elements(m.header_fields)
                                  WITH ORDINALITY AS h(f, n))
    FOR NO KEY UPDATE OF m
), changed AS (
    UPDATE messages m SET header_fields = '[]'::jsonb FROM redundant r
    WHERE m.user_id = r.user_id AND m.id = r.id RETURNING 1
)
SELECT (SELECT count(*) FROM batch) AS seen, (SELECT count(*) FROM changed) AS changed,
       (SELECT user_id FROM batch ORDER BY user_id DESC, id DESC LIMIT 1) AS last_user,
       (SELECT id FROM batch ORDER BY user_id DESC, id DESC LIMIT 1) AS last_id
"""


@dataclass(frozen=True)
class CompactBatch:
    """One batch's outcome: rows looked at and rewritten, and the key to resume after
    (None when no row was left)."""

    seen: int
    changed: int
    last: tuple[int, int] | None


async def compact_batch(conn: asyncpg.Connection, after: tuple[int, int] = (0, 0),
                        batch: int = 500) -> CompactBatch:
    """Compact the rows after the key ``after`` (``(user_id, id)``), at most ``batch``."""
    if batch < 1:
        raise ValueError("batch must be positive")
    row = await conn.fetchrow(_COMPACT, after[0], after[1], batch)
    assert row is not None
    last = None if row["last_user"] is None else (row["last_user"], row["last_id"])
    return CompactBatch(row["seen"], row["changed"], last)

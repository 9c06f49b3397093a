"""Messages in mailboxes: delivery, FETCH rows, STORE, COPY/MOVE, EXPUNGE, SEARCH.

Theory of operation.  A delivery (or an import's batch) is one statement that inserts the
``messages`` rows and their ``message_blobs`` references (new rows: nobody else can be
waiting on them), takes the next UIDs with ``UPDATE mailboxes SET uidnext = uidnext + n ...
RETURNING`` and inserts the mailbox entries; a second one charges the user's quota and
queues a notification; all in one transaction.  The
``UPDATE`` holds the mailbox row lock until commit, so concurrent deliveries to one mailbox
get strictly increasing UIDs *and commit in UID order*: a session that has seen UID n never
sees a smaller UID appear later.  A rolled-back delivery hands its UID back unobserved.

Rows are locked in one order everywhere, which rules out deadlocks between the store's own
transactions: mailbox rows (ascending id), then ``messages`` rows (ascending id), then the
user's ``user_usage`` row last.

A message row is shared by every copy of the message in the user's mailboxes (COPY adds an
entry, not a message).  Removing entries deletes the message, and its blob references, when
no entry is left; the check runs after locking the message rows, so two sessions expunging
the last two copies at once cannot both believe the other keeps it.  Quota counts entries
(each copy), as IMAP QUOTA's STORAGE resource does.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import asyncpg

from metadata.blobkeys import blob_key, blob_name
from metadata.bodystructure import body_from_bodystructure
from metadata.db import Database
from metadata.errors import (
    NoSuchMailbox,
    NoSuchMessage,
    NoSuchUser,
    OverQuota,
    UidsExhausted,
)
from metadata.flags import NO_FLAGS, Flags
from metadata.notify import Change, channel, encode, publish
from metadata.records import (
    Appended,
    CopyResult,
    Expunged,
    FlagState,
    MessageEntry,
    MessageRow,
    MoveResult,
    SearchHits,
    SortEntry,
    StoreResult,
    ThreadEntry,
)
from metadata.search import Criterion, compile_criteria
from metadata.sortkeys import MAX_KEY_CHARS, SortKeys, sort_keys
from metadata.uidset import MAX_UID, UidSet

__all__ = ["FETCH_ITEMS", "SORT_ORDER", "Messages", "NewMessage", "StoreMode"]

#: Cached data :meth:`Messages.fetch` can return besides flags, dates and size.
FETCH_ITEMS = frozenset({"skeleton", "envelope", "bodystructure", "body", "header", "sections"})
#: The ``messages`` column each item is read from.  BODY has no column since schema 8:
#: it is BODYSTRUCTURE without the extension data, cut out of it here
#: (:func:`metadata.bodystructure.body_from_bodystructure`).
_ITEM_COLUMNS = {
    "skeleton": "skeleton_id",
    "envelope": "envelope",
    "bodystructure": "bodystructure",
    "body": "bodystructure",
    "header": "header_block",
    "sections": "section_map",
}
_ITEM_FIELDS = {
    "skeleton": "skeleton_id",
    "envelope": "envelope",
    "bodystructure": "bodystructure",
    "body": "body",
    "header": "header_block",
    "sections": "section_map",
}


#: Characters of decoded text kept for SEARCH TEXT/BODY, headers and body: bounds on what
#: the trigram indexes hold per message.
HEADER_TEXT_LIMIT = 50_000
BODY_TEXT_LIMIT = 150_000
#: Characters kept of each casefolded header value and address field.
FIELD_TEXT_LIMIT = 10_000

StoreMode = Literal["add", "remove", "replace"]

_RANGES = "unnest($3::bigint[], $4::bigint[]) AS r(lo, hi)"


def _clean(text: str, limit: int) -> str:
    """Text PostgreSQL accepts: no NUL, no lone surrogate, at most ``limit`` characters."""
    text = text[:limit].replace("\x00", "")
    return text.encode("utf-8", "replace").decode("utf-8")


def _fold(text: str, limit: int = FIELD_TEXT_LIMIT) -> str:
    return _clean(text, limit).casefold()


def _offset_minutes(when: dt.datetime) -> int:
    offset = when.utcoffset()
    if offset is None:
        raise ValueError("internaldate must be timezone-aware")
    minutes, rest = divmod(int(offset.total_seconds()), 60)
    if rest:
        raise ValueError("internaldate offset must be whole minutes")
    return minutes


@functools.lru_cache(maxsize=256)
def _zone(offset_minutes: int) -> dt.timezone:
    """The fixed-offset zone of an INTERNALDATE offset (one object per offset seen)."""
    return dt.timezone(dt.timedelta(minutes=offset_minutes))


def _local(when: dt.datetime, offset_minutes: int) -> dt.datetime:
    return when.astimezone(_zone(offset_minutes))


#: Flags read back from entries, by (bits, keywords): the few combinations a mailbox
#: holds are validated and built once, not once per entry of every FETCH or STORE.
_KNOWN_FLAGS: dict[tuple[int, tuple[str, ...]], Flags] = {}
_KNOWN_FLAGS_MAX = 4096


def _flags(record: asyncpg.Record) -> Flags:
    key = (record["flags"], tuple(record["keywords"]))
    found = _KNOWN_FLAGS.get(key)
    if found is None:
        found = Flags(*key)
        if len(_KNOWN_FLAGS) >= _KNOWN_FLAGS_MAX:
            _KNOWN_FLAGS.clear()
        _KNOWN_FLAGS[key] = found
    return found


async def lock_mailboxes(conn: asyncpg.Connection, user_id: int,
                         mailbox_ids: Iterable[int]) -> dict[int, asyncpg.Record]:
    """Lock selectable mailboxes in ascending id order; return their rows by id.

    :raises NoSuchMailbox: one does not exist or is ``\\Noselect``.
    """
    wanted = sorted(set(mailbox_ids))
    rows = await conn.fetch(
        "SELECT id, uidvalidity, uidnext, highestmodseq, noselect FROM mailboxes "
        "WHERE user_id = $1 AND id = ANY($2::bigint[]) ORDER BY id FOR NO KEY UPDATE",
        user_id, wanted)
    found = {row["id"]: row for row in rows if not row["noselect"]}
    missing = [i for i in wanted if i not in found]
    if missing:
        raise NoSuchMailbox(f"no selectable mailbox with id {missing[0]}")
    return found


@dataclass(frozen=True)
class NewMessage:
    """One message for :meth:`Messages.insert_many`.

    :param blob_ids: the part blobs it references (the skeleton is added).
    :param internaldate: timezone-aware; its offset is kept for INTERNALDATE.
    """

    row: MessageRow
    blob_ids: tuple[str, ...]
    internaldate: dt.datetime
    flags: Flags = NO_FLAGS


def _add_keywords(param: str) -> str:
    """SQL setting a mailbox row's ``keywords`` with the text array ``param`` added (those
    it lacks, in order): the mailbox's keyword list only grows."""
    return (f"keywords = keywords || ARRAY(SELECT k FROM unnest({param}::text[]) WITH ORDINALITY "
            "AS t(k, n) WHERE k <> ALL (keywords) ORDER BY n)")


#: The columns :func:`_message_values` gives, after the user, in its order.
_ROW_COLUMNS = (
    "skeleton_id, size, sent_at, sent_date, search_subject, search_from, search_to, "
    "search_cc, search_bcc, header_fields, header_block, envelope, "
    "bodystructure, section_map, search_header, search_body, sort_subject, "
    "sort_reply, sort_from, sort_to, sort_cc, display_from, display_to, "
    "thread_message_id, thread_references")

def _insert_and_enter(claim: bool, charge: bool = False) -> str:
    """A delivery's or an import batch's whole write but the quota in one statement (one
    round trip whatever the batch): the message rows, their blob references, the next
    UIDs and one mod-sequence from the mailbox row, and the entries at those UIDs.

    $1 user; $2..$26 the rows' columns as arrays (:data:`_ROW_COLUMNS`; header fields and
    thread references as JSON text: an array of arrays must be rectangular; the skeleton
    id as its 32 bytes); $27, $28 the references as pairs of a row's position from 1 and a
    blob id (32 bytes); $29 the mailbox, $30 the last UID, $31 how many, $32 keywords new
    to the mailbox; $33..$37 each entry's flag bits, keywords (JSON arrays), INTERNALDATE,
    its offset, size.  The ids are drawn first,
    in the rows' order, so that the references and entries can name them.  Always one
    row: the ids, and the allocation (NULL when the mailbox is gone, \\Noselect or out of
    UIDs; the caller then rolls back).

    :param claim: the mailbox row's update also claims ``\\Recent`` up to the new UIDNEXT,
        as :meth:`Messages.claim_recent` does, and the row carries the old marker as
        ``recent_low``.  The old marker comes from the sub-select that locks the row, as in
        ``claim_recent`` (an UPDATE returns only new values): it waits for the lock, so it
        reads the latest committed marker, which nobody can move before this commits.
    :param charge: the statement also charges the quota and queues the append's
        notification, as :func:`charge` with ``notify`` does (one round trip less for a
        single mailbox's insert): $38 the total size, $39 the user's channel.  The usage
        row is updated only once the mailbox row's update returned a row (its sub-select
        reads ``a``), so the mailbox row is locked first, the store's lock order; the
        row carries ``charged`` (false: the quota refused, or no usage row; the caller
        rolls back) and the notification's payload is :func:`metadata.notify.encode`'s.
    """
    mark, lock, low = "", "", ""
    if claim:
        mark = "recent_uid = uidnext + $31, "
        lock = (" FROM (SELECT recent_uid FROM mailboxes WHERE user_id = $1 AND id = $29 "
                "FOR NO KEY UPDATE) AS old")
        low = ", old.recent_uid AS recent_low"
    return (
        "WITH src AS MATERIALIZED (SELECT nextval(pg_get_serial_sequence('messages', 'id')) "
        "AS id, t.* FROM unnest($2::bytea[], $3::bigint[], $4::timestamptz[], $5::date[], "
        "$6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], "
        "$12::bytea[], $13::bytea[], $14::bytea[], $15::bytea[], "
        "$16::text[], $17::text[], $18::text[], $19::boolean[], $20::text[], $21::text[], "
        "$22::text[], $23::text[], $24::text[], $25::text[], $26::text[]) WITH ORDINALITY "
        f"AS t({_ROW_COLUMNS}, n)), "
        f"m AS (INSERT INTO messages (user_id, id, {_ROW_COLUMNS}) "
        "SELECT $1, id, skeleton_id, size, sent_at, sent_date, search_subject, search_from, "
        "search_to, search_cc, search_bcc, header_fields::jsonb, "
        "header_block, envelope, bodystructure, section_map, search_header, "
        "search_body, sort_subject, sort_reply, sort_from, sort_to, sort_cc, display_from, "
        "display_to, thread_message_id, ARRAY(SELECT r FROM jsonb_array_elements_text("
        "thread_references::jsonb) WITH ORDINALITY AS j(r, i) ORDER BY i) FROM src), "
        "b AS (INSERT INTO message_blobs (user_id, message_id, blob_id) SELECT $1, src.id, "
        "x.blob FROM unnest($27::bigint[], $28::bytea[]) AS x(n, blob) JOIN src ON src.n = x.n), "
        f"a AS (UPDATE mailboxes mb SET uidnext = uidnext + $31, {mark}"
        f"highestmodseq = highestmodseq + 1, {_add_keywords('$32')}{lock} "
        "WHERE mb.user_id = $1 AND mb.id = $29 AND NOT noselect AND uidnext + $31 - 1 <= $30 "
        f"RETURNING uidnext - $31 AS first_uid, highestmodseq, uidvalidity{low}), "
        "e AS (INSERT INTO mailbox_messages (user_id, mailbox_id, uid, message_id, flags, "
        "keywords, modseq, internaldate, internaldate_offset, size) "
        "SELECT $1, $29, a.first_uid + t.n - 1, src.id, t.flags, "
        "ARRAY(SELECT k FROM jsonb_array_elements_text(t.kw::jsonb) WITH ORDINALITY "
        "AS j(k, i) ORDER BY i), a.highestmodseq, t.idate, t.off, t.size "
        "FROM a, unnest($33::integer[], $34::text[], $35::timestamptz[], $36::smallint[], "
        "$37::bigint[]) WITH ORDINALITY AS t(flags, kw, idate, off, size, n) "
        f"JOIN src ON src.n = t.n){_CHARGE_CTE if charge else ''} "
        "SELECT (SELECT array_agg(id ORDER BY n) FROM src) AS ids, a.first_uid, "
        f"a.highestmodseq, a.uidvalidity{low and ', a.recent_low'}"
        f"{_CHARGE_COLUMNS if charge else ''} "
        "FROM (SELECT) AS one LEFT JOIN a ON true")


#: :func:`_insert_and_enter`'s quota charge (``_CHARGE`` with the count $31, the size $38,
#: once the allocation ``a`` has its row).
_CHARGE_CTE = (
    ", c AS (UPDATE user_usage SET used_bytes = used_bytes + $38, "
    "message_count = message_count + $31 WHERE user_id = $1 AND EXISTS (SELECT FROM a) AND "
    "($38 <= 0 OR quota_bytes = 0 OR used_bytes + $38 <= quota_bytes) AND "
    "($31 <= 0 OR quota_messages = 0 OR message_count + $31 <= quota_messages) "
    "RETURNING 1)")
#: Whether it charged, and the append's notification when it did (the JSON of
#: :func:`metadata.notify.encode` for ``Change(kind="append", mailbox_id, uidnext, modseq)``).
_CHARGE_COLUMNS = (
    ", EXISTS (SELECT FROM c) AS charged, CASE WHEN EXISTS (SELECT FROM c) THEN "
    "pg_notify($39, '{\"k\":\"append\",\"m\":' || $29::bigint || ',\"u\":' || "
    "(a.first_uid + $31) || ',\"s\":' || a.highestmodseq || '}') END AS notified")


_INSERT_AND_ENTER = _insert_and_enter(claim=False)
_INSERT_ENTER_AND_CLAIM = _insert_and_enter(claim=True)
_INSERT_ENTER_CHARGE = _insert_and_enter(claim=False, charge=True)
_INSERT_ENTER_CLAIM_CHARGE = _insert_and_enter(claim=True, charge=True)

_SORT_COLUMNS = ("m.sort_subject, m.sort_reply, m.sort_from, m.sort_to, m.sort_cc, "
                 "m.display_from, m.display_to, m.thread_message_id, m.thread_references")


#: What each SORT key (RFC 5256, RFC 5957) orders by in SQL, and whether it needs the
#: ``messages`` row.  The text keys are stored casefolded (:mod:`metadata.sortkeys`) and
#: compared under the "C" collation: byte order of UTF-8, which is code point order, the
#: way Python compares the same strings.  The database's default collation (a locale's,
#: which ignores case and punctuation at first) would not give the RFC order.
SORT_ORDER: dict[str, tuple[str, bool]] = {
    "ARRIVAL": ("mm.internaldate", False),
    "CC": ('m.sort_cc COLLATE "C"', True),
    "DATE": ("COALESCE(m.sent_at, mm.internaldate)", True),
    "FROM": ('m.sort_from COLLATE "C"', True),
    "SIZE": ("mm.size", False),
    "SUBJECT": ('m.sort_subject COLLATE "C"', True),
    "TO": ('m.sort_to COLLATE "C"', True),
    "DISPLAYFROM": ('m.display_from COLLATE "C"', True),
    "DISPLAYTO": ('m.display_to COLLATE "C"', True),
}
#: The message id of a row whose keys are not stored yet (older than migration 0003).
_STALE = "CASE WHEN m.sort_subject IS NULL THEN m.id END"
#: Sent-date rank for THREAD (:class:`metadata.records.ThreadEntry`).
_THREAD_RANK = "row_number() OVER (ORDER BY COALESCE(m.sent_at, mm.internaldate), mm.uid)"


def sort_values(keys: SortKeys) -> tuple[object, ...]:
    """The nine sort/thread columns of ``messages`` (migration 0003) for ``keys``."""
    limit = MAX_KEY_CHARS
    return (_clean(keys.subject, limit), keys.reply, _clean(keys.from_, limit),
            _clean(keys.to, limit), _clean(keys.cc, limit), _clean(keys.display_from, limit),
            _clean(keys.display_to, limit), _clean(keys.message_id, limit),
            [_clean(ref, limit) for ref in keys.references])


def _message_values(user_id: int, row: MessageRow) -> tuple[object, ...]:
    """The user, then ``row``'s :data:`_ROW_COLUMNS` values (casefolded search text)."""
    header_text = _header_text(row)
    header_fields = "[]" if _lines_hold_fields(row, header_text) else json.dumps(
        [[_clean(name, 200).lower(), _fold(value)] for name, value in row.headers])
    sent_date = row.sent_at.date() if row.sent_at is not None else None
    return (user_id, blob_key(row.skeleton_id), row.size, row.sent_at, sent_date,
            _fold(row.subject), _fold(row.from_addr), _fold(row.to_addr),
            _fold(row.cc_addr), _fold(row.bcc_addr),
            header_fields, row.header_block,
            row.envelope, row.bodystructure, row.section_map,
            _fold(header_text, HEADER_TEXT_LIMIT),
            _fold(row.body_text, BODY_TEXT_LIMIT), *sort_values(row.sort))


_CHARGE = ("UPDATE user_usage SET used_bytes = used_bytes + $2, "
           "message_count = message_count + $3 WHERE user_id = $1 AND "
           "($2 <= 0 OR quota_bytes = 0 OR used_bytes + $2 <= quota_bytes) AND "
           "($3 <= 0 OR quota_messages = 0 OR message_count + $3 <= quota_messages) "
           "RETURNING 1")


async def charge(conn: asyncpg.Connection, user_id: int, size: int, count: int, *,
                 notify: Change | None = None) -> None:
    """Add ``size`` bytes and ``count`` entries to the user's usage, within the quotas.

    :param notify: also publish this change, in the same round trip (a refusal raises,
        and the rollback drops the notification with the rest).
    :raises OverQuota: when a positive ``size`` (``count``) would pass a non-zero storage
        (message) quota.
    :raises NoSuchUser: the user has no usage row (deleted concurrently).
    """
    if notify is None:
        done = await conn.fetchval(_CHARGE, user_id, size, count)
    else:
        done = await conn.fetchval(
            f"WITH c AS ({_CHARGE}) SELECT (SELECT 1 FROM c), pg_notify($4, $5)",
            user_id, size, count, channel(notify.user_id), encode(notify))
    if done is None:
        await _refuse_charge(conn, user_id, size, count)


async def _refuse_charge(conn: asyncpg.Connection, user_id: int, size: int, count: int) -> None:
    """Why a charge of ``size`` bytes and ``count`` entries updated no usage row.

    :raises NoSuchUser: the user has no usage row.
    :raises OverQuota: otherwise (always raises).
    """
    row = await conn.fetchrow(
        "SELECT used_bytes, quota_bytes, message_count, quota_messages FROM user_usage "
        "WHERE user_id = $1", user_id)
    if row is None:
        raise NoSuchUser(f"no user with id {user_id}")
    if size > 0 and row["quota_bytes"] and row["used_bytes"] + size > row["quota_bytes"]:
        raise OverQuota(row["used_bytes"], row["quota_bytes"], size)
    raise OverQuota(row["message_count"], row["quota_messages"], count, "MESSAGE")


async def delete_entries(conn: asyncpg.Connection, user_id: int, mailbox_id: int,
                         uids: UidSet | None, *, only_deleted: bool, modseq: int | None = None,
                         tombstones: bool = False) -> list[asyncpg.Record]:
    """Delete mailbox entries (all, or those in ``uids``; only ``\\Deleted`` ones if asked);
    return their ``uid, message_id, size`` by UID.  References are left to
    :func:`drop_orphans`.

    :param modseq: when something is deleted, raise the mailbox's HIGHESTMODSEQ to it (and
        with ``tombstones`` record the UIDs for VANISHED under it), in the same statement:
        one round trip of the few an EXPUNGE takes.
    """
    condition = " AND mm.flags & 8 <> 0" if only_deleted else ""
    args: list[object] = [user_id, mailbox_id]
    using = within = ""
    if uids is not None:
        if not uids:
            return []
        args += uids.arrays()
        using, within = f" USING {_RANGES}", " AND mm.uid BETWEEN r.lo AND r.hi"
    steps = ""
    if modseq is not None:
        args.append(modseq)
        at = f"${len(args)}::bigint"
        steps = (f", bump AS (UPDATE mailboxes SET highestmodseq = {at} WHERE user_id = $1 "
                 "AND id = $2 AND EXISTS (SELECT 1 FROM d))")
        if tombstones:
            steps += (", tomb AS (INSERT INTO expunged_uids (user_id, mailbox_id, uid, modseq) "
                      f"SELECT $1, $2, d.uid, {at} FROM d ON CONFLICT (user_id, mailbox_id, "
                      "uid) DO UPDATE SET modseq = excluded.modseq)")
    return list(await conn.fetch(
        f"WITH d AS (DELETE FROM mailbox_messages mm{using} WHERE mm.user_id = $1 "
        f"AND mm.mailbox_id = $2{within}{condition} "
        f"RETURNING mm.uid, mm.message_id, mm.size){steps} "
        "SELECT uid, message_id, size FROM d ORDER BY uid", *args))


async def drop_orphans(conn: asyncpg.Connection, user_id: int,
                       message_ids: Iterable[int]) -> tuple[int, int]:
    """Delete the messages among ``message_ids`` that no mailbox entry uses any more, with
    their blob references; return (messages, references) deleted.

    The message rows are locked first; the check is a later statement, so it sees every
    entry committed by whoever held them before.
    """
    ids = sorted(set(message_ids))
    if not ids:
        return 0, 0
    await conn.execute("SELECT 1 FROM messages WHERE user_id = $1 AND id = ANY($2::bigint[]) "
                       "ORDER BY id FOR UPDATE", user_id, ids)
    # One statement finds the orphans and deletes them with their references.
    row = await conn.fetchrow(
        "WITH orphans AS (SELECT x.id FROM unnest($2::bigint[]) AS x(id) "
        "WHERE NOT EXISTS (SELECT 1 FROM mailbox_messages mm "
        "WHERE mm.user_id = $1 AND mm.message_id = x.id)), "
        "refs AS (DELETE FROM message_blobs b USING orphans o WHERE b.user_id = $1 "
        "AND b.message_id = o.id RETURNING 1), "
        "gone AS (DELETE FROM messages m USING orphans o WHERE m.user_id = $1 "
        "AND m.id = o.id RETURNING 1) "
        "SELECT (SELECT count(*) FROM gone) AS messages, (SELECT count(*) FROM refs) AS refs",
        user_id, ids)
    return int(row["messages"]), int(row["refs"])


async def remove_entries(conn: asyncpg.Connection, user_id: int, mailbox_id: int,
                         uids: UidSet | None, *, only_deleted: bool, highestmodseq: int,
                         tombstones: bool = True, refund: bool = True) -> Expunged:
    """Expunge entries from a mailbox whose row the caller has locked: delete them, record
    tombstones, bump HIGHESTMODSEQ, drop orphaned messages and references, refund quota
    (unless the caller re-files the entries elsewhere), and notify.  Everything happens in
    the caller's transaction."""
    modseq = highestmodseq + 1
    rows = await delete_entries(conn, user_id, mailbox_id, uids, only_deleted=only_deleted,
                                modseq=modseq, tombstones=tombstones)
    if not rows:
        return Expunged((), None)
    removed = [r["uid"] for r in rows]
    await drop_orphans(conn, user_id, (r["message_id"] for r in rows))
    change = Change(user_id, "expunge", mailbox_id, modseq=modseq)
    if refund:
        await charge(conn, user_id, -sum(r["size"] for r in rows), -len(rows), notify=change)
    else:
        await publish(conn, change)
    return Expunged(tuple(removed), modseq)


def _header_text(row: MessageRow) -> str:
    return "\n".join(f"{name}: {value}" for name, value in row.headers)


def _lines_hold_fields(row: MessageRow, header_text: str) -> bool:
    """Whether ``search_header`` (``header_text`` casefolded) holds every header field as
    its own ``name: value`` line, exactly what ``header_fields`` would say: then SEARCH
    HEADER reads the lines and ``header_fields`` is stored empty (schema 6: the same text
    was kept twice).  Not when a decoded value holds a line break (an RFC 2047 word can),
    a name is not plain ASCII (``lower`` and ``casefold`` could differ), or something
    would have been cut."""
    if len(header_text) > HEADER_TEXT_LIMIT:
        return False
    return all(name.isascii() and 0 < len(name) <= 200 and ":" not in name
               and "\n" not in name and "\n" not in value and len(value) <= FIELD_TEXT_LIMIT
               for name, value in row.headers)


class Messages:
    """Message operations on one user's mailboxes; every method is one transaction."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def insert(self, user_id: int, mailbox_id: int, row: MessageRow,
                     blob_ids: Iterable[str], *, internaldate: dt.datetime,
                     flags: Flags = NO_FLAGS) -> Appended:
        """Store a delivered or APPENDed message and give it the mailbox's next UID.

        :param blob_ids: the part blobs the message references (the skeleton is added).
        :param internaldate: timezone-aware; its offset is kept for INTERNALDATE.
        :raises NoSuchMailbox: the mailbox is gone or ``\\Noselect``.
        :raises OverQuota: the user's quota cannot take ``row.size`` more bytes.
        :raises UidsExhausted: the mailbox has used every 32-bit UID.
        """
        (appended,) = await self.insert_many(user_id, mailbox_id, [
            NewMessage(row, tuple(blob_ids), internaldate, flags)])
        return appended

    async def insert_many(self, user_id: int, mailbox_id: int,
                          new: Sequence[NewMessage], *,
                          before_commit: Callable[[], Awaitable[None]] | None = None,
                          claim_recent: bool = False) -> list[Appended]:
        """Store several messages in one transaction, with consecutive UIDs in the order
        given and one mod-sequence: one commit (one fsync) for all, which is what makes
        a bulk import fast.  All or none are stored; the errors are :meth:`insert`'s (the
        quota is checked against their total size).  The mailbox stays locked from the
        UID allocation to the commit, so batches should be small (tens of messages).

        :param before_commit: awaited as the transaction's last step, once every lock is
            held; whatever it raises rolls the transaction back and propagates (delivery's
            gc fence: metadata/delivery.py).
        :param claim_recent: claim ``\\Recent`` for the caller in the same statement, up
            to the new messages included (:meth:`claim_recent` without its round trip: an
            APPEND to the mailbox a read-write session has selected); each
            :class:`Appended` then carries the range.
        """
        if not new:
            return []
        async with self.db.transaction() as conn:
            # Three round trips: BEGIN, the insert with its charge and notification, COMMIT.
            alloc = await self._enter(conn, user_id, mailbox_id, new, claim_recent=claim_recent,
                                      charge=True)
            if before_commit is not None:
                await before_commit()
        return self._appended(alloc, len(new))

    async def insert_groups(self, groups: Sequence[tuple[int, int, Sequence[NewMessage]]], *,
                            before_commit: Callable[[], Awaitable[None]] | None = None,
                            ) -> list[list[Appended]]:
        """:meth:`insert_many` for several ``(user id, mailbox id, messages)`` groups in
        one transaction (LMTP's group commit): all or none.  Each mailbox appears once.
        Every mailbox row is locked (ascending id) before any usage row (ascending user
        id), the store's lock order, so batches cannot deadlock with each other nor with
        single transactions.  The errors are :meth:`insert`'s, for whichever group failed
        (quota: a user's groups are charged one after the other, each against the usage
        the previous left).
        """
        if len({mailbox for _u, mailbox, _n in groups}) != len(groups):
            raise ValueError("a mailbox appears in two groups")
        allocs: dict[int, asyncpg.Record] = {}
        async with self.db.transaction() as conn:
            for i in sorted(range(len(groups)), key=lambda i: groups[i][1]):
                user_id, mailbox_id, new = groups[i]
                allocs[i] = await self._enter(conn, user_id, mailbox_id, new)
            for i in sorted(range(len(groups)), key=lambda i: groups[i][:2]):
                user_id, mailbox_id, new = groups[i]
                await self._charge(conn, user_id, mailbox_id, new, allocs[i])
            if before_commit is not None:
                await before_commit()
        return [self._appended(allocs[i], len(new)) for i, (_u, _m, new) in enumerate(groups)]

    async def _enter(self, conn: asyncpg.Connection, user_id: int, mailbox_id: int,
                     new: Sequence[NewMessage], *, claim_recent: bool = False,
                     charge: bool = False) -> asyncpg.Record:
        """Insert ``new`` (not empty) into the mailbox in one statement (rows, references,
        UIDs, entries), locking its row until commit: the allocation.

        :param charge: the same statement charges the quota and queues the notification
            (:meth:`_charge`'s work); raises its errors.
        """
        # Blob ids go to PostgreSQL as their 32 bytes (schema 8; blob_key checks them).
        blob_lists = [sorted({blob_key(message.row.skeleton_id),
                              *(blob_key(b) for b in message.blob_ids)}) for message in new]
        # Four round trips whatever the batch: BEGIN, one statement for the rows, their
        # references, the UIDs and the entries, one for the quota and the notification,
        # COMMIT.  The mailbox row is locked in that statement and held until commit.
        values = [_message_values(user_id, m.row) for m in new]
        keywords = dict.fromkeys(k for m in new for k in m.flags.keywords)
        if charge:
            sql = _INSERT_ENTER_CLAIM_CHARGE if claim_recent else _INSERT_ENTER_CHARGE
            size = sum(m.row.size for m in new)
            extra: tuple[object, ...] = (size, channel(user_id))
        else:
            sql = _INSERT_ENTER_AND_CLAIM if claim_recent else _INSERT_AND_ENTER
            extra = ()
        alloc = await conn.fetchrow(
            sql, user_id,
            *([v[i] for v in values] for i in range(1, 25)),
            [json.dumps(v[25]) for v in values],
            [n for n, blobs in enumerate(blob_lists, 1) for _b in blobs],
            [b for blobs in blob_lists for b in blobs],
            mailbox_id, MAX_UID, len(new), list(keywords),
            [m.flags.system for m in new],
            [json.dumps(list(m.flags.keywords)) for m in new],
            [m.internaldate for m in new], [_offset_minutes(m.internaldate) for m in new],
            [m.row.size for m in new], *extra)
        if alloc["first_uid"] is None:
            await self._explain_no_uid(conn, user_id, mailbox_id)
        if charge and not alloc["charged"]:
            await _refuse_charge(conn, user_id, size, len(new))
        return alloc

    @staticmethod
    async def _charge(conn: asyncpg.Connection, user_id: int, mailbox_id: int,
                      new: Sequence[NewMessage], alloc: asyncpg.Record) -> None:
        """Charge the user's quota for ``new`` and queue the append's notification."""
        first, modseq = alloc["first_uid"], alloc["highestmodseq"]
        await charge(conn, user_id, sum(m.row.size for m in new), len(new),
                     notify=Change(user_id, "append", mailbox_id,
                                   uidnext=first + len(new), modseq=modseq))

    @staticmethod
    def _appended(alloc: asyncpg.Record, count: int) -> list[Appended]:
        first, modseq = alloc["first_uid"], alloc["highestmodseq"]
        low = alloc.get("recent_low")  # only when claimed (_insert_and_enter)
        recent = None if low is None else (low, first + count)
        return [Appended(alloc["uidvalidity"], first + n, modseq, mid, recent)
                for n, mid in enumerate(alloc["ids"][:count])]

    @staticmethod
    async def _explain_no_uid(conn: asyncpg.Connection, user_id: int, mailbox_id: int) -> None:
        row = await conn.fetchrow("SELECT noselect, uidnext FROM mailboxes "
                                  "WHERE user_id = $1 AND id = $2", user_id, mailbox_id)
        if row is None or row["noselect"]:
            raise NoSuchMailbox(f"no selectable mailbox with id {mailbox_id}")
        raise UidsExhausted(f"mailbox {mailbox_id} has used every UID")

    async def fetch(self, user_id: int, mailbox_id: int, uids: UidSet, *,
                    items: Iterable[str] = (), changed_since: int | None = None,
                    ) -> list[MessageEntry]:
        """The entries whose UID is in ``uids``, by UID, with the cached ``items`` asked for
        (names from :data:`FETCH_ITEMS`).

        :param changed_since: only entries whose mod-sequence is above it (CHANGEDSINCE).
        """
        wanted = sorted(set(items))
        unknown = set(wanted) - FETCH_ITEMS
        if unknown:
            raise ValueError(f"unknown fetch items {sorted(unknown)}")
        if not uids:
            return []
        columns = "".join(f", m.{column}" for column in
                          dict.fromkeys(_ITEM_COLUMNS[item] for item in wanted))
        join = (" JOIN messages m ON m.user_id = $1 AND m.id = mm.message_id"
                if wanted else "")
        lows, highs = uids.arrays()
        async with self.db.connection() as conn:
            rows = await conn.fetch(
                "SELECT mm.uid, mm.message_id, mm.flags, mm.keywords, mm.modseq, "
                f"mm.internaldate, mm.internaldate_offset, mm.size{columns} "
                f"FROM {_RANGES} JOIN mailbox_messages mm ON mm.user_id = $1 "
                f"AND mm.mailbox_id = $2 AND mm.uid BETWEEN r.lo AND r.hi{join} "
                "WHERE ($5::bigint IS NULL OR mm.modseq > $5) ORDER BY mm.uid",
                user_id, mailbox_id, lows, highs, changed_since)
        entries = []
        for r in rows:
            extra = {_ITEM_FIELDS[item]: r[_ITEM_COLUMNS[item]] for item in wanted}
            if "skeleton_id" in extra:
                extra["skeleton_id"] = blob_name(r["skeleton_id"])
            if "body" in extra:
                extra["body"] = body_from_bodystructure(r["bodystructure"])
            entries.append(MessageEntry(
                uid=r["uid"], message_id=r["message_id"], flags=_flags(r), modseq=r["modseq"],
                internaldate=_local(r["internaldate"], r["internaldate_offset"]),
                size=r["size"], **extra))
        return entries

    async def uids(self, user_id: int, mailbox_id: int) -> list[int]:
        """Every UID of the mailbox, ascending: a session's sequence-number map."""
        async with self.db.connection() as conn:
            rows = await conn.fetch("SELECT uid FROM mailbox_messages WHERE user_id = $1 "
                                    "AND mailbox_id = $2 ORDER BY uid", user_id, mailbox_id)
        return [r["uid"] for r in rows]

    async def skeleton_counts(self, user_id: int, mailbox_id: int) -> dict[str, int]:
        """Skeleton id -> how many entries of the mailbox hold that message (a skeleton
        id is the hash of the message's bytes): what a resumed import skips."""
        async with self.db.connection() as conn:
            rows = await conn.fetch(
                "SELECT m.skeleton_id, count(*) AS n FROM mailbox_messages e "
                "JOIN messages m ON m.user_id = e.user_id AND m.id = e.message_id "
                "WHERE e.user_id = $1 AND e.mailbox_id = $2 GROUP BY m.skeleton_id",
                user_id, mailbox_id)
        return {blob_name(r["skeleton_id"]): r["n"] for r in rows}

    async def store_flags(self, user_id: int, mailbox_id: int, uids: UidSet, mode: StoreMode,
                          flags: Flags, *, unchanged_since: int | None = None) -> StoreResult:
        """STORE FLAGS / +FLAGS / -FLAGS over ``uids``, one new mod-sequence for the
        messages it changes (none if nothing changes).

        :param unchanged_since: CONDSTORE UNCHANGEDSINCE: messages whose mod-sequence is
            above it are left alone and reported in ``modified``.
        """
        if mode not in ("add", "remove", "replace"):
            raise ValueError(f"unknown store mode {mode!r}")
        if not uids:
            return StoreResult((), (), (), None)
        lows, highs = uids.arrays()
        # One round trip (migration 0007): the function locks the mailbox row, updates
        # the entries, raises HIGHESTMODSEQ and queues the notification, as one
        # transaction of its own.
        async with self.db.connection() as conn:
            try:
                rows = await conn.fetch(
                    "SELECT o_uid AS uid, o_flags AS flags, o_keywords AS keywords, "
                    "o_modseq AS modseq, o_changed AS changed "
                    "FROM objmail_store_flags($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                    user_id, mailbox_id, lows, highs, mode, flags.system,
                    list(flags.keywords), unchanged_since, channel(user_id))
            except asyncpg.NoDataFoundError as exc:
                raise NoSuchMailbox(str(exc)) from None
        changed_uids = [r["uid"] for r in rows if r["changed"]]
        modseq = next((r["modseq"] for r in rows if r["changed"]), None)
        done = set(changed_uids)
        modified = () if unchanged_since is None else tuple(
            r["uid"] for r in rows if r["uid"] not in done and r["modseq"] > unchanged_since)
        states = tuple(FlagState(r["uid"], _flags(r), r["modseq"]) for r in rows)
        return StoreResult(states, tuple(changed_uids), modified, modseq)

    async def _copy_into(self, conn: asyncpg.Connection, user_id: int, source: int,
                         uids: UidSet, target: asyncpg.Record) -> tuple[CopyResult, int]:
        """Copy entries into the locked ``target``; return the result and the bytes added."""
        lows, highs = uids.arrays()
        sources = await conn.fetch(
            f"SELECT mm.uid, mm.size FROM {_RANGES} JOIN mailbox_messages mm "
            "ON mm.user_id = $1 AND mm.mailbox_id = $2 AND mm.uid BETWEEN r.lo AND r.hi "
            "ORDER BY mm.uid", user_id, source, lows, highs)
        if not sources:
            return CopyResult(target["uidvalidity"], (), ()), 0
        count = len(sources)
        source_uids = [r["uid"] for r in sources]
        # The copies bring their keywords into the target's keyword list.
        alloc = await conn.fetchrow(
            "UPDATE mailboxes SET uidnext = uidnext + $3, highestmodseq = highestmodseq + 1, "
            "keywords = keywords || ARRAY(SELECT DISTINCT k FROM mailbox_messages mm, "
            "unnest(mm.keywords) AS k WHERE mm.user_id = $1 AND mm.mailbox_id = $5 "
            "AND mm.uid = ANY($6::bigint[]) AND k <> ALL (mailboxes.keywords)) "
            "WHERE user_id = $1 AND id = $2 AND uidnext + $3 - 1 <= $4 "
            "RETURNING uidnext - $3 AS first, highestmodseq",
            user_id, target["id"], count, MAX_UID, source, source_uids)
        if alloc is None:
            raise UidsExhausted(f"mailbox {target['id']} cannot take {count} more UIDs")
        first = alloc["first"]
        try:
            inserted = await conn.execute(
                "INSERT INTO mailbox_messages (user_id, mailbox_id, uid, message_id, flags, "
                "keywords, modseq, internaldate, internaldate_offset, size) "
                "SELECT mm.user_id, $3, $4 + s.n - 1, mm.message_id, mm.flags, mm.keywords, "
                "$5, mm.internaldate, mm.internaldate_offset, mm.size "
                "FROM unnest($6::bigint[]) WITH ORDINALITY AS s(uid, n) "
                "JOIN mailbox_messages mm ON mm.user_id = $1 AND mm.mailbox_id = $2 "
                "AND mm.uid = s.uid",
                user_id, source, target["id"], first, alloc["highestmodseq"], source_uids)
        except asyncpg.exceptions.ForeignKeyViolationError:
            raise NoSuchMessage("a message was expunged while it was being copied") from None
        if inserted != f"INSERT 0 {count}":
            raise NoSuchMessage("a message was expunged while it was being copied")
        await publish(conn, Change(user_id, "append", target["id"], uidnext=first + count,
                                   modseq=alloc["highestmodseq"]))
        return (CopyResult(target["uidvalidity"], tuple(source_uids),
                           tuple(range(first, first + count))),
                sum(r["size"] for r in sources))

    async def copy(self, user_id: int, source: int, uids: UidSet, target: int) -> CopyResult:
        """COPY (UIDPLUS): the entries of ``uids`` get new UIDs in ``target``, in source UID
        order, with their flags, INTERNALDATE and size; the message rows are shared.

        :raises NoSuchMailbox: either mailbox is gone or ``\\Noselect``.
        :raises OverQuota: the copies do not fit in the user's quota.
        :raises NoSuchMessage: a message was expunged concurrently.
        """
        async with self.db.transaction() as conn:
            locked = await lock_mailboxes(conn, user_id, [target])
            if source != target:
                await self._check_mailbox(conn, user_id, source)
            result, size = await self._copy_into(conn, user_id, source, uids, locked[target])
            if result.source_uids:
                await charge(conn, user_id, size, len(result.dest_uids))
        return result

    @staticmethod
    async def _check_mailbox(conn: asyncpg.Connection, user_id: int, mailbox_id: int) -> None:
        selectable = await conn.fetchval("SELECT NOT noselect FROM mailboxes "
                                         "WHERE user_id = $1 AND id = $2", user_id, mailbox_id)
        if not selectable:
            raise NoSuchMailbox(f"no selectable mailbox with id {mailbox_id}")

    async def move(self, user_id: int, source: int, uids: UidSet, target: int) -> MoveResult:
        """MOVE (RFC 6851): copy into ``target`` and expunge from ``source`` atomically.
        Quota is unchanged; the message rows and their references stay as they are."""
        async with self.db.transaction() as conn:
            locked = await lock_mailboxes(conn, user_id, [source, target])
            copied, _size = await self._copy_into(conn, user_id, source, uids, locked[target])
            if not copied.source_uids:
                return MoveResult(copied, Expunged((), None))
            highest = await conn.fetchval("SELECT highestmodseq FROM mailboxes "
                                          "WHERE user_id = $1 AND id = $2", user_id, source)
            modseq = highest + 1
            rows = await delete_entries(conn, user_id, source,
                                        UidSet.from_uids(copied.source_uids), only_deleted=False,
                                        modseq=modseq, tombstones=True)
            removed = [r["uid"] for r in rows]
            await publish(conn, Change(user_id, "expunge", source, modseq=modseq))
        return MoveResult(copied, Expunged(tuple(removed), modseq))

    async def expunge(self, user_id: int, mailbox_id: int,
                      uids: UidSet | None = None) -> Expunged:
        """EXPUNGE (or UID EXPUNGE over ``uids``): remove the ``\\Deleted`` entries, drop
        the references of messages no entry uses any more, refund quota, leave tombstones
        for VANISHED; one transaction."""
        async with self.db.transaction() as conn:
            mailbox = (await lock_mailboxes(conn, user_id, [mailbox_id]))[mailbox_id]
            return await remove_entries(conn, user_id, mailbox_id, uids, only_deleted=True,
                                        highestmodseq=mailbox["highestmodseq"])

    async def search(self, user_id: int, mailbox_id: int, criterion: Criterion) -> SearchHits:
        """UIDs of the entries matching ``criterion`` (see :mod:`metadata.search`)."""
        compiled = compile_criteria(criterion, first_param=3)
        join = (" JOIN messages m ON m.user_id = $1 AND m.id = mm.message_id"
                if compiled.needs_message else "")
        query = (f"SELECT mm.uid, mm.modseq FROM mailbox_messages mm{join} "
                 f"WHERE mm.user_id = $1 AND mm.mailbox_id = $2 AND {compiled.sql} "
                 "ORDER BY mm.uid")
        # A substring test's plan depends on the string and the mailbox size, and it may
        # scan the mailbox: the search pool plans every run for its parameters and allows
        # search_timeout (metadata.db).  Either way one statement, one round trip.
        connection = self.db.search_connection if compiled.substring else self.db.connection
        async with connection() as conn:
            rows = await conn.fetch(query, user_id, mailbox_id, *compiled.params)
        modseqs = tuple(r["modseq"] for r in rows)
        return SearchHits(tuple(r["uid"] for r in rows), max(modseqs, default=None), modseqs)

    async def sort_entries(self, user_id: int, mailbox_id: int,
                           criterion: Criterion) -> list[SortEntry]:
        """The entries matching ``criterion`` with every SORT/THREAD key, by UID: one
        query, no blob.  Rows older than those keys get them from their header block here
        (written back, so that happens once per message).

        SORT and THREAD use :meth:`sort_order` and :meth:`thread_entries`, which fetch only
        what they read; this full form is what the tests compare them with (the previous
        in-memory SORT and THREAD over these rows are kept there as the reference)."""
        compiled = compile_criteria(criterion, first_param=3)
        query = (f"SELECT mm.uid, mm.modseq, mm.internaldate, mm.size, m.id, m.sent_at, {_SORT_COLUMNS}, "
                 "CASE WHEN m.sort_subject IS NULL THEN m.header_block END AS header_block "
                 "FROM mailbox_messages mm JOIN messages m ON m.user_id = $1 "
                 "AND m.id = mm.message_id "
                 f"WHERE mm.user_id = $1 AND mm.mailbox_id = $2 AND {compiled.sql} "
                 "ORDER BY mm.uid")
        # See search(): one statement, on the search pool when a string is sought.
        connection = self.db.search_connection if compiled.substring else self.db.connection
        async with connection() as conn:
            rows = await conn.fetch(query, user_id, mailbox_id, *compiled.params)
        entries: list[SortEntry] = []
        computed: dict[int, SortKeys] = {}
        for r in rows:
            if r["header_block"] is not None:
                keys = computed.get(r["id"])
                if keys is None:
                    keys = computed[r["id"]] = sort_keys(r["header_block"])
            else:
                keys = SortKeys(r["sort_subject"], r["sort_reply"], r["sort_from"],
                                r["sort_to"], r["sort_cc"], r["display_from"],
                                r["display_to"], r["thread_message_id"],
                                tuple(r["thread_references"]))
            entries.append(SortEntry(r["uid"], r["modseq"], r["internaldate"],
                                     r["sent_at"] or r["internaldate"], r["size"], keys))
        if computed:
            await self._store_sort_keys(user_id, computed)
        return entries

    async def _keyed_rows(self, user_id: int, mailbox_id: int, criterion: Criterion,
                          columns: str, order: str, *,
                          needs_message: bool) -> list[asyncpg.Record]:
        """The rows of the entries matching ``criterion``: ``columns`` then, when the
        ``messages`` row is joined, the stale-keys column; ordered by ``order``.  Rows
        whose keys are not stored yet get them first (once per message), so the keys in
        what this returns are never NULL."""
        compiled = compile_criteria(criterion, first_param=3)
        needs_message = needs_message or compiled.needs_message
        join = stale = ""
        if needs_message:
            join = " JOIN messages m ON m.user_id = $1 AND m.id = mm.message_id"
            stale = f", {_STALE}"
        query = (f"SELECT {columns}{stale} FROM mailbox_messages mm{join} "
                 f"WHERE mm.user_id = $1 AND mm.mailbox_id = $2 AND {compiled.sql} "
                 f"ORDER BY {order}")
        # See search(): one statement, on the search pool when a string is sought.
        connection = self.db.search_connection if compiled.substring else self.db.connection
        for _ in range(2):
            async with connection() as conn:
                rows = await conn.fetch(query, user_id, mailbox_id, *compiled.params)
            if not needs_message:
                return rows
            last = len(rows[0]) - 1 if rows else 0
            missing = [r[last] for r in rows if r[last] is not None]
            if not missing:
                return rows
            await self._backfill_sort_keys(user_id, missing)
        raise AssertionError("sort keys still missing after they were written")

    async def sort_order(self, user_id: int, mailbox_id: int, criterion: Criterion,
                         keys: Sequence[tuple[str, bool]]) -> list[tuple[int, int]]:
        """``(uid, modseq)`` of the entries matching ``criterion`` in SORT order: by
        ``keys`` (names of :data:`SORT_ORDER`, each with whether it is REVERSE), most
        significant first, exact ties by UID (sequence order, RFC 5256) whatever the
        direction.  One query; PostgreSQL orders, only two integers per row come back."""
        order = [f"{SORT_ORDER[name][0]}{' DESC' if reverse else ''}" for name, reverse in keys]
        rows = await self._keyed_rows(
            user_id, mailbox_id, criterion, "mm.uid, mm.modseq", ", ".join([*order, "mm.uid"]),
            needs_message=any(SORT_ORDER[name][1] for name, _ in keys))
        return [(r[0], r[1]) for r in rows]

    async def thread_entries(self, user_id: int, mailbox_id: int, criterion: Criterion, *,
                             links: bool) -> list[ThreadEntry]:
        """The entries matching ``criterion`` as THREAD needs them, by UID: the sent-date
        rank and base subject, and with ``links`` (REFERENCES) the reply flag, Message-ID
        and parents' ids too.  One query."""
        columns = f"mm.uid, {_THREAD_RANK}, m.sort_subject"
        if links:
            columns += ", m.sort_reply, m.thread_message_id, m.thread_references"
        rows = await self._keyed_rows(user_id, mailbox_id, criterion, columns, "mm.uid",
                                      needs_message=True)
        if links:
            return [ThreadEntry(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows]
        return [ThreadEntry(r[0], r[1], r[2]) for r in rows]

    async def _backfill_sort_keys(self, user_id: int, message_ids: list[int]) -> None:
        """Compute and store the keys of rows older than migration 0003 from their header
        block (never a blob)."""
        async with self.db.connection() as conn:
            rows = await conn.fetch(
                "SELECT id, header_block FROM messages WHERE user_id = $1 AND id = ANY($2)",
                user_id, sorted(set(message_ids)))
        await self._store_sort_keys(user_id, {r["id"]: sort_keys(r["header_block"])
                                              for r in rows})

    async def _store_sort_keys(self, user_id: int, computed: dict[int, SortKeys]) -> None:
        """Write keys computed for rows older than migration 0003."""
        async with self.db.connection() as conn:
            await conn.executemany(
                "UPDATE messages SET sort_subject = $3, sort_reply = $4, sort_from = $5, "
                "sort_to = $6, sort_cc = $7, display_from = $8, display_to = $9, "
                "thread_message_id = $10, thread_references = $11 "
                "WHERE user_id = $1 AND id = $2",
                [(user_id, message_id, *sort_values(keys))
                 for message_id, keys in computed.items()])

    async def vanished(self, user_id: int, mailbox_id: int, since_modseq: int,
                       uids: UidSet | None = None) -> list[int]:
        """UIDs expunged after ``since_modseq`` (QRESYNC ``VANISHED (EARLIER)``)."""
        async with self.db.connection() as conn:
            rows = await conn.fetch(
                "SELECT uid FROM expunged_uids WHERE user_id = $1 AND mailbox_id = $2 "
                "AND modseq > $3 ORDER BY uid", user_id, mailbox_id, since_modseq)
        found = [r["uid"] for r in rows]
        return found if uids is None else [u for u in found if u in uids]

    async def claim_recent(self, user_id: int, mailbox_id: int) -> tuple[int, int]:
        """Claim ``\\Recent`` for the calling session: UIDs in ``[low, high)`` are recent to
        it and to no other session (RFC 3501 2.3.2).  A read-write SELECT calls it, and again
        when it learns of new messages."""
        async with self.db.connection() as conn:
            row = await conn.fetchrow(
                "UPDATE mailboxes mb SET recent_uid = mb.uidnext FROM (SELECT recent_uid "
                "FROM mailboxes WHERE user_id = $1 AND id = $2 FOR NO KEY UPDATE) AS old "
                "WHERE mb.user_id = $1 AND mb.id = $2 RETURNING old.recent_uid, mb.uidnext",
                user_id, mailbox_id)
        if row is None:
            raise NoSuchMailbox(f"no mailbox with id {mailbox_id}")
        return row["recent_uid"], row["uidnext"]

    async def blob_ids(self, user_id: int, message_id: int) -> list[str]:
        """The blobs a message references (skeleton included), sorted."""
        async with self.db.connection() as conn:
            rows = await conn.fetch("SELECT blob_id FROM message_blobs WHERE user_id = $1 "
                                    "AND message_id = $2 ORDER BY blob_id", user_id, message_id)
        return [blob_name(r["blob_id"]) for r in rows]


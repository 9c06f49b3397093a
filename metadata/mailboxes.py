"""A user's mailboxes: CREATE, LIST/LSUB, RENAME, DELETE, SUBSCRIBE, STATUS.

Every ancestor of an existing mailbox exists as a row too (CREATE and RENAME make missing
ones), so LIST derives ``\\HasChildren`` from names alone.  DELETE of a mailbox that has
children keeps the name as ``\\Noselect`` and removes its messages (RFC 3501 6.3.4).

UIDVALIDITY comes from ``users.last_uidvalidity``: the larger of the clock (seconds) and the
last value given to this user plus one, so a mailbox deleted and created again within the
same second still gets a new UIDVALIDITY.  Lock order, extending :mod:`metadata.messages`:
the ``users`` row first, then mailbox rows, then messages, then ``user_usage``.
"""

from __future__ import annotations

import asyncpg

from metadata import mailboxnames
from metadata.db import Database
from metadata.errors import (
    InvalidName,
    MailboxExists,
    MailboxRefused,
    NoSuchMailbox,
    NoSuchUser,
)
from metadata.mailboxnames import INBOX, ancestors, compile_pattern, is_inferior
from metadata.messages import remove_entries
from metadata.notify import Change, publish
from metadata.records import ListedMailbox, Mailbox, MailboxStatus, MailboxTree
from metadata.uidset import MAX_UID

__all__ = [
    "DEFAULT_MAILBOXES",
    "PREFIXED_COLUMNS",
    "SPECIAL_USES",
    "Mailboxes",
    "allocate_uidvalidity",
    "create_defaults",
    "lock_user",
    "normalize_name",
    "prefixed_mailbox",
]

#: Created with every user: INBOX and the RFC 6154 special-use mailboxes.
DEFAULT_MAILBOXES: tuple[tuple[str, str | None], ...] = (
    ("INBOX", None),
    ("Drafts", "\\Drafts"),
    ("Sent", "\\Sent"),
    ("Trash", "\\Trash"),
    ("Junk", "\\Junk"),
    ("Archive", "\\Archive"),
)
SPECIAL_USES = frozenset({"\\All", "\\Archive", "\\Drafts", "\\Flagged", "\\Junk", "\\Sent",
                          "\\Trash"})

_COLUMNS = ("user_id, id, name, uidvalidity, uidnext, highestmodseq, special_use, noselect, "
            "keywords")
_SUBTREE = "(name = $2 OR starts_with(name, $2 || '/'))"
#: STATUS/SELECT: the mailbox row with its counters, the \Recent count and the first
#: unseen UID (``{key}`` is ``name`` or ``id``).
_STATUS = (
    f"SELECT {_COLUMNS}, n_messages, n_unseen, n_deleted, total_size, deleted_size, "
    "(SELECT count(*) FROM mailbox_messages mm WHERE mm.user_id = mb.user_id "
    " AND mm.mailbox_id = mb.id AND mm.uid >= mb.recent_uid) AS recent, "
    "(SELECT min(mm.uid) FROM mailbox_messages mm WHERE mm.user_id = mb.user_id "
    " AND mm.mailbox_id = mb.id AND mm.flags & 1 = 0) AS first_unseen "
    "FROM mailboxes mb WHERE mb.user_id = $1 AND mb.{key} = $2")
_STATUS_BY_NAME = _STATUS.format(key="name")
_STATUS_BY_ID = _STATUS.format(key="id")
#: LIST-STATUS: the same counts for many mailboxes in one statement (no first unseen UID,
#: which STATUS does not report).
_STATUSES = (
    f"SELECT {_COLUMNS}, n_messages, n_unseen, n_deleted, total_size, deleted_size, "
    "{recent} AS recent "
    "FROM mailboxes mb WHERE mb.user_id = $1 AND mb.id = ANY($2::bigint[]) "
    "AND NOT mb.noselect")
_STATUSES_RECENT = _STATUSES.format(recent=(
    "(SELECT count(*) FROM mailbox_messages mm WHERE mm.user_id = mb.user_id "
    " AND mm.mailbox_id = mb.id AND mm.uid >= mb.recent_uid)"))
#: Without RECENT, the statement reads the mailbox rows alone.
_STATUSES_COUNTERS = _STATUSES.format(recent="0")


def _mailbox(row: asyncpg.Record) -> Mailbox:
    return Mailbox(row["user_id"], row["id"], row["name"], row["uidvalidity"], row["uidnext"],
                   row["highestmodseq"], row["special_use"], row["noselect"],
                   tuple(row["keywords"]))


#: The columns of a mailbox row as ``mb_<column>`` from a table aliased ``mb``, for a
#: query that reads a mailbox beside other rows (:func:`prefixed_mailbox` reads them back).
PREFIXED_COLUMNS = ", ".join(f"mb.{c.strip()} AS mb_{c.strip()}" for c in _COLUMNS.split(","))


def prefixed_mailbox(row: asyncpg.Record, name: str, *, selectable: bool = True) -> Mailbox:
    """The mailbox :data:`PREFIXED_COLUMNS` read, looked up by its stored ``name``
    (:meth:`Mailboxes.get`'s rules).

    :raises NoSuchMailbox: there was none (the columns are NULL), or it is ``\\Noselect``
        and ``selectable``.
    """
    if row["mb_id"] is None or (selectable and row["mb_noselect"]):
        raise NoSuchMailbox(f"no mailbox {name!r}")
    return Mailbox(row["mb_user_id"], row["mb_id"], row["mb_name"], row["mb_uidvalidity"],
                   row["mb_uidnext"], row["mb_highestmodseq"], row["mb_special_use"],
                   row["mb_noselect"], tuple(row["mb_keywords"]))


def normalize_name(name: str) -> str:
    """The stored form of a mailbox name (INBOX in any case is ``INBOX``).

    :raises InvalidName: not a valid mailbox name.
    """
    try:
        return mailboxnames.normalize(name)
    except ValueError as exc:
        raise InvalidName(str(exc)) from None


_normalize = normalize_name


async def lock_user(conn: asyncpg.Connection, user_id: int) -> None:
    """Take the ``users`` row first, as every mailbox-structure change does.

    :raises NoSuchUser: no such user.
    """
    found = await conn.fetchval("SELECT 1 FROM users WHERE id = $1 FOR NO KEY UPDATE", user_id)
    if found is None:
        raise NoSuchUser(f"no user with id {user_id}")


async def allocate_uidvalidity(conn: asyncpg.Connection, user_id: int, count: int = 1) -> int:
    """Reserve ``count`` consecutive new UIDVALIDITY values for the user; return the first."""
    first = await conn.fetchval(
        "UPDATE users SET last_uidvalidity = greatest(last_uidvalidity + 1, "
        "extract(epoch FROM clock_timestamp())::bigint) + $2 - 1 WHERE id = $1 "
        "RETURNING last_uidvalidity - $2 + 1", user_id, count)
    if first is None:
        raise NoSuchUser(f"no user with id {user_id}")
    if first + count - 1 > MAX_UID:
        raise MailboxRefused("UIDVALIDITY values exhausted for this user")
    return int(first)


async def _insert(conn: asyncpg.Connection, user_id: int,
                  names: list[tuple[str, str | None]]) -> list[Mailbox]:
    if not names:
        return []
    first = await allocate_uidvalidity(conn, user_id, len(names))
    rows = await conn.fetch(
        "INSERT INTO mailboxes (user_id, name, uidvalidity, special_use) "
        "SELECT $1, n, $2 + o - 1, s FROM unnest($3::text[], $4::text[]) "
        f"WITH ORDINALITY AS t(n, s, o) RETURNING {_COLUMNS}",
        user_id, first, [n for n, _ in names], [s for _, s in names])
    return [_mailbox(r) for r in rows]


async def create_defaults(conn: asyncpg.Connection, user_id: int) -> list[Mailbox]:
    """Create and subscribe the default mailboxes (inside the user's creation transaction)."""
    created = await _insert(conn, user_id, list(DEFAULT_MAILBOXES))
    await conn.execute("INSERT INTO subscriptions (user_id, name) SELECT $1, n "
                       "FROM unnest($2::text[]) AS n ON CONFLICT DO NOTHING",
                       user_id, [n for n, _ in DEFAULT_MAILBOXES])
    return created


async def _get_by_id(conn: asyncpg.Connection, user_id: int, mailbox_id: int) -> Mailbox:
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM mailboxes WHERE user_id = $1 AND id = $2",
                              user_id, mailbox_id)
    if row is None:
        raise NoSuchMailbox(f"no mailbox with id {mailbox_id}")
    return _mailbox(row)


def _sort_key(name: str) -> tuple[bool, str]:
    return (name != INBOX and not name.startswith(INBOX + "/"), name)


class Mailboxes:
    """Mailbox operations for one user at a time; each method is one transaction."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(self, user_id: int, name: str, *, special_use: str | None = None,
                     ) -> Mailbox:
        """CREATE ``name`` (one trailing ``/`` is ignored) and any missing ancestors.

        Creating a name that exists only as ``\\Noselect`` makes it a mailbox again, with a
        new UIDVALIDITY.

        :raises MailboxExists: a selectable mailbox has this name.
        :raises InvalidName: see :func:`metadata.mailboxnames.normalize`.
        :raises ValueError: ``special_use`` is not an RFC 6154 attribute.
        """
        if special_use is not None and special_use not in SPECIAL_USES:
            raise ValueError(f"not a special-use attribute: {special_use!r}")
        if name.endswith(mailboxnames.DELIMITER):
            name = name[:-1]
        name = _normalize(name)
        wanted = [*ancestors(name), name]
        async with self.db.transaction() as conn:
            await lock_user(conn, user_id)
            rows = await conn.fetch(
                "SELECT id, name, noselect FROM mailboxes WHERE user_id = $1 "
                "AND name = ANY($2::text[])", user_id, wanted)
            existing = {r["name"]: r for r in rows}
            if name in existing:
                if not existing[name]["noselect"]:
                    raise MailboxExists(f"mailbox {name!r} already exists")
                uidvalidity = await allocate_uidvalidity(conn, user_id)
                row = await conn.fetchrow(
                    "UPDATE mailboxes SET noselect = false, uidvalidity = $3, uidnext = 1, "
                    "recent_uid = 1, special_use = $4, keywords = '{}' WHERE user_id = $1 AND id = $2 "
                    f"RETURNING {_COLUMNS}", user_id, existing[name]["id"], uidvalidity,
                    special_use)
                mailbox = _mailbox(row)
            else:
                missing = [(n, None) for n in wanted[:-1] if n not in existing]
                created = await _insert(conn, user_id, [*missing, (name, special_use)])
                mailbox = created[-1]
            await publish(conn, Change(user_id, "mailbox", mailbox.id))
        return mailbox

    async def get(self, user_id: int, name: str, *, selectable: bool = True) -> Mailbox:
        """The mailbox called ``name`` (INBOX in any case).

        :raises NoSuchMailbox: there is none, or it is ``\\Noselect`` and ``selectable``.
        """
        name = _normalize(name)
        async with self.db.connection() as conn:
            row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM mailboxes WHERE user_id = $1 "
                                      "AND name = $2", user_id, name)
        if row is None or (selectable and row["noselect"]):
            raise NoSuchMailbox(f"no mailbox {name!r}")
        return _mailbox(row)

    async def get_by_id(self, user_id: int, mailbox_id: int) -> Mailbox:
        """The mailbox with this id (selected sessions refresh UIDNEXT etc. with it).

        :raises NoSuchMailbox: it was deleted.
        """
        async with self.db.connection() as conn:
            return await _get_by_id(conn, user_id, mailbox_id)

    async def tree(self, user_id: int) -> MailboxTree:
        """Every mailbox row and subscribed name of the user, from one snapshot (LIST
        chooses among them, :mod:`imapd.listing`)."""
        async with self.db.transaction(readonly=True, isolation="repeatable_read") as conn:
            rows = await conn.fetch(f"SELECT {_COLUMNS} FROM mailboxes WHERE user_id = $1",
                                    user_id)
            subscribed = await conn.fetch("SELECT name FROM subscriptions WHERE user_id = $1",
                                          user_id)
        return MailboxTree(tuple(_mailbox(r) for r in rows),
                           frozenset(r["name"] for r in subscribed))

    async def statuses(self, user_id: int, mailbox_ids: list[int], *,
                       recent: bool = True) -> dict[int, MailboxStatus]:
        """STATUS counts of several mailboxes by id in one statement (LIST-STATUS, RFC
        5819); ids of mailboxes deleted meanwhile (or ``\\Noselect``) are left out.
        ``first_unseen_uid`` is None: STATUS has no use for it.

        :param recent: count ``\\Recent`` (the only count that reads entries); when False
            ``recent`` is 0 and only the mailbox rows are read.
        """
        if not mailbox_ids:
            return {}
        async with self.db.connection() as conn:
            rows = await conn.fetch(_STATUSES_RECENT if recent else _STATUSES_COUNTERS,
                                    user_id, mailbox_ids)
        return {r["id"]: MailboxStatus(_mailbox(r), r["n_messages"], r["recent"], r["n_unseen"],
                                       r["n_deleted"], r["total_size"], None,
                                       r["deleted_size"])
                for r in rows}

    async def list(self, user_id: int, pattern: str = "*", *,
                   subscribed_only: bool = False) -> list[ListedMailbox]:
        """LIST (or LSUB with ``subscribed_only``) of names matching ``pattern``; INBOX first,
        then by name.  The IMAP layer joins reference and pattern before calling."""
        matches = compile_pattern(pattern)
        async with self.db.transaction(readonly=True, isolation="repeatable_read") as conn:
            rows = await conn.fetch(f"SELECT {_COLUMNS} FROM mailboxes WHERE user_id = $1",
                                    user_id)
            subscribed = {r["name"] for r in await conn.fetch(
                "SELECT name FROM subscriptions WHERE user_id = $1", user_id)}
        boxes = {r["name"]: _mailbox(r) for r in rows}
        parents = {a for n in boxes for a in ancestors(n)}
        sub_parents = {a for n in subscribed for a in ancestors(n)}

        def listed(name: str) -> ListedMailbox:
            box = boxes.get(name)
            attrs = ["\\HasChildren" if name in parents else "\\HasNoChildren"]
            if box is None or box.noselect:
                attrs.append("\\Noselect")
            if box is None:
                attrs.append("\\NonExistent")
            if name in subscribed:
                attrs.append("\\Subscribed")
            if box is not None and box.special_use:
                attrs.append(box.special_use)
            return ListedMailbox(name, tuple(attrs), box)

        if not subscribed_only:
            names = {n for n in boxes if matches(n)}
        else:
            names = {n for n in subscribed if matches(n)}
            # RFC 3501 6.3.9: with "%", a parent of a subscribed name the pattern does not
            # reach is listed as \Noselect.
            for parent in sub_parents - subscribed:
                if matches(parent) and any(is_inferior(n, parent) and not matches(n)
                                           for n in subscribed):
                    names.add(parent)
        result = []
        for name in sorted(names, key=_sort_key):
            item = listed(name)
            if subscribed_only and name not in subscribed and "\\Noselect" not in item.attributes:
                item = ListedMailbox(name, (*item.attributes, "\\Noselect"), item.mailbox)
            result.append(item)
        return result

    async def rename(self, user_id: int, old: str, new: str) -> Mailbox:
        """RENAME ``old`` (with its children) to ``new``, creating missing ancestors of
        ``new``; UIDVALIDITY and subscriptions follow the mailboxes.

        Renaming INBOX moves its messages to a new mailbox ``new`` and leaves INBOX empty
        (its children stay where they are), as RFC 3501 6.3.5 says.

        :raises NoSuchMailbox: ``old`` does not exist.
        :raises MailboxExists: ``new`` or a name the children would take exists.
        :raises MailboxRefused: ``new`` lies below ``old``.
        """
        old, new = _normalize(old), _normalize(new)
        if old == new:
            raise MailboxExists(f"mailbox {new!r} already exists")
        if is_inferior(new, old):
            raise MailboxRefused(f"cannot rename {old!r} below itself")
        async with self.db.transaction() as conn:
            await lock_user(conn, user_id)
            if old == INBOX:
                mailbox = await self._rename_inbox(conn, user_id, new)
            else:
                mailbox = await self._rename_tree(conn, user_id, old, new)
            await publish(conn, Change(user_id, "mailbox", mailbox.id))
        return mailbox

    async def _create_ancestors(self, conn: asyncpg.Connection, user_id: int, name: str,
                                ) -> None:
        wanted = ancestors(name)
        if not wanted:
            return
        rows = await conn.fetch("SELECT name FROM mailboxes WHERE user_id = $1 "
                                "AND name = ANY($2::text[])", user_id, wanted)
        have = {r["name"] for r in rows}
        await _insert(conn, user_id, [(n, None) for n in wanted if n not in have])

    async def _rename_tree(self, conn: asyncpg.Connection, user_id: int, old: str,
                           new: str) -> Mailbox:
        subtree = await conn.fetch(f"SELECT id, name FROM mailboxes WHERE user_id = $1 AND "
                                   f"{_SUBTREE} ORDER BY id FOR NO KEY UPDATE", user_id, old)
        if not any(r["name"] == old for r in subtree):
            raise NoSuchMailbox(f"no mailbox {old!r}")
        targets = [mailboxnames.renamed(r["name"], old, new) for r in subtree]
        clash = await conn.fetchval("SELECT name FROM mailboxes WHERE user_id = $1 "
                                    "AND name = ANY($2::text[]) LIMIT 1", user_id, targets)
        if clash is not None:
            raise MailboxExists(f"mailbox {clash!r} already exists")
        await conn.execute(
            "UPDATE mailboxes SET name = $3 || substr(name, length($2) + 1) "
            f"WHERE user_id = $1 AND {_SUBTREE}", user_id, old, new)
        await conn.execute(
            "INSERT INTO subscriptions (user_id, name) SELECT user_id, "
            f"$3 || substr(name, length($2) + 1) FROM subscriptions WHERE user_id = $1 "
            f"AND {_SUBTREE} ON CONFLICT DO NOTHING", user_id, old, new)
        await conn.execute(f"DELETE FROM subscriptions WHERE user_id = $1 AND {_SUBTREE}",
                           user_id, old)
        await self._create_ancestors(conn, user_id, new)
        row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM mailboxes WHERE user_id = $1 "
                                  "AND name = $2", user_id, new)
        return _mailbox(row)

    async def _rename_inbox(self, conn: asyncpg.Connection, user_id: int, new: str) -> Mailbox:
        inbox = await conn.fetchrow("SELECT id, highestmodseq FROM mailboxes WHERE user_id = $1 "
                                    "AND name = $2 FOR NO KEY UPDATE", user_id, INBOX)
        if inbox is None:
            raise NoSuchMailbox("no INBOX")
        exists = await conn.fetchval("SELECT 1 FROM mailboxes WHERE user_id = $1 AND name = $2",
                                     user_id, new)
        if exists:
            raise MailboxExists(f"mailbox {new!r} already exists")
        await self._create_ancestors(conn, user_id, new)
        (target,) = await _insert(conn, user_id, [(new, None)])
        moved = await conn.fetch(
            "INSERT INTO mailbox_messages (user_id, mailbox_id, uid, message_id, flags, "
            "keywords, modseq, internaldate, internaldate_offset, size) "
            "SELECT user_id, $3, row_number() OVER (ORDER BY uid), message_id, flags, "
            "keywords, 1, internaldate, internaldate_offset, size FROM mailbox_messages "
            "WHERE user_id = $1 AND mailbox_id = $2 RETURNING uid",
            user_id, inbox["id"], target.id)
        if moved:
            await conn.execute(
                "UPDATE mailboxes SET uidnext = $3, keywords = (SELECT keywords FROM mailboxes "
                "WHERE user_id = $1 AND id = $4) WHERE user_id = $1 AND id = $2",
                user_id, target.id, len(moved) + 1, inbox["id"])
            await remove_entries(conn, user_id, inbox["id"], None, only_deleted=False,
                                 highestmodseq=inbox["highestmodseq"], refund=False)
        return await _get_by_id(conn, user_id, target.id)

    async def delete(self, user_id: int, name: str) -> None:
        """DELETE ``name``: its messages are expunged (references dropped, quota refunded) and
        the row removed, or kept as ``\\Noselect`` while it has children.

        :raises MailboxRefused: INBOX, or a ``\\Noselect`` name that still has children.
        :raises NoSuchMailbox: there is no such name.
        """
        name = _normalize(name)
        if name == INBOX:
            raise MailboxRefused("INBOX cannot be deleted")
        async with self.db.transaction() as conn:
            await lock_user(conn, user_id)
            row = await conn.fetchrow(
                "SELECT id, highestmodseq, noselect, EXISTS (SELECT 1 FROM mailboxes c "
                "WHERE c.user_id = $1 AND starts_with(c.name, $2 || '/')) AS has_children "
                "FROM mailboxes WHERE user_id = $1 AND name = $2 FOR NO KEY UPDATE",
                user_id, name)
            if row is None:
                raise NoSuchMailbox(f"no mailbox {name!r}")
            if row["noselect"] and row["has_children"]:
                raise MailboxRefused(f"{name!r} has children and holds no messages")
            await remove_entries(conn, user_id, row["id"], None, only_deleted=False,
                                 highestmodseq=row["highestmodseq"], tombstones=False)
            await conn.execute("DELETE FROM expunged_uids WHERE user_id = $1 AND mailbox_id = $2",
                               user_id, row["id"])
            if row["has_children"]:
                await conn.execute("UPDATE mailboxes SET noselect = true, special_use = NULL "
                                   "WHERE user_id = $1 AND id = $2", user_id, row["id"])
            else:
                await conn.execute("DELETE FROM mailboxes WHERE user_id = $1 AND id = $2",
                                   user_id, row["id"])
            await publish(conn, Change(user_id, "mailbox", row["id"]))

    async def subscribe(self, user_id: int, name: str) -> bool:
        """SUBSCRIBE ``name`` (which need not exist); False if it already was."""
        name = _normalize(name)
        async with self.db.transaction() as conn:
            status = await conn.execute("INSERT INTO subscriptions (user_id, name) VALUES ($1, $2) "
                                        "ON CONFLICT DO NOTHING", user_id, name)
            if status == "INSERT 0 1":
                await publish(conn, Change(user_id, "subscription"))
        return bool(status == "INSERT 0 1")

    async def unsubscribe(self, user_id: int, name: str) -> bool:
        """UNSUBSCRIBE ``name``; False if it was not subscribed."""
        name = _normalize(name)
        async with self.db.transaction() as conn:
            status = await conn.execute("DELETE FROM subscriptions WHERE user_id = $1 "
                                        "AND name = $2", user_id, name)
            if status == "DELETE 1":
                await publish(conn, Change(user_id, "subscription"))
        return bool(status == "DELETE 1")

    async def status(self, user_id: int, mailbox: int | str) -> MailboxStatus:
        """Counts for SELECT and STATUS, from one statement (one snapshot); ``mailbox`` is
        an id or a name.

        MESSAGES, UNSEEN, \\Deleted and SIZE are the mailbox row's counters (kept by the
        triggers of migration 4), so the cost does not grow with the mailbox; \\Recent
        counts the UIDs from ``recent_uid`` on, and the first unseen UID is one index probe.

        :raises NoSuchMailbox: no such selectable mailbox.
        """
        key = "name" if isinstance(mailbox, str) else "id"
        value = _normalize(mailbox) if isinstance(mailbox, str) else mailbox
        async with self.db.connection() as conn:
            row = await conn.fetchrow(_STATUS_BY_NAME if key == "name" else _STATUS_BY_ID,
                                      user_id, value)
        if row is None or row["noselect"]:
            raise NoSuchMailbox(f"no selectable mailbox {mailbox!r}")
        return MailboxStatus(_mailbox(row), row["n_messages"], row["recent"], row["n_unseen"],
                             row["n_deleted"], row["total_size"], row["first_unseen"],
                             row["deleted_size"])


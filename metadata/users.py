"""Users: creation with the default mailboxes, password checks, quotas, deletion.

Password hashing and checking (scrypt, tens of milliseconds) run in a worker thread so the
event loop keeps serving other sessions.  An unknown name costs the same scrypt run as a
wrong password, so response time does not reveal which names exist.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Sequence

import asyncpg

from metadata.db import Database
from metadata.errors import InvalidName, InvalidPassword, NoSuchUser, UserExists
from metadata.mailboxes import (
    PREFIXED_COLUMNS,
    create_defaults,
    normalize_name,
    prefixed_mailbox,
)
from metadata.mailboxnames import INBOX
from metadata.notify import Change, publish
from metadata.passwords import (
    DEFAULT_PARAMS,
    ScryptParams,
    VerifiedLogins,
    hash_password,
    needs_rehash,
    verify_password,
)
from metadata.records import DeletedUser, Mailbox, UsageTotals, User

__all__ = ["MAX_USER_NAME", "Users", "validate_user_name"]

MAX_USER_NAME = 255
# Printable, no whitespace: names appear in IMAP LOGIN atoms, LMTP addresses and logs.
_USER_NAME = re.compile(r"[^\x00-\x20\x7f\s]+\Z")

_SELECT = ("SELECT u.id, u.name, u.created_at, g.quota_bytes, g.used_bytes, g.message_count, "
           "g.quota_messages FROM users u JOIN user_usage g ON g.user_id = u.id")


#: What :meth:`Users.recipient` reads besides the user ($2: INBOX's name).
_RECIPIENT_COLUMNS = ("SELECT c.n, (SELECT mb.id FROM mailboxes mb WHERE mb.user_id = u.id "
                      "AND mb.name = $2 AND NOT mb.noselect) AS inbox_id, ")

_SELECT_WITH_HASH = _SELECT.replace("SELECT u.id,", "SELECT u.password_hash, u.id,", 1)

#: :meth:`Users.get_with_mailbox`: the user ($1) with one of its mailboxes ($2, the stored
#: name), NULL columns when it has no such mailbox.
_SELECT_WITH_MAILBOX = (
    _SELECT.replace(" FROM users u", f", {PREFIXED_COLUMNS} FROM users u", 1)
    + " "
    "LEFT JOIN mailboxes mb ON mb.user_id = u.id AND mb.name = $2 "
    "WHERE lower(u.name) = lower($1)")


def validate_user_name(name: str) -> str:
    """``name`` if it can be a user name.

    :raises InvalidName: empty, longer than :data:`MAX_USER_NAME`, or holding whitespace or
        control characters.
    """
    if not name or len(name) > MAX_USER_NAME or not _USER_NAME.match(name):
        raise InvalidName(f"invalid user name {name[:80]!r}: 1 to {MAX_USER_NAME} printable "
                          "characters without spaces")
    return name


def _user(row: asyncpg.Record) -> User:
    return User(row["id"], row["name"], row["quota_bytes"], row["used_bytes"],
                row["message_count"], row["created_at"], row["quota_messages"])


class Users:
    """The user directory and per-user usage."""

    def __init__(self, db: Database, *, password_params: ScryptParams = DEFAULT_PARAMS,
                 verified: VerifiedLogins | None = None,
                 verify: Callable[[str, str], bool] = verify_password) -> None:
        self.db = db
        self.password_params = password_params
        self.verified = verified if verified is not None else VerifiedLogins()
        self._verify = verify
        self._decoy: str | None = None

    async def _hash(self, password: str) -> str:
        """:raises InvalidPassword: empty or too long (the user's to fix)."""
        try:
            return await asyncio.to_thread(hash_password, password, self.password_params)
        except ValueError as exc:
            raise InvalidPassword(str(exc)) from None

    async def create(self, name: str, password: str, *, quota_bytes: int = 0,
                     quota_messages: int = 0) -> User:
        """Create a user with the default mailboxes (INBOX, Drafts, Sent, Trash, Junk,
        Archive, all subscribed), in one transaction.

        :param quota_bytes: storage quota; 0 means unlimited.
        :param quota_messages: most messages (mailbox entries); 0 means unlimited.
        :raises UserExists: the name is taken (compared case-insensitively).
        :raises InvalidName: see :func:`validate_user_name`.
        :raises InvalidPassword: empty or too long password.
        :raises ValueError: negative quota (the caller's bug).
        """
        validate_user_name(name)
        if quota_bytes < 0 or quota_messages < 0:
            raise ValueError("quota must not be negative")
        hashed = await self._hash(password)
        try:
            async with self.db.transaction() as conn:
                user_id = await conn.fetchval(
                    "INSERT INTO users (name, password_hash) VALUES ($1, $2) RETURNING id",
                    name, hashed)
                await conn.execute("INSERT INTO user_usage (user_id, quota_bytes, "
                                   "quota_messages) VALUES ($1, $2, $3)",
                                   user_id, quota_bytes, quota_messages)
                await create_defaults(conn, user_id)
                row = await conn.fetchrow(f"{_SELECT} WHERE u.id = $1", user_id)
        except asyncpg.exceptions.UniqueViolationError:
            raise UserExists(f"user {name!r} already exists") from None
        return _user(row)

    async def get(self, name: str) -> User:
        """The user called ``name`` (any case).

        :raises NoSuchUser: there is none.
        """
        if "\x00" in name:  # PostgreSQL text cannot hold NUL: no user is called that
            raise NoSuchUser("no user with a NUL in the name")
        async with self.db.connection() as conn:
            row = await conn.fetchrow(f"{_SELECT} WHERE lower(u.name) = lower($1)", name)
        if row is None:
            raise NoSuchUser(f"no user {name!r}")
        return _user(row)

    async def get_with_mailbox(self, name: str, mailbox: str) -> tuple[User, Mailbox]:
        """The user called ``name`` (any case) and its selectable mailbox ``mailbox``, in
        one query: what :meth:`get` and then ``Mailboxes.get`` return, with their errors in
        the same order (an APPEND's lookups before its transaction).

        :raises NoSuchUser: there is no such user.
        :raises InvalidName: ``mailbox`` is not a valid name (the user exists).
        :raises NoSuchMailbox: the user has no such mailbox, or it is ``\\Noselect``.
        """
        try:
            stored = normalize_name(mailbox)
        except InvalidName:
            await self.get(name)  # NoSuchUser comes first, as in two lookups
            raise
        if "\x00" in name:  # PostgreSQL text cannot hold NUL: no user is called that
            raise NoSuchUser("no user with a NUL in the name")
        async with self.db.connection() as conn:
            row = await conn.fetchrow(_SELECT_WITH_MAILBOX, name, stored)
        if row is None:
            raise NoSuchUser(f"no user {name!r}")
        return _user(row), prefixed_mailbox(row, stored)

    async def first_of(self, names: Sequence[str]) -> tuple[int, User]:
        """The user called by the first of ``names`` (any case) that names one, and that
        name's index, in one query: LMTP tries a whole address, then its local part.

        :raises NoSuchUser: none of them does.
        """
        which, user, _inbox = await self.recipient(names)
        return which, user

    async def recipient(self, names: Sequence[str]) -> tuple[int, User, int | None]:
        """:meth:`first_of`, with the id of the user's INBOX (None if not selectable) from
        the same query: an LMTP delivery to the INBOX then needs no mailbox lookup.

        :raises NoSuchUser: none of ``names`` names a user.
        """
        # PostgreSQL text cannot hold NUL: no user is called that.
        wanted = [("" if "\x00" in n else n) for n in names]
        row = None
        if any(wanted):
            async with self.db.connection() as conn:
                row = await conn.fetchrow(
                    f"{_SELECT.replace('SELECT ', _RECIPIENT_COLUMNS, 1)} "
                    "JOIN unnest($1::text[]) WITH ORDINALITY AS c(name, n) "
                    "ON lower(u.name) = lower(c.name) ORDER BY c.n LIMIT 1", wanted, INBOX)
        if row is None:
            raise NoSuchUser(f"no user {' or '.join(map(repr, names))}")
        return row["n"] - 1, _user(row), row["inbox_id"]

    async def get_by_id(self, user_id: int) -> User:
        """:raises NoSuchUser: there is none."""
        async with self.db.connection() as conn:
            row = await conn.fetchrow(f"{_SELECT} WHERE u.id = $1", user_id)
        if row is None:
            raise NoSuchUser(f"no user with id {user_id}")
        return _user(row)

    async def list(self) -> list[User]:
        """Every user, by name (an operator's view: the one query over all users)."""
        async with self.db.connection() as conn:
            rows = await conn.fetch(f"{_SELECT} ORDER BY lower(u.name)")
        return [_user(r) for r in rows]

    async def authenticate(self, name: str, password: str) -> User | None:
        """The user if ``password`` is theirs, else None (unknown name included).

        One query fetches the user and the stored hash.  A password verified against the
        same stored hash within :attr:`verified`'s TTL is not run through scrypt again.
        A hash made with other scrypt parameters than the current ones is replaced on
        success, so raising the cost reaches every active user.
        """
        row = None
        if "\x00" not in name:  # PostgreSQL text cannot hold NUL: no user is called that
            async with self.db.connection() as conn:
                row = await conn.fetchrow(
                    f"{_SELECT_WITH_HASH} WHERE lower(u.name) = lower($1)", name)
        if row is not None:
            stored = row["password_hash"]
            if self.verified.known(password, stored):
                return _user(row)
        else:
            if self._decoy is None:
                # Checked against when the name is unknown, to spend the same time.
                self._decoy = await self._hash("objmail-decoy-password")
            stored = self._decoy
        ok = await asyncio.to_thread(self._verify, password, stored)
        if row is None or not ok:
            return None
        if needs_rehash(stored, self.password_params):
            fresh = await self._hash(password)
            async with self.db.connection() as conn:
                await conn.execute("UPDATE users SET password_hash = $2 WHERE id = $1 "
                                   "AND password_hash = $3", row["id"], fresh, stored)
            stored = fresh
        self.verified.remember(password, stored)
        return _user(row)

    async def set_password(self, name: str, password: str) -> None:
        """Replace the user's password.

        :raises NoSuchUser: there is no such user.
        :raises InvalidPassword: empty or too long password.
        """
        hashed = await self._hash(password)
        async with self.db.connection() as conn:
            status = await conn.execute("UPDATE users SET password_hash = $2 "
                                        "WHERE lower(name) = lower($1)", name, hashed)
        if status != "UPDATE 1":
            raise NoSuchUser(f"no user {name!r}")

    async def set_quota(self, name: str, quota_bytes: int | None,
                        quota_messages: int | None = None) -> User:
        """Set the storage quota in bytes and/or the message quota (0 = unlimited, None =
        unchanged).  Lowering one below usage refuses new mail only.

        :raises NoSuchUser: there is no such user.
        """
        if (quota_bytes or 0) < 0 or (quota_messages or 0) < 0:
            raise ValueError("quota must not be negative")
        async with self.db.connection() as conn:
            status = await conn.execute(
                "UPDATE user_usage g SET quota_bytes = coalesce($2, g.quota_bytes), "
                "quota_messages = coalesce($3, g.quota_messages) FROM users u "
                "WHERE g.user_id = u.id AND lower(u.name) = lower($1)", name, quota_bytes,
                quota_messages)
        if status != "UPDATE 1":
            raise NoSuchUser(f"no user {name!r}")
        return await self.get(name)

    async def totals(self) -> UsageTotals:
        """Users, mailbox entries and bytes over the whole database (``objmail stats``'s
        logical bytes: what users see, before dedup)."""
        async with self.db.connection() as conn:
            row = await conn.fetchrow("SELECT count(*) AS users, "
                                      "coalesce(sum(message_count), 0) AS entries, "
                                      "coalesce(sum(used_bytes), 0) AS bytes FROM user_usage")
        return UsageTotals(row["users"], int(row["entries"]), int(row["bytes"]))

    async def delete(self, name: str) -> DeletedUser:
        """Remove the user, their mailboxes, messages and blob references in one transaction.

        The blobs themselves stay on the object servers until gc finds them unreferenced.

        :raises NoSuchUser: there is no such user.
        """
        async with self.db.transaction() as conn:
            # Locking the users row first waits out deliveries in flight (they hold a key
            # share on it through their foreign keys) and blocks new ones.
            user = await conn.fetchrow("SELECT id, name FROM users WHERE lower(name) = lower($1) "
                                       "FOR UPDATE", name)
            if user is None:
                raise NoSuchUser(f"no user {name!r}")
            uid = user["id"]
            await conn.execute("DELETE FROM expunged_uids WHERE user_id = $1", uid)
            await conn.execute("DELETE FROM mailbox_messages WHERE user_id = $1", uid)
            refs = await conn.execute("DELETE FROM message_blobs WHERE user_id = $1", uid)
            messages = await conn.execute("DELETE FROM messages WHERE user_id = $1", uid)
            await conn.execute("DELETE FROM subscriptions WHERE user_id = $1", uid)
            mailboxes = await conn.execute("DELETE FROM mailboxes WHERE user_id = $1", uid)
            await conn.execute("DELETE FROM user_usage WHERE user_id = $1", uid)
            await conn.execute("DELETE FROM users WHERE id = $1", uid)
            await publish(conn, Change(uid, "user"))
        return DeletedUser(user["name"], _count(mailboxes), _count(messages), _count(refs))


def _count(status: str) -> int:
    """The row count of a command status such as ``DELETE 12``."""
    return int(status.rsplit(" ", 1)[1])

"""Change notification across processes through PostgreSQL LISTEN/NOTIFY.

Theory of operation: every transaction that changes a user's mailboxes also runs
``pg_notify('objmail_user_<id>', payload)``.  PostgreSQL delivers a notification only when
that transaction commits, to every session listening on the channel, in commit order, so a
listener never hears of a change it cannot yet read.  The payload is a few bytes of JSON
(mailbox id, kind, new UIDNEXT or HIGHESTMODSEQ): a hint to re-read, never the data, so it
stays far below PostgreSQL's 8000-byte limit however many messages changed.

One channel per user: an imapd process listens on the channels of the users it has sessions
for, on one dedicated connection (:class:`ChangeListener`), and fans each notification out to
those sessions.  A notification missed while that connection was down cannot be replayed,
so after a reconnect every subscriber receives a ``resync`` change and re-reads its state.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import asyncpg

from metadata.db import translate_errors

__all__ = ["CHANNEL_PREFIX", "Change", "ChangeListener", "channel", "decode", "encode", "publish"]

log = logging.getLogger(__name__)

CHANNEL_PREFIX = "objmail_user_"

Kind = Literal["append", "flags", "expunge", "mailbox", "subscription", "user", "resync"]
_KINDS = frozenset({"append", "flags", "expunge", "mailbox", "subscription", "user", "resync"})


@dataclass(frozen=True)
class Change:
    """Something changed for ``user_id``.

    ``kind``: ``append`` (new messages, ``uidnext`` is the new UIDNEXT), ``flags`` (flags
    changed, up to ``modseq``), ``expunge`` (messages removed at ``modseq``), ``mailbox``
    (mailboxes created, renamed or deleted; ``mailbox_id`` may be None), ``subscription``
    (the user's subscriptions changed; IMAP NOTIFY's SubscriptionChange), ``user`` (the user
    was deleted), ``resync`` (notifications may have been lost: re-read everything).
    """

    user_id: int
    kind: Kind
    mailbox_id: int | None = None
    uidnext: int | None = None
    modseq: int | None = None


def channel(user_id: int) -> str:
    """The NOTIFY channel of a user."""
    return f"{CHANNEL_PREFIX}{user_id}"


def encode(change: Change) -> str:
    """The payload: compact JSON without the user (the channel names it)."""
    data: dict[str, Any] = {"k": change.kind}
    if change.mailbox_id is not None:
        data["m"] = change.mailbox_id
    if change.uidnext is not None:
        data["u"] = change.uidnext
    if change.modseq is not None:
        data["s"] = change.modseq
    return json.dumps(data, separators=(",", ":"))


def _int_or_none(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ValueError(f"not an integer: {value!r}")


def decode(channel_name: str, payload: str) -> Change | None:
    """The change a notification carries, or None when channel or payload is not ours."""
    if not channel_name.startswith(CHANNEL_PREFIX):
        return None
    try:
        user_id = int(channel_name[len(CHANNEL_PREFIX):])
        data = json.loads(payload)
        kind = data["k"]
        if kind not in _KINDS:
            return None
        return Change(user_id, kind, _int_or_none(data.get("m")), _int_or_none(data.get("u")),
                      _int_or_none(data.get("s")))
    except (ValueError, KeyError, TypeError):
        return None


async def publish(conn: asyncpg.Connection, change: Change) -> None:
    """Queue ``change``; it is delivered when the current transaction commits (at once
    outside a transaction)."""
    await conn.execute("SELECT pg_notify($1, $2)", channel(change.user_id), encode(change))


Callback = Callable[[Change], None]


class ChangeListener:
    """One LISTEN connection shared by every session of a process.

    Create and :meth:`start` it on the running loop.  Callbacks run on the loop and must
    not block; a session typically sets a flag or schedules its own refresh.

    :param password: PostgreSQL password of the DSN's user (kept for reconnections).
    """

    def __init__(self, dsn: str, *, reconnect_delay: float = 1.0, keepalive: float = 30.0,
                 password: str | None = None) -> None:
        self.dsn = dsn
        self._password = password
        self.reconnect_delay = reconnect_delay
        self.keepalive = keepalive
        self._subscribers: dict[int, list[Callback]] = {}
        self._conn: asyncpg.Connection | None = None
        self._lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        # One operation at a time on the connection (asyncpg refuses overlapping ones).
        self._lock = asyncio.Lock()
        #: Times the connection was re-established after a loss (for tests and metrics).
        self.reconnects = 0

    async def start(self) -> None:
        """Connect and start watching the connection.

        :raises Unavailable: PostgreSQL cannot be reached now.
        """
        await self._connect()
        self._task = asyncio.get_running_loop().create_task(self._watch())

    async def close(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()
            self._conn = None

    async def subscribe(self, user_id: int, callback: Callback) -> None:
        """Call ``callback`` for every change of ``user_id`` from now on.

        Subscribe *before* reading the state the changes apply to, so none falls between.
        """
        callbacks = self._subscribers.setdefault(user_id, [])
        callbacks.append(callback)
        if len(callbacks) == 1 and self._conn is not None and not self._conn.is_closed():
            try:
                with translate_errors():
                    async with self._lock:
                        await self._conn.add_listener(channel(user_id), self._on_notify)
            except Exception:
                # The watcher re-LISTENs every channel after reconnecting.
                self._lost.set()

    async def unsubscribe(self, user_id: int, callback: Callback) -> None:
        callbacks = self._subscribers.get(user_id, [])
        if callback in callbacks:
            callbacks.remove(callback)
        if not callbacks and user_id in self._subscribers:
            del self._subscribers[user_id]
            if self._conn is not None and not self._conn.is_closed():
                with contextlib.suppress(Exception):
                    async with self._lock:
                        await self._conn.remove_listener(channel(user_id), self._on_notify)

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    def _on_notify(self, _conn: object, _pid: int, channel_name: str, payload: str) -> None:
        change = decode(channel_name, payload)
        if change is None:
            log.warning("ignoring notification on %s: %r", channel_name, payload[:200])
            return
        self._dispatch(change)

    def _dispatch(self, change: Change) -> None:
        for callback in list(self._subscribers.get(change.user_id, ())):
            try:
                callback(change)
            except Exception:
                log.exception("change callback failed for user %s", change.user_id)

    def _on_terminated(self, _conn: object) -> None:
        self._lost.set()

    async def _connect(self) -> None:
        with translate_errors():
            conn = await asyncpg.connect(self.dsn, password=self._password)
        try:
            conn.add_termination_listener(self._on_terminated)
            with translate_errors():
                for user_id in list(self._subscribers):
                    await conn.add_listener(channel(user_id), self._on_notify)
        except BaseException:
            conn.terminate()
            raise
        self._lost.clear()
        self._conn = conn

    async def _watch(self) -> None:
        while not self._closing:
            try:
                await asyncio.wait_for(self._lost.wait(), self.keepalive)
            except TimeoutError:
                # A silent network partition never fires the termination listener.
                conn = self._conn
                try:
                    if conn is not None and not conn.is_closed():
                        async with self._lock:
                            await asyncio.wait_for(conn.execute("SELECT 1"), self.keepalive)
                        continue
                except Exception:
                    log.warning("change listener connection failed its keepalive")
            await self._reconnect()

    async def _reconnect(self) -> None:
        if self._conn is not None:
            self._conn.terminate()
            self._conn = None
        while not self._closing:
            await asyncio.sleep(self.reconnect_delay)
            try:
                await self._connect()
            except Exception as exc:
                log.warning("change listener cannot reconnect: %s", exc)
                continue
            self.reconnects += 1
            for user_id in list(self._subscribers):
                self._dispatch(Change(user_id, "resync"))
            return

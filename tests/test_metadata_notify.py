"""Change notification: payload format (pure) and LISTEN/NOTIFY between real connections."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator

import asyncpg
import pytest

from metadata.errors import OverQuota
from metadata.flags import SEEN, Flags
from metadata.messages import NewMessage
from metadata.notify import Change, ChangeListener, channel, decode, encode, publish
from metadata.store import MetadataStore
from metadata.uidset import UidSet
from tests.metadata_support import FAST_SCRYPT, fresh_database, sample_row
from tests.waiting import eventually

NOW = dt.datetime(2024, 7, 1, tzinfo=dt.UTC)


@pytest.mark.parametrize("change", [
    Change(7, "append", 3, uidnext=12, modseq=40),
    Change(7, "flags", 3, modseq=41),
    Change(7, "mailbox"),
    Change(123456789, "user"),
])
def test_payload_round_trips_and_stays_small(change: Change) -> None:
    """A change survives encode/decode through its user's channel in a few bytes."""
    payload = encode(change)
    assert len(payload) < 80
    assert decode(channel(change.user_id), payload) == change


@pytest.mark.parametrize(("chan", "payload"), [
    ("other_channel", '{"k":"append"}'),
    ("objmail_user_x", '{"k":"append"}'),
    ("objmail_user_1", "not json"),
    ("objmail_user_1", '{"k":"explode"}'),
    ("objmail_user_1", '{"m":1}'),
    ("objmail_user_1", '{"k":"append","u":"12"}'),
    ("objmail_user_1", '["k"]'),
])
def test_foreign_payloads_are_ignored(chan: str, payload: str) -> None:
    """Notifications that are not ours, or malformed, decode to None instead of raising."""
    assert decode(chan, payload) is None


@pytest.fixture(scope="module")
def dsn(postgres: str) -> Iterator[str]:
    with fresh_database(postgres) as target:
        yield target


async def wait_for(events: list[Change], count: int, timeout: float = 10.0) -> None:
    await eventually(lambda: len(events) >= count, timeout, what=f"{count} notification(s)")


#: A user id no test creates, for :func:`barrier`'s marker.
MARKER_USER = 999_999_999


async def barrier(listener: ChangeListener, dsn: str) -> None:
    """Return once every notification committed before the call has reached ``listener``
    (PostgreSQL delivers them in commit order: a marker committed now comes after all)."""
    marker: list[Change] = []
    await listener.subscribe(MARKER_USER, marker.append)
    conn = await asyncpg.connect(dsn)
    try:
        await publish(conn, Change(MARKER_USER, "mailbox"))
    finally:
        await conn.close()
    await wait_for(marker, 1)
    await listener.unsubscribe(MARKER_USER, marker.append)


def test_changes_reach_another_connection_after_commit(dsn: str) -> None:
    """A listener on its own connection hears a delivery, a STORE and an EXPUNGE of the
    user it subscribed to, in order, and nothing of other users."""

    async def run() -> None:
        store = await MetadataStore.open(dsn, pool_min=1, pool_max=2,
                                         password_params=FAST_SCRYPT)
        listener = ChangeListener(dsn)
        await listener.start()
        try:
            user = await store.users.create("listened", "pw")
            other = await store.users.create("unlistened", "pw")
            inbox = (await store.mailboxes.get(user.id, "INBOX")).id
            events: list[Change] = []
            await listener.subscribe(user.id, events.append)
            other_inbox = (await store.mailboxes.get(other.id, "INBOX")).id
            await store.messages.insert(other.id, other_inbox, sample_row("o"), [],
                                        internaldate=NOW)
            appended = await store.messages.insert(user.id, inbox, sample_row("l"), [],
                                                   internaldate=NOW)
            stored = await store.messages.store_flags(user.id, inbox, UidSet.all(), "add",
                                                      Flags(SEEN))
            await wait_for(events, 2)
            assert events == [
                Change(user.id, "append", inbox, uidnext=appended.uid + 1,
                       modseq=appended.modseq),
                Change(user.id, "flags", inbox, modseq=stored.modseq),
            ]
            await listener.unsubscribe(user.id, events.append)
            await store.messages.insert(user.id, inbox, sample_row("l2"), [], internaldate=NOW)
            await barrier(listener, dsn)
            assert len(events) == 2
        finally:
            await listener.close()
            await store.close()

    asyncio.run(run())


def test_uncommitted_change_is_not_heard(dsn: str) -> None:
    """A notification queued in an open transaction arrives only at commit, and never when
    the transaction rolls back."""

    async def run() -> None:
        listener = ChangeListener(dsn)
        await listener.start()
        events: list[Change] = []
        await listener.subscribe(99, events.append)
        conn = await asyncpg.connect(dsn)
        try:
            tx = conn.transaction()
            await tx.start()
            await publish(conn, Change(99, "mailbox", 1))
            await barrier(listener, dsn)
            assert events == []
            await tx.rollback()
            await barrier(listener, dsn)
            assert events == []
            async with conn.transaction():
                await publish(conn, Change(99, "mailbox", 2))
            await wait_for(events, 1)
            assert events == [Change(99, "mailbox", 2)]
        finally:
            await conn.close()
            await listener.close()

    asyncio.run(run())


def test_listener_reconnects_and_asks_for_resync(dsn: str) -> None:
    """When its connection is killed, the listener reconnects, tells every subscriber to
    resync (notifications may have been missed), and hears new changes again."""

    async def run() -> None:
        listener = ChangeListener(dsn, reconnect_delay=0.1, keepalive=5.0)
        await listener.start()
        events: list[Change] = []
        await listener.subscribe(42, events.append)
        admin = await asyncpg.connect(dsn)
        try:
            killed = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE pid <> pg_backend_pid() AND datname = current_database() "
                "AND query LIKE 'LISTEN%'")
            assert killed == 1
            await wait_for(events, 1)
            assert events == [Change(42, "resync")]
            assert listener.reconnects == 1 and listener.connected
            await publish(admin, Change(42, "append", 5, uidnext=9))
            await wait_for(events, 2)
            assert events[1] == Change(42, "append", 5, uidnext=9)
        finally:
            await admin.close()
            await listener.close()

    asyncio.run(run())


def test_an_insert_notifies_with_encode_payload_and_not_when_refused(dsn: str) -> None:
    """The append notification the insert statement builds in SQL is byte for byte what
    :func:`encode` makes of the change; an insert the quota refuses notifies nothing."""

    async def run() -> None:
        store = await MetadataStore.open(dsn, pool_min=1, pool_max=2,
                                         password_params=FAST_SCRYPT)
        raw: list[str] = []
        conn = await asyncpg.connect(dsn)
        try:
            user = await store.users.create("payload", "pw", quota_messages=3)
            inbox = (await store.mailboxes.get(user.id, "INBOX")).id
            await conn.add_listener(channel(user.id), lambda *a: raw.append(a[3]))
            done = await store.messages.insert_many(user.id, inbox, [
                NewMessage(sample_row(f"p{n}"), (), NOW) for n in range(2)])
            await eventually(lambda: len(raw) >= 1, 10.0, what="the notification")
            assert raw == [encode(Change(user.id, "append", inbox, uidnext=done[1].uid + 1,
                                         modseq=done[0].modseq))]
            with pytest.raises(OverQuota):
                await store.messages.insert_many(user.id, inbox, [
                    NewMessage(sample_row(f"q{n}"), (), NOW) for n in range(2)])
            await publish(conn, Change(user.id, "mailbox"))  # after anything it sent
            await eventually(lambda: len(raw) >= 2, 10.0, what="the marker")
            assert raw[1:] == [encode(Change(user.id, "mailbox"))]
        finally:
            await conn.close()
            await store.close()

    asyncio.run(run())

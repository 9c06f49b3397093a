"""NOTIFY (RFC 5465) between two sessions over a real PostgreSQL and its change feed:
session A sets NOTIFY and sends nothing more, session B (or a delivery) changes things, and
A is told at once -- STATUS for other mailboxes, EXISTS/FETCH/EXPUNGE for the selected one,
LIST for names and subscriptions -- without a command, while idle or between commands."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from imapd.notifier import Notifier
from imapd.notify import EventGroup, NotifySpec
from imapd.selected import Extensions
from metadata.notify import Change
from tests.imapd_support import Client, Env, environment
from tests.metadata_support import fresh_database
from tests.waiting import eventually


@pytest.fixture(scope="module")
def dsn(postgres: str) -> Iterator[str]:
    with fresh_database(postgres) as target:
        yield target


def run(dsn: str, body: Callable[[Env], Awaitable[None]]) -> None:
    async def main() -> None:
        async with environment(dsn) as env:
            await body(env)

    asyncio.run(main())


_counter = iter(range(1_000_000))


def fresh(name: str) -> str:
    return f"{name}{next(_counter)}"


MESSAGE = b"From: a@example.org\r\nSubject: hello\r\n\r\nhello\r\n"

EVERYTHING = ("NOTIFY SET STATUS (SELECTED (MessageNew (UID FLAGS) MessageExpunge FlagChange))"
              " (PERSONAL (MessageNew MessageExpunge FlagChange MailboxName "
              "SubscriptionChange))")


async def told(client: Client, mark: int, wanted: bytes | re.Pattern[bytes]) -> bytes:
    """Wait until ``client`` was sent ``wanted`` since ``mark`` without sending anything."""
    def seen() -> bool:
        out = client.since(mark)
        return bool(wanted.search(out)) if isinstance(wanted, re.Pattern) else wanted in out
    await eventually(seen, what=f"{wanted!r} unsolicited")
    return client.since(mark)


def test_notify_tells_a_session_of_anothers_changes_without_a_command(dsn: str) -> None:
    """With NOTIFY SET STATUS (SELECTED ...) (PERSONAL ...), A gets STATUS of the other
    mailboxes at once, then without sending anything: STATUS when B appends elsewhere,
    EXISTS and the requested FETCH for a delivery to its selected mailbox, FETCH FLAGS for
    B's STORE, EXPUNGE for B's EXPUNGE, and LIST for CREATE, RENAME, DELETE, SUBSCRIBE and
    UNSUBSCRIBE."""

    async def body(env: Env) -> None:
        name = fresh("nt")
        await env.user(name)
        a, b = env.client(), env.client()
        for client in (a, b):
            await client.login(name)
        await b.send("c CREATE Lists")
        await a.send("s SELECT INBOX")
        reply = await a.send(f"n {EVERYTHING}")
        # STATUS of every mailbox but the selected one (the user's default ones too).
        assert re.search(rb'^\* STATUS "Lists" \(MESSAGES 0 UIDNEXT 1 UIDVALIDITY \d+ '
                         rb'UNSEEN 0\)\r$', reply, re.M), reply
        assert b'STATUS "INBOX"' not in reply
        assert reply.endswith(b"\r\nn OK NOTIFY completed\r\n")

        mark = len(a.conn.sent)
        await b.send(f"p APPEND Lists {{{len(MESSAGE)}+}}\r\n".encode() + MESSAGE + b"\r\n")
        await told(a, mark, re.compile(
            rb'\* STATUS "Lists" \(MESSAGES 1 UIDNEXT 2 UIDVALIDITY \d+ UNSEEN 1\)\r\n'))

        mark = len(a.conn.sent)
        await env.deliver(name, MESSAGE)
        out = await told(a, mark, b"* 1 FETCH (UID 1 FLAGS (\\Recent))\r\n")
        assert out == b"* 1 EXISTS\r\n* 1 RECENT\r\n* 1 FETCH (UID 1 FLAGS (\\Recent))\r\n"

        await b.send("s SELECT INBOX")
        mark = len(a.conn.sent)
        await b.send("f STORE 1 +FLAGS (\\Flagged \\Deleted)")
        await told(a, mark, b"* 1 FETCH (UID 1 FLAGS (\\Flagged \\Deleted \\Recent))\r\n")
        mark = len(a.conn.sent)
        await b.send("x EXPUNGE")
        assert await told(a, mark, b"* 1 EXPUNGE\r\n") == b"* 1 EXPUNGE\r\n"

        mark = len(a.conn.sent)
        await b.send("c CREATE Projects")
        await told(a, mark, b'* LIST () "/" "Projects"\r\n')
        mark = len(a.conn.sent)
        await b.send("r RENAME Projects Done")
        await told(a, mark, b'* LIST () "/" "Done" ("OLDNAME" ("Projects"))\r\n')
        mark = len(a.conn.sent)
        await b.send("d DELETE Done")
        await told(a, mark, b'* LIST (\\NonExistent) "/" "Done"\r\n')
        mark = len(a.conn.sent)
        await b.send("u SUBSCRIBE Lists")
        await told(a, mark, b'* LIST (\\Subscribed) "/" "Lists"\r\n')
        mark = len(a.conn.sent)
        await b.send("v UNSUBSCRIBE Lists")
        await told(a, mark, b'* LIST () "/" "Lists"\r\n')

        # Nothing was a reply to a command of A's: it sent none since NOTIFY.
        assert b" OK " not in a.since(mark)
        assert (await a.send("z NOOP")) == b"z OK NOOP completed\r\n"
        for client in (a, b):
            await client.close()

    run(dsn, body)


def test_notify_reaches_an_idling_session_and_none_turns_it_off(dsn: str) -> None:
    """During IDLE, NOTIFY's STATUS for another mailbox arrives as it happens; after
    NOTIFY NONE the same change tells A nothing and schedules nothing."""

    async def body(env: Env) -> None:
        name = fresh("ni")
        await env.user(name)
        a, b = env.client(), env.client()
        for client in (a, b):
            await client.login(name)
        await b.send("c CREATE Lists")
        assert (await a.send("n NOTIFY SET (PERSONAL (MessageNew MessageExpunge))")
                ) == b"n OK NOTIFY completed\r\n"
        assert await a.send("i IDLE") == b"+ idling\r\n"
        mark = len(a.conn.sent)
        await b.send(f"p APPEND Lists {{{len(MESSAGE)}+}}\r\n".encode() + MESSAGE + b"\r\n")
        await told(a, mark, b'* STATUS "Lists" (MESSAGES 1 UIDNEXT 2 UIDVALIDITY ')
        assert await a.send("DONE") == b"i OK IDLE terminated\r\n"

        assert await a.send("o NOTIFY NONE") == b"o OK NOTIFY completed\r\n"
        heard = await env.hear(name)
        mark = len(a.conn.sent)
        await b.send(f"q APPEND Lists {{{len(MESSAGE)}+}}\r\n".encode() + MESSAGE + b"\r\n")
        await heard.of("append")  # A heard it first (subscribed earlier)
        assert a.session.notifier is None and a.since(mark) == b""
        assert a.session._push_task is None or a.session._push_task.done()
        for client in (a, b):
            await client.close()

    run(dsn, body)


def test_selected_delayed_keeps_expunges_for_a_command(dsn: str) -> None:
    """With SELECTED-DELAYED, B's flag change reaches A at once but its EXPUNGE waits for
    A's next command that allows it (NOOP)."""

    async def body(env: Env) -> None:
        name = fresh("nd")
        await env.user(name)
        await env.deliver(name, MESSAGE)
        await env.deliver(name, MESSAGE)
        a, b = env.client(), env.client()
        for client in (a, b):
            await client.login(name)
            await client.send("s SELECT INBOX")
        await a.send("n NOTIFY SET (SELECTED-DELAYED (MessageNew MessageExpunge FlagChange))")
        mark = len(a.conn.sent)
        await b.send("f STORE 1 +FLAGS (\\Deleted)")
        await told(a, mark, b"* 1 FETCH (UID 1 FLAGS (\\Deleted \\Recent))\r\n")
        heard = await env.hear(name)
        mark = len(a.conn.sent)
        await b.send("x EXPUNGE")
        await heard.of("expunge")
        if a.session._push_task is not None:
            await a.session._push_task
        assert a.since(mark) == b""
        assert await a.send("o NOOP") == b"* 1 EXPUNGE\r\no OK NOOP completed\r\n"
        for client in (a, b):
            await client.close()

    run(dsn, body)


def test_unsupported_events_and_overflow(dsn: str) -> None:
    """A NOTIFY naming AnnotationChange is NO [BADEVENT (supported events)] and leaves the
    one in force; a gap in the change feed (resync) ends NOTIFY with one
    NOTIFICATIONOVERFLOW."""

    async def body(env: Env) -> None:
        name = fresh("no")
        user = await env.user(name)
        a = env.client()
        await a.login(name)
        await a.send("n NOTIFY SET (PERSONAL (MailboxName))")
        reply = await a.send("b NOTIFY SET (INBOXES (MessageNew MessageExpunge "
                             "AnnotationChange))")
        assert reply == (b"b NO [BADEVENT (MessageNew MessageExpunge FlagChange MailboxName "
                         b"SubscriptionChange)] Unsupported NOTIFY events\r\n")
        assert a.session.notifier is not None
        mark = len(a.conn.sent)
        a.session._on_change(Change(user.id, "resync"))  # what the listener says after a gap
        out = await told(a, mark, b"* OK [NOTIFICATIONOVERFLOW] ")
        assert out.count(b"NOTIFICATIONOVERFLOW") == 1
        assert a.session.notifier is None
        await a.close()

    run(dsn, body)


def test_the_notifier_bounds_what_waits_and_folds_repeats(dsn: str) -> None:
    """Changes to more mailboxes than max_pending overflow (nothing is read to decide);
    many changes to one mailbox become one STATUS, and a STATUS that would repeat the last
    one is not sent."""

    async def body(env: Env) -> None:
        name = fresh("nb")
        user = await env.user(name)
        boxes = [await env.store.mailboxes.create(user.id, f"B{n}") for n in range(3)]
        spec = NotifySpec((EventGroup("PERSONAL", (), ("MessageNew", "MessageExpunge",
                                                       "FlagChange")),))
        notifier = Notifier(env.store, user.id, spec, Extensions())
        assert await notifier.start(None, status=False) == []
        for _ in range(5):
            await env.deliver(name, MESSAGE, mailbox="B0")
            assert notifier.heard(Change(user.id, "append", boxes[0].id), None)
        out = await notifier.flush(None)
        assert len(out) == 1 and out[0].items[0] == ("MESSAGES", 5)  # type: ignore[union-attr]
        assert notifier.heard(Change(user.id, "flags", boxes[0].id, modseq=1), None)
        assert await notifier.flush(None) == []  # nothing STATUS shows moved

        small = Notifier(env.store, user.id, spec, Extensions(), max_pending=2)
        await small.start(None, status=False)
        for box in boxes:
            small.heard(Change(user.id, "append", box.id), None)
        assert small.overflowed
        out = await small.flush(None)
        assert len(out) == 1 and b"NOTIFICATIONOVERFLOW" in repr(out).encode()
        assert await small.flush(None) == []
        assert not small.heard(Change(user.id, "append", boxes[0].id), None)

    run(dsn, body)


def test_a_change_heard_during_a_push_gets_a_push_of_its_own(dsn: str) -> None:
    """A change that arrives while a push is reading the state (after it looked) is not
    left waiting for the next change: the push goes round once more."""

    async def body(env: Env) -> None:
        name = fresh("nr")
        await env.user(name)
        a, b = env.client(), env.client()
        for client in (a, b):
            await client.login(name)
        await b.send("c CREATE Lists")
        await a.send("n NOTIFY SET (PERSONAL (MessageNew MessageExpunge))")
        notifier = a.session.notifier
        assert notifier is not None
        original = notifier.flush
        entered, gate = asyncio.Event(), asyncio.Event()

        async def held_flush(selected_id: int | None) -> list[Any]:
            out = await original(selected_id)
            if not entered.is_set():  # the first push read its state: hold it there
                entered.set()
                await gate.wait()
            return out

        notifier.flush = held_flush  # type: ignore[method-assign]
        heard = await env.hear(name)
        mark = len(a.conn.sent)
        await b.send(f"p APPEND Lists {{{len(MESSAGE)}+}}\r\n".encode() + MESSAGE + b"\r\n")
        await asyncio.wait_for(entered.wait(), 10)
        await heard.of("append")
        await b.send(f"q APPEND Lists {{{len(MESSAGE)}+}}\r\n".encode() + MESSAGE + b"\r\n")
        await heard.of("append")  # A heard the second one while its push was held
        gate.set()
        await told(a, mark, b'* STATUS "Lists" (MESSAGES 2 UIDNEXT 3 ')
        for client in (a, b):
            await client.close()

    run(dsn, body)


def test_each_session_hears_names_in_its_own_encoding(dsn: str) -> None:
    """A mailbox a rev1 session creates as ``Entw&APw-rfe`` reaches a rev2 session's
    NOTIFY as UTF-8 ``Entwürfe``, and a rev1 watcher's as modified UTF-7."""

    async def body(env: Env) -> None:
        name = fresh("nu")
        await env.user(name)
        new, old, actor = env.client(), env.client(), env.client()
        for client in (new, old, actor):
            await client.login(name)
        new.session.ext.rev2 = True  # as ENABLE IMAP4rev2 does once it is announced
        new.conn.use_utf8_names()
        for client in (new, old):
            await client.send("n NOTIFY SET (PERSONAL (MailboxName))")
        marks = len(new.conn.sent), len(old.conn.sent)
        await actor.send('c CREATE "Entw&APw-rfe"')
        await told(new, marks[0], '* LIST () "/" "Entwürfe"\r\n'.encode())
        await told(old, marks[1], b'* LIST () "/" "Entw&APw-rfe"\r\n')
        for client in (new, old, actor):
            await client.close()

    run(dsn, body)

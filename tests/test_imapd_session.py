"""The IMAP session over a real PostgreSQL: states, authentication, mailboxes, APPEND,
IDLE, other sessions' changes, and errors (see tests/imapd_support.py for the harness)."""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import Awaitable, Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest

from tests.imapd_support import (
    ATTACHMENT,
    NESTED,
    Env,
    TcpProxy,
    corpus,
    environment,
)
from tests.metadata_support import fresh_database
from tests.waiting import eventually


@pytest.fixture(scope="module")
def dsn(postgres: str) -> Iterator[str]:
    with fresh_database(postgres) as target:
        yield target


def run(dsn: str, body: Callable[[Env], Awaitable[None]], **imapd: Any) -> None:
    async def main() -> None:
        async with environment(dsn, **imapd) as env:
            await body(env)

    asyncio.run(main())


_counter = iter(range(1_000_000))


def fresh(name: str) -> str:
    """A user name no other test of the module uses (one database per module)."""
    return f"{name}{next(_counter)}"


def test_greeting_and_capabilities_follow_the_connection(dsn: str) -> None:
    """Cleartext without plaintext auth announces STARTTLS and LOGINDISABLED and refuses
    LOGIN with PRIVACYREQUIRED; after STARTTLS the session offers AUTH=PLAIN."""

    async def body(env: Env) -> None:
        client = env.client(allow_plaintext_auth=False)
        greeting = client.wire([client.session.greeting()])
        assert greeting.startswith(b"* OK [CAPABILITY IMAP4rev1 ")
        assert b"LOGINDISABLED" in greeting and b"STARTTLS" in greeting
        assert b"AUTH=PLAIN" not in greeting
        reply = await client.send("a LOGIN alice secret")
        assert reply == b"a NO [PRIVACYREQUIRED] Log in over TLS (STARTTLS) only\r\n"
        reply = await client.send("b STARTTLS")
        assert reply == b"b OK Begin TLS negotiation now\r\n"
        assert client.conn.tls_started
        caps = await client.send("c CAPABILITY")
        assert b"AUTH=PLAIN" in caps and b"LOGINDISABLED" not in caps
        assert b"STARTTLS" not in caps
        assert (await client.send("d STARTTLS")).startswith(b"d BAD")

    run(dsn, body)


def append_line(tag: str, mailbox: str, raw: bytes, extra: str = "") -> bytes:
    """An APPEND with a non-synchronizing literal (LITERAL+)."""
    return f"{tag} APPEND {mailbox} {extra}{{{len(raw)}+}}\r\n".encode() + raw + b"\r\n"


def test_login_success_carries_capabilities_and_failure_waits_on_the_clock(
        dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    """LOGIN answers OK [CAPABILITY ...] with the post-login list; a wrong password is
    answered NO [AUTHENTICATIONFAILED] only after login_delay on the injected clock, and
    logged with the user name and the peer."""

    async def body(env: Env) -> None:
        name = fresh("alice")
        await env.user(name)
        client = env.client(login_delay=2.0)
        reply = await client.send(f"a LOGIN {name} secret")
        assert reply.startswith(b"a OK [CAPABILITY IMAP4rev1 ")
        assert b" UIDPLUS " in reply and b" MOVE " in reply and b"CONDSTORE" in reply
        other = env.client(login_delay=2.0)
        pending = asyncio.ensure_future(other.send(f"b LOGIN {name} wrong"))
        await eventually(lambda: env.clock.getDelayedCalls() != [])
        assert not pending.done()
        env.clock.advance(1.9)
        await asyncio.sleep(0.05)
        assert not pending.done()
        env.clock.advance(0.2)
        assert await pending == b"b NO [AUTHENTICATIONFAILED] Authentication failed\r\n"
        assert (await other.send("c SELECT INBOX")).startswith(b"c BAD")
        assert f"failed login for '{name}' from 127.0.0.1:1" in caplog.text
        assert other.session.backend.metrics.logins["imap", "failed"] == 1

    run(dsn, body)


def test_repeated_failed_logins_end_the_connection(dsn: str) -> None:
    """The fifth failed login is answered and followed by BYE, and the connection closes."""

    async def body(env: Env) -> None:
        client = env.client()
        for attempt in range(4):
            reply = await client.send(f"t{attempt} LOGIN nobody{attempt} guess")
            assert reply.endswith(b"NO [AUTHENTICATIONFAILED] Authentication failed\r\n")
            assert not client.conn.closed
        reply = await client.send("t5 LOGIN nobody guess")
        assert reply.endswith(b"* BYE Too many failed logins\r\n")
        assert client.conn.closed

    run(dsn, body)


def test_authenticate_plain_with_initial_response_and_with_a_challenge(dsn: str) -> None:
    """AUTHENTICATE PLAIN works with SASL-IR and after an empty challenge; '*' cancels with
    BAD; an authorisation identity naming someone else is NO [AUTHORIZATIONFAILED]."""

    async def body(env: Env) -> None:
        name = fresh("carol")
        await env.user(name, "pässword")
        token = base64.b64encode(f"\0{name}\0pässword".encode()).decode()
        client = env.client()
        assert (await client.send(f"a AUTHENTICATE PLAIN {token}")).startswith(b"a OK [CAP")

        client = env.client()
        assert await client.send("b AUTHENTICATE PLAIN") == b"+ \r\n"
        assert (await client.send(token)).startswith(b"b OK [CAPABILITY")

        client = env.client()
        assert await client.send("c AUTHENTICATE PLAIN") == b"+ \r\n"
        assert await client.send("*") == b"c BAD Authentication cancelled\r\n"
        other = base64.b64encode(f"root\0{name}\0pässword".encode()).decode()
        assert await client.send(f"d AUTHENTICATE PLAIN {other}") == (
            b"d NO [AUTHORIZATIONFAILED] Acting as another user is not allowed\r\n")
        assert (await client.send("e AUTHENTICATE CRAM-MD5")).startswith(b"e NO ")
        garbage = base64.b64encode(b"no separators").decode()
        assert (await client.send(f"f AUTHENTICATE PLAIN {garbage}")).startswith(b"f BAD")

    run(dsn, body)


def test_commands_outside_their_state_are_bad(dsn: str) -> None:
    """FETCH before login, FETCH without a selected mailbox and LOGIN twice are BAD, and
    the session goes on."""

    async def body(env: Env) -> None:
        name = fresh("dave")
        await env.user(name)
        client = env.client()
        assert (await client.send("a FETCH 1 FLAGS")).startswith(b"a BAD ")
        await client.login(name)
        assert await client.send("b FETCH 1 FLAGS") == (
            b"b BAD FETCH needs a selected mailbox\r\n")
        assert (await client.send(f"c LOGIN {name} secret")).startswith(b"c BAD ")
        assert await client.send("d NOOP") == b"d OK NOOP completed\r\n"

    run(dsn, body)


def test_extensions_are_announced_after_login(dsn: str) -> None:
    """ESEARCH, SEARCHRES and BINARY are in CAPABILITY after login only; a literal8
    APPEND is stored with its octets unchanged (BINARY itself: test_imapd_binary.py)."""

    async def body(env: Env) -> None:
        name = fresh("bea")
        await env.user(name)
        client = env.client()
        before = set((await client.send("a CAPABILITY")).split(b"\r\n")[0].split())
        await client.login(name)
        after = set((await client.send("b CAPABILITY")).split(b"\r\n")[0].split())
        assert not {b"ESEARCH", b"SEARCHRES", b"BINARY"} & before
        assert {b"ESEARCH", b"SEARCHRES", b"BINARY"} <= after
        raw = b"Subject: b\r\n\r\nbody\r\n"
        reply = await client.send(b"c APPEND INBOX ~{%d+}\r\n%s\r\n" % (len(raw), raw))
        assert reply.startswith(b"c OK [APPENDUID ")
        await client.send("d SELECT INBOX")
        assert await client.send("j FETCH 1 (BODY.PEEK[])") == (
            b"* 1 FETCH (BODY[] {%d}\r\n%s)\r\nj OK FETCH completed\r\n" % (len(raw), raw))

    run(dsn, body)


def test_a_user_never_sees_another_users_mailboxes(dsn: str) -> None:
    """Mailboxes are per user: bob cannot list, select, examine, status, append to, copy
    into or delete alice's mailbox, even knowing its name."""

    async def body(env: Env) -> None:
        alice, bob = fresh("alice"), fresh("bob")
        await env.user(alice)
        await env.user(bob)
        a = env.client()
        await a.login(alice)
        assert (await a.send("a CREATE Private/Letters")).startswith(b"a OK")
        b = env.client()
        await b.login(bob)
        listing = await b.send('b LIST "" "*"')
        assert b"Private" not in listing
        for line, want in (("c SELECT Private/Letters", b"c NO [NONEXISTENT]"),
                           ("d EXAMINE Private/Letters", b"d NO [NONEXISTENT]"),
                           ("e STATUS Private/Letters (MESSAGES)", b"e NO [NONEXISTENT]"),
                           ("f DELETE Private/Letters", b"f NO [NONEXISTENT]")):
            assert (await b.send(line)).startswith(want)
        raw = b"Subject: x\r\n\r\nhi\r\n"
        assert (await b.send(append_line("g", "Private/Letters", raw))).startswith(
            b"g NO [TRYCREATE]")

    run(dsn, body)


def test_mailbox_hierarchy_commands(dsn: str) -> None:
    """CREATE makes parents, LIST shows children attributes and special uses, RENAME moves
    a subtree, DELETE of a parent leaves it \\Noselect, LSUB follows SUBSCRIBE."""

    async def body(env: Env) -> None:
        name = fresh("erin")
        await env.user(name)
        c = env.client()
        await c.login(name)
        assert (await c.send("a CREATE Work/2024/Q1")).startswith(b"a OK")
        assert (await c.send("a2 CREATE Work")).startswith(b"a2 NO [ALREADYEXISTS]")
        assert (await c.send("a3 CREATE INBOX")).startswith(b"a3 NO [ALREADYEXISTS]")
        listing = await c.send('b LIST "" "Work*"')
        assert listing == (b'* LIST (\\HasChildren) "/" "Work"\r\n'
                           b'* LIST (\\HasChildren) "/" "Work/2024"\r\n'
                           b'* LIST (\\HasNoChildren) "/" "Work/2024/Q1"\r\n'
                           b"b OK List completed\r\n")
        assert await c.send('c LIST "Work/" "%"') == (
            b'* LIST (\\HasChildren) "/" "Work/2024"\r\nc OK List completed\r\n')
        assert await c.send('d LIST "" ""') == (
            b'* LIST (\\Noselect) "/" ""\r\nd OK List completed\r\n')
        specials = await c.send('e LIST "" "*" RETURN (SPECIAL-USE)')
        assert b'* LIST (\\HasNoChildren \\Sent) "/" "Sent"' in specials
        assert (await c.send("f RENAME Work/2024 Archive2024")).startswith(b"f OK")
        listing = await c.send('g LIST "" "*2024*"')
        assert b'"Archive2024/Q1"' in listing and b'"Work/2024' not in listing
        assert (await c.send("h SUBSCRIBE Archive2024/Q1")).startswith(b"h OK")
        assert await c.send('i LSUB "" "Archive2024/*"') == (
            b'* LSUB (\\HasNoChildren) "/" "Archive2024/Q1"\r\ni OK Lsub completed\r\n')
        assert (await c.send("j DELETE Archive2024")).startswith(b"j OK")
        assert b'(\\HasChildren \\Noselect) "/" "Archive2024"' in await c.send(
            'k LIST "" "Archive2024"')
        assert (await c.send("l CREATE Receipts (USE (\\Archive))")).startswith(b"l OK")
        assert b"\\Archive" in await c.send('m LIST "" "Receipts"')
        assert (await c.send("n CREATE Bad (USE (\\Important))")).startswith(
            b"n NO [USEATTR]")
        assert (await c.send("o DELETE INBOX")).startswith(b"o NO [CANNOT]")
        assert (await c.send('p CREATE "Bad*Name"')).startswith(b"p NO [CANNOT]")
        status = await c.send('q LIST "" "Sent" RETURN (STATUS (MESSAGES UIDNEXT))')
        assert b'* STATUS "Sent" (MESSAGES 0 UIDNEXT 1)\r\n' in status

    run(dsn, body)


def test_append_status_and_namespace(dsn: str) -> None:
    """APPEND stores the exact bytes with flags and date and answers APPENDUID; MULTIAPPEND
    is one APPENDUID set; STATUS counts them; NAMESPACE, ID and ENABLE answer."""

    async def body(env: Env) -> None:
        name = fresh("fay")
        await env.user(name)
        c = env.client()
        await c.login(name)
        raw = corpus(ATTACHMENT)
        reply = await c.send(append_line("a", "INBOX", raw,
                                         '(\\Seen $Work) "01-Jul-2024 10:00:00 +0200" '))
        match = re.fullmatch(rb"a OK \[APPENDUID (\d+) 1\] Append completed\r\n", reply)
        assert match is not None
        data = append_line("b", "INBOX", b"Subject: one\r\n\r\n1\r\n")[:-2] + \
            b" {21+}\r\nSubject: two\r\n\r\n22\r\n\r\n"
        assert await c.send(data) == (
            b"b OK [APPENDUID " + match.group(1) + b" 2:3] Append completed\r\n")
        assert await c.send("c STATUS INBOX (MESSAGES UNSEEN UIDNEXT UIDVALIDITY DELETED)") == (
            b'* STATUS "INBOX" (MESSAGES 3 UNSEEN 2 UIDNEXT 4 UIDVALIDITY ' + match.group(1)
            + b" DELETED 0)\r\nc OK Status completed\r\n")
        assert await c.send("d NAMESPACE") == (
            b'* NAMESPACE (("" "/")) NIL NIL\r\nd OK Namespace completed\r\n')
        assert (await c.send('e ID ("name" "test")')).startswith(b'* ID ("name" "objmail"')
        assert await c.send("f ENABLE QRESYNC X-UNKNOWN") == (
            b"* ENABLED QRESYNC\r\nf OK Enabled\r\n")
        assert (await c.send(append_line("g", "Nowhere", raw))).startswith(
            b"g NO [TRYCREATE]")
        assert await c.send("h SELECT INBOX") != b""
        fetched = await c.send("i UID FETCH 1 (FLAGS INTERNALDATE BODY.PEEK[])")
        assert b'FLAGS (\\Seen $Work \\Recent) INTERNALDATE "01-Jul-2024 10:00:00 +0200"' in fetched
        assert raw.replace(b"\n", b"\r\n") in fetched

    run(dsn, body)


def test_append_to_the_selected_mailbox_announces_exists(dsn: str) -> None:
    """An APPEND into the selected mailbox is followed by EXISTS before its tagged OK."""

    async def body(env: Env) -> None:
        name = fresh("gus")
        await env.user(name)
        c = env.client()
        await c.login(name)
        assert b"* 0 EXISTS" in await c.send("a SELECT INBOX")
        reply = await c.send(append_line("b", "INBOX", b"Subject: x\r\n\r\nbody\r\n"))
        assert reply.startswith(b"* 1 EXISTS\r\n* 1 RECENT\r\nb OK [APPENDUID ")

    run(dsn, body)


def test_quota_and_size_limits_on_append(dsn: str) -> None:
    """APPEND over the user's quota is NO [OVERQUOTA]; over max_message_size the parser
    refuses the literal with NO [TOOBIG] before any octet is sent; nothing is stored."""

    async def body(env: Env) -> None:
        name = fresh("hal")
        await env.user(name, quota=1000)
        c = env.client(max_message_size=2048)
        await c.login(name)
        big = b"Subject: big\r\n\r\n" + b"x" * 1500 + b"\r\n"
        assert (await c.send(append_line("a", "INBOX", big))).startswith(b"a NO [OVERQUOTA]")
        reply = await c.send("b APPEND INBOX {5000}")
        assert reply == b"b NO [TOOBIG] Literal too large\r\n"
        assert b"MESSAGES 0" in await c.send("c STATUS INBOX (MESSAGES)")

    run(dsn, body)


def test_idle_reports_other_sessions_changes_as_they_happen(dsn: str) -> None:
    """While IDLE, a delivery by someone else is announced with EXISTS, a flag change with
    FETCH and an expunge with EXPUNGE, without any command; DONE ends with OK."""

    async def body(env: Env) -> None:
        name = fresh("ida")
        await env.user(name)
        await env.deliver(name, b"Subject: first\r\n\r\none\r\n")
        watcher = env.client()
        await watcher.login(name)
        await watcher.send("a SELECT INBOX")
        assert await watcher.send("b IDLE") == b"+ idling\r\n"
        mark = len(watcher.conn.sent)
        await env.deliver(name, b"Subject: second\r\n\r\ntwo\r\n")
        await eventually(lambda: b"* 2 EXISTS" in watcher.since(mark))
        actor = env.client()
        await actor.login(name)
        await actor.send("c SELECT INBOX")
        await actor.send("d STORE 1 +FLAGS (\\Deleted)")
        await eventually(lambda: b"* 1 FETCH (UID 1 FLAGS (\\Deleted" in watcher.since(mark))
        await actor.send("e EXPUNGE")
        await eventually(lambda: b"* 1 EXPUNGE\r\n" in watcher.since(mark))
        assert await watcher.send("DONE") == b"b OK IDLE terminated\r\n"
        fetched = await watcher.send("f FETCH 1 (UID)")
        assert fetched == b"* 1 FETCH (UID 2)\r\nf OK FETCH completed\r\n"
        await watcher.close()
        await actor.close()

    run(dsn, body)


def test_two_sessions_see_each_others_changes_at_the_right_moments(dsn: str) -> None:
    """Session B learns of A's flag change and expunge at its NOOP; an expunge is held back
    during FETCH (RFC 3501 7.4.1) and reported at the next command that allows it."""

    async def body(env: Env) -> None:
        name = fresh("jo")
        await env.user(name)
        for n in range(3):
            await env.deliver(name, f"Subject: m{n}\r\n\r\nbody {n}\r\n".encode())
        a, b = env.client(), env.client()
        for client in (a, b):
            await client.login(name)
            await client.send("s SELECT INBOX")
        heard = await env.hear(name)
        reply = await a.send("a1 STORE 2 +FLAGS (\\Flagged)")
        assert reply.endswith(b"a1 OK STORE completed\r\n")
        await heard.of("flags")
        assert await b.send("b1 NOOP") == (
            b"* 2 FETCH (UID 2 FLAGS (\\Flagged))\r\nb1 OK NOOP completed\r\n")
        await a.send("a2 STORE 1 +FLAGS (\\Deleted)")
        assert await a.send("a3 EXPUNGE") == b"* 1 EXPUNGE\r\na3 OK EXPUNGE completed\r\n"
        await heard.of("expunge")
        during = await b.send("b2 FETCH 1:3 (UID)")
        assert b"EXPUNGE" not in during
        assert b"* 2 FETCH (UID 2)" in during and b"* 1 FETCH" not in during
        assert await b.send("b3 NOOP") == b"* 1 EXPUNGE\r\nb3 OK NOOP completed\r\n"
        assert await b.send("b4 FETCH 1:* (UID)") == (
            b"* 1 FETCH (UID 2)\r\n* 2 FETCH (UID 3)\r\nb4 OK FETCH completed\r\n")
        await env.deliver(name, b"Subject: new\r\n\r\nnew\r\n")
        await heard.of("append")
        assert await b.send("b5 NOOP") == b"* 3 EXISTS\r\n* 1 RECENT\r\nb5 OK NOOP completed\r\n"
        # A claimed \Recent for the first three at SELECT; the new one went to B.
        assert await a.send("a4 NOOP") == b"* 3 EXISTS\r\n* 2 RECENT\r\na4 OK NOOP completed\r\n"

    run(dsn, body)


def test_noop_reads_postgresql_only_when_the_feed_reported_a_change(dsn: str) -> None:
    """NOOP re-reads the mailbox only after a notification (or while the change feed is
    down, when one may have been lost), and still reports other sessions' changes."""

    async def body(env: Env) -> None:
        name = fresh("nia")
        await env.user(name)
        for n in range(2):
            await env.deliver(name, f"Subject: m{n}\r\n\r\nbody {n}\r\n".encode())
        a, b = env.client(), env.client()
        for client in (a, b):
            await client.login(name)
            await client.send("s SELECT INBOX")
        reads: list[int] = []
        mailboxes = env.store.mailboxes
        get_by_id = mailboxes.get_by_id

        async def counted(user_id: int, mailbox_id: int) -> Any:
            reads.append(mailbox_id)
            return await get_by_id(user_id, mailbox_id)

        mailboxes.get_by_id = counted  # type: ignore[method-assign]
        heard = await env.hear(name)
        assert await a.send("a1 NOOP") == b"a1 OK NOOP completed\r\n"
        assert reads == []
        await b.send("b1 STORE 1 +FLAGS (\\Flagged)")
        await heard.of("flags")
        # A selected first, so it holds \\Recent.
        assert await a.send("a2 NOOP") == (
            b"* 1 FETCH (UID 1 FLAGS (\\Flagged \\Recent))\r\na2 OK NOOP completed\r\n")
        assert len(reads) == 1
        assert await a.send("a3 NOOP") == b"a3 OK NOOP completed\r\n"
        assert len(reads) == 1
        # Feed down: B's change is never notified, so NOOP must look for itself.
        await env.listener.close()
        await b.send("b2 STORE 2 +FLAGS (\\Seen)")
        assert await a.send("a4 NOOP") == (
            b"* 2 FETCH (UID 2 FLAGS (\\Seen \\Recent))\r\na4 OK NOOP completed\r\n")

    run(dsn, body)


def test_deleting_the_selected_mailbox_elsewhere_ends_the_session(dsn: str) -> None:
    """When another session deletes the selected mailbox, the next command gets BYE."""

    async def body(env: Env) -> None:
        name = fresh("kim")
        await env.user(name)
        a, b = env.client(), env.client()
        await a.login(name)
        await b.login(name)
        heard = await env.hear(name)
        await a.send("a CREATE Doomed")
        await heard.of("mailbox")
        await a.send("b SELECT Doomed")
        assert (await b.send("c DELETE Doomed")).startswith(b"c OK")
        await heard.of("mailbox")
        assert await a.send("d NOOP") == b"* BYE The selected mailbox was deleted\r\n"
        assert a.conn.closed

    run(dsn, body)


def test_object_servers_down_gives_unavailable_and_the_session_survives(dsn: str) -> None:
    """With the blob store failing, FETCH BODY[] and APPEND answer NO [UNAVAILABLE] while
    metadata-only FETCH still works; once the blobs are back the same FETCH succeeds."""

    async def body(env: Env) -> None:
        name = fresh("lou")
        await env.user(name)
        await env.deliver(name, corpus(NESTED))
        c = env.client()
        await c.login(name)
        await c.send("a SELECT INBOX")
        env.blobs.unavailable = True
        assert await c.send("b FETCH 1 BODY.PEEK[]") == (
            b"b NO [UNAVAILABLE] Some messages could not be read now (UID 1), try again\r\n")
        assert (await c.send(append_line("c", "INBOX", b"Subject: x\r\n\r\ny\r\n"))).startswith(
            b"c NO [UNAVAILABLE]")
        meta = await c.send("d FETCH 1 (RFC822.SIZE ENVELOPE BODY.PEEK[HEADER])")
        assert meta.endswith(b"d OK FETCH completed\r\n")
        env.blobs.unavailable = False
        whole = await c.send("e FETCH 1 BODY.PEEK[]")
        assert corpus(NESTED) in whole and whole.endswith(b"e OK FETCH completed\r\n")

    run(dsn, body)


def test_corrupt_section_map_and_corrupt_skeleton_get_the_same_answer(
        dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    """A damaged section map (once a bare ValueError, NO [SERVERBUG]) and a damaged
    skeleton both answer NO [CORRUPTION], are logged as errors, and the session goes on."""
    corrupt = b"t NO [CORRUPTION] Message data is corrupt\r\n"

    async def body(env: Env) -> None:
        name = fresh("cora")
        await env.user(name)
        first = await env.deliver(name, corpus(NESTED))
        second = await env.deliver(name, b"Subject: two\r\n\r\nsecond\r\n")
        async with env.store.db.connection() as conn:
            await conn.execute("UPDATE messages SET section_map = $2 WHERE id = $1",
                               first.message_id, b"OMSM\x01\x05junk")
            skeleton = (await conn.fetchval("SELECT skeleton_id FROM messages WHERE id = $1",
                                            second.message_id)).hex()
        env.blobs.data[skeleton] = b"OMSK\x01 not a skeleton any more"
        c = env.client()
        await c.login(name)
        await c.send("a SELECT INBOX")
        with caplog.at_level("ERROR", logger="imapd.session"):
            assert (await c.send("t FETCH 1 BODY.PEEK[1]")).endswith(corrupt)
            assert (await c.send("t FETCH 2 BODY.PEEK[1]")).endswith(corrupt)
        assert [r.levelname for r in caplog.records if r.name == "imapd.session"] == [
            "ERROR", "ERROR"]
        assert (await c.send("z NOOP")) == b"z OK NOOP completed\r\n"

    run(dsn, body)


def test_garbage_is_bad_and_endless_bad_commands_are_cut_off(dsn: str) -> None:
    """Unparsable lines get BAD (untagged when the tag is unreadable) and the session goes
    on; twenty BAD answers in a row end the connection with BYE."""

    async def body(env: Env) -> None:
        c = env.client()
        assert await c.send("\x01\x02 garbage") == b"* BAD Invalid or missing tag\r\n"
        assert (await c.send("a FROB")).startswith(b"a BAD Unknown command FROB")
        assert (await c.send("b NOOP")) == b"b OK NOOP completed\r\n"
        for n in range(19):
            assert (await c.send(f"x{n} FETCH 1 FLAGS")).startswith(f"x{n} BAD".encode())
            assert not c.conn.closed
        assert await c.send("last FETCH 1 FLAGS") == (
            b"last BAD FETCH needs you to log in first\r\n"
            b"* BYE Too many invalid commands\r\n")
        assert c.conn.closed

    run(dsn, body)


def test_postgresql_down_gives_unavailable_and_the_session_survives(dsn: str) -> None:
    """When the link to PostgreSQL is cut, commands answer NO [UNAVAILABLE] instead of
    dropping the client; once it is back, the same session carries on."""
    target = urlsplit(dsn)

    async def main() -> None:
        proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 5432)
        await proxy.start()
        userinfo = target.netloc.rpartition("@")[0]  # user and password
        store_dsn = target._replace(netloc=f"{userinfo}@127.0.0.1:{proxy.port}").geturl()
        async with environment(dsn, store_dsn=store_dsn) as env:
            name = fresh("max")
            await env.user(name)
            await env.deliver(name, b"Subject: x\r\n\r\nbody\r\n")
            c = env.client()
            await c.login(name)
            await c.send("a SELECT INBOX")
            await proxy.cut()
            unavailable = b" NO [UNAVAILABLE] Temporarily unavailable, try again\r\n"
            assert await c.send("b FETCH 1 (FLAGS)") == b"b" + unavailable
            assert await c.send("c STATUS INBOX (MESSAGES)") == b"c" + unavailable
            # NOOP's poll fails quietly: nothing to report is not an error.
            assert await c.send("d NOOP") == b"d OK NOOP completed\r\n"
            assert not c.conn.closed
            await proxy.restore()
            reply = await c.send("e FETCH 1 (FLAGS)")
            for _ in range(20):  # the pool may hand out one more dead connection first
                if reply.startswith(b"* 1 FETCH"):
                    break
                await asyncio.sleep(0.1)
                reply = await c.send("e FETCH 1 (FLAGS)")
            assert reply == b"* 1 FETCH (FLAGS (\\Recent))\r\ne OK FETCH completed\r\n"
        await proxy.cut()

    asyncio.run(main())


def test_a_keyword_new_to_the_mailbox_reaches_every_session_before_its_fetch(
        dsn: str) -> None:
    """When one session stores a keyword the mailbox never had, another session of that
    mailbox gets FLAGS and PERMANENTFLAGS (keeping the keywords in use) before the FETCH
    that shows it, at its next command or at once while it IDLEs, or in its own FETCH."""

    async def body(env: Env) -> None:
        name = fresh("kw")
        await env.user(name)
        for n in range(2):
            await env.deliver(name, f"Subject: m{n}\r\n\r\nbody {n}\r\n".encode(),
                              flags=["$Label1"] if n == 0 else [])
        a, b, idler = env.client(), env.client(), env.client()
        for client in (a, b, idler):
            await client.login(name)
            assert b"$Label1)" in await client.send("s SELECT INBOX")
        assert await idler.send("i IDLE") == b"+ idling\r\n"
        mark = len(idler.conn.sent)
        heard = await env.hear(name)
        await a.send("a1 STORE 1 +FLAGS ($Label2)")
        await heard.of("flags")
        flags = b"\\Seen \\Answered \\Flagged \\Deleted \\Draft $Label1 $Label2"
        announced = (b"* FLAGS (" + flags + b")\r\n* OK [PERMANENTFLAGS (" + flags
                     + b" \\*)] Flags permitted\r\n")
        assert await b.send("b1 NOOP") == (
            announced + b"* 1 FETCH (UID 1 FLAGS ($Label1 $Label2))\r\nb1 OK NOOP completed\r\n")
        await eventually(lambda: idler.since(mark).startswith(announced))
        assert b"* 1 FETCH (UID 1 FLAGS ($Label1 $Label2))" in idler.since(mark)
        # Changes are reported after a command's own answer: FETCH announces the keyword.
        await a.send("a2 STORE 2 +FLAGS ($Label3)")
        await heard.of("flags")
        reply = await b.send("b2 FETCH 2 FLAGS")
        assert reply.startswith(b"* FLAGS (" + flags + b" $Label3)\r\n* OK [PERMANENTFLAGS ")
        assert b"Flags permitted\r\n* 2 FETCH (FLAGS ($Label3))\r\n" in reply
        assert reply.count(b"* FLAGS") == 1
        for client in (a, b, idler):
            await client.close()

    run(dsn, body)


def test_a_nul_in_a_login_literal_is_a_failed_login(dsn: str) -> None:
    """LOGIN with a NUL inside a literal user name is a failed login (NO
    [AUTHENTICATIONFAILED]), not a server error; the session can still log in."""

    async def body(env: Env) -> None:
        name = fresh("nul")
        await env.user(name)
        client = env.client()
        user = f"{name}\x00x".encode()
        reply = await client.send(b"a LOGIN {%d+}\r\n%s secret" % (len(user), user))
        assert reply == b"a NO [AUTHENTICATIONFAILED] Authentication failed\r\n"
        await client.login(name)

    run(dsn, body)


def test_a_search_stops_with_its_query_when_the_client_goes_away(dsn: str) -> None:
    """A SEARCH whose client disconnects is cancelled at once with its PostgreSQL query,
    unanswered, and the session's next command on the pool still works."""

    async def waiting_on_lock(watch: asyncpg.Connection) -> int:
        return int(await watch.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND query LIKE '%mailbox_messages%'"))

    async def body(env: Env) -> None:
        name = fresh("sam")
        await env.user(name)
        await env.deliver(name, b"Subject: s\r\n\r\nneedle in here\r\n")
        c = env.client()
        await c.login(name)
        await c.send("s SELECT INBOX")
        locker = await asyncpg.connect(dsn)
        watch = await asyncpg.connect(dsn)
        try:
            async with locker.transaction():
                await locker.execute("LOCK TABLE mailbox_messages IN ACCESS EXCLUSIVE MODE")
                pending = asyncio.ensure_future(c.send("t SEARCH BODY needle"))
                for _ in range(250):
                    if await waiting_on_lock(watch):
                        break
                    await asyncio.sleep(0.02)
                assert await waiting_on_lock(watch) == 1
                c.session.connection_lost()
                # Done while the lock is still held: cancelled, not finished.
                assert await asyncio.wait_for(pending, 5) == b""
                for _ in range(250):
                    if not await waiting_on_lock(watch):
                        break
                    await asyncio.sleep(0.02)
                assert await waiting_on_lock(watch) == 0
            assert await c.send("u SEARCH BODY needle") == (
                b"* SEARCH 1\r\nu OK SEARCH completed\r\n")
        finally:
            await watch.close()
            await locker.close()

    run(dsn, body)

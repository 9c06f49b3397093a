"""POP3 sessions over a real PostgreSQL (blobs in memory): authorisation, the maildrop
snapshot, RETR/TOP with dot-stuffing, DELE/RSET/QUIT, and errors."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from imapd.pop3parser import AuthLine, NeedData, Pop3Command, Pop3Parser
from imapd.pop3session import Pop3Session
from metadata.sections import imap_view
from tests.imapd_support import NESTED, Env, corpus, environment
from tests.metadata_support import fresh_database


@pytest.fixture(scope="module")
def dsn(postgres: str) -> Iterator[str]:
    with fresh_database(postgres) as target:
        yield target


@dataclass
class Wire:
    """A Pop3Connection collecting what the session writes."""

    secure: bool = False
    tls_available: bool = True
    peer: str = "127.0.0.1:2"
    out: list[bytes] = field(default_factory=list)
    closed: bool = False
    parser: Pop3Parser = field(default_factory=Pop3Parser)

    def write(self, chunks: Sequence[bytes]) -> None:
        self.out.extend(chunks)

    async def drain(self) -> None:
        return None

    def expect_auth_line(self) -> None:
        self.parser.expect_auth_line()

    def start_tls(self) -> None:
        self.secure = True

    def close(self) -> None:
        self.closed = True


class Pop3Client:
    def __init__(self, env: Env, **config: Any) -> None:
        self.wire = Wire()
        self.session = Pop3Session(env.backend(**config), self.wire)

    async def send(self, line: str) -> bytes:
        start = len(self.wire.out)
        self.wire.parser.feed(line.encode() + b"\r\n")
        while not isinstance(event := self.wire.parser.next_event(), NeedData):
            assert isinstance(event, Pop3Command | AuthLine), event
            await self.session.dispatch(event)
        return b"".join(self.wire.out[start:])


_names = iter(range(1_000_000))


def run(dsn: str, body: Callable[[Env, str], Awaitable[None]]) -> None:
    async def main() -> None:
        async with environment(dsn) as env:
            name = f"pop{next(_names)}"
            await env.user(name)
            await body(env, name)

    asyncio.run(main())


def test_login_stat_list_uidl(dsn: str) -> None:
    """USER/PASS opens the maildrop; STAT, LIST and UIDL count octets as RETR sends them
    (CRLF) and give stable unique ids."""

    async def body(env: Env, name: str) -> None:
        raws = [corpus(NESTED), b"Subject: a\n\nbody\n"]
        delivered = [await env.deliver(name, raw) for raw in raws]
        c = Pop3Client(env)
        assert await c.send(f"USER {name}") == b"+OK Send PASS\r\n"
        assert await c.send("PASS secret") == b"+OK 2 messages\r\n"
        sizes = [len(imap_view(raw)) for raw in raws]
        assert await c.send("STAT") == f"+OK 2 {sum(sizes)}\r\n".encode()
        assert await c.send("LIST") == (
            f"+OK Scan listing follows\r\n1 {sizes[0]}\r\n2 {sizes[1]}\r\n.\r\n".encode())
        assert await c.send("LIST 2") == f"+OK 2 {sizes[1]}\r\n".encode()
        uidv = delivered[0].uidvalidity
        assert await c.send("UIDL 1") == f"+OK 1 {uidv}.1\r\n".encode()
        assert await c.send("UIDL") == (
            f"+OK Unique-ID listing follows\r\n1 {uidv}.1\r\n2 {uidv}.2\r\n.\r\n".encode())
        assert await c.send("LIST 3") == b"-ERR No such message\r\n"
        assert await c.send("NOOP") == b"+OK\r\n"

    run(dsn, body)


def test_retr_and_top_dot_stuff(dsn: str) -> None:
    """RETR sends the message in CRLF form with dot-stuffed lines; TOP sends the header,
    the blank line and the first n body lines."""

    async def body(env: Env, name: str) -> None:
        raw = b"Subject: dots\n\n.first\nsecond\n.\nfourth\n"
        await env.deliver(name, raw)
        c = Pop3Client(env)
        await c.send(f"USER {name}")
        await c.send("PASS secret")
        assert await c.send("RETR 1") == (
            b"+OK 44 octets\r\nSubject: dots\r\n\r\n..first\r\nsecond\r\n..\r\nfourth\r\n.\r\n")
        assert await c.send("TOP 1 2") == (
            b"+OK Top of message follows\r\nSubject: dots\r\n\r\n..first\r\nsecond\r\n.\r\n")
        assert await c.send("TOP 1 0") == (
            b"+OK Top of message follows\r\nSubject: dots\r\n\r\n.\r\n")
        assert (await c.send("TOP 1")).startswith(b"-ERR")

    run(dsn, body)


def test_dele_rset_and_quit_delete_only_what_was_marked(dsn: str) -> None:
    """DELE hides a message, RSET brings it back, QUIT expunges exactly the marked ones
    (not a message IMAP flagged \\Deleted); a dropped connection deletes nothing."""

    async def body(env: Env, name: str) -> None:
        for n in range(3):
            await env.deliver(name, f"Subject: {n}\r\n\r\n{n}\r\n".encode(),
                              flags=["\\Deleted"] if n == 2 else [])
        c = Pop3Client(env)
        await c.send(f"USER {name}")
        await c.send("PASS secret")
        assert await c.send("DELE 1") == b"+OK Marked for deletion\r\n"
        assert await c.send("RETR 1") == b"-ERR No such message\r\n"
        assert (await c.send("STAT")).startswith(b"+OK 2 ")
        await c.send("RSET")
        assert (await c.send("STAT")).startswith(b"+OK 3 ")
        await c.send("DELE 1")
        dropped = Pop3Client(env)
        await dropped.send(f"USER {name}")
        await dropped.send("PASS secret")
        await dropped.send("DELE 2")
        await dropped.session.close()
        assert await c.send("QUIT") == b"+OK Bye\r\n"
        assert c.wire.closed
        user = env.users[name]
        inbox = await env.store.mailboxes.get(user.id, "INBOX")
        assert await env.store.messages.uids(user.id, inbox.id) == [2, 3]

    run(dsn, body)


def test_the_maildrop_is_a_snapshot(dsn: str) -> None:
    """A message delivered after login is not in this session's listing."""

    async def body(env: Env, name: str) -> None:
        await env.deliver(name, b"Subject: one\r\n\r\n1\r\n")
        c = Pop3Client(env)
        await c.send(f"USER {name}")
        await c.send("PASS secret")
        await env.deliver(name, b"Subject: two\r\n\r\n2\r\n")
        assert (await c.send("STAT")).startswith(b"+OK 1 ")

    run(dsn, body)


def test_authorisation_rules(dsn: str) -> None:
    """Without TLS and plaintext allowed USER is refused with [AUTH] and CAPA offers STLS
    but not USER; after STLS, AUTH PLAIN works; a wrong password is -ERR [AUTH]."""

    async def body(env: Env, name: str) -> None:
        c = Pop3Client(env, allow_plaintext_auth=False)
        capa = await c.send("CAPA")
        assert b"STLS\r\n" in capa and b"USER" not in capa and capa.endswith(b".\r\n")
        assert (await c.send(f"USER {name}")).startswith(b"-ERR [AUTH] ")
        assert await c.send("STLS") == b"+OK Begin TLS negotiation\r\n"
        assert b"SASL PLAIN" in await c.send("CAPA")
        token = base64.b64encode(f"\0{name}\0wrong".encode()).decode()
        assert await c.send(f"AUTH PLAIN {token}") == b"-ERR [AUTH] Authentication failed\r\n"
        assert await c.send("AUTH PLAIN") == b"+ \r\n"
        token = base64.b64encode(f"\0{name}\0secret".encode()).decode()
        assert await c.send(token) == b"+OK 0 messages\r\n"
        assert (await c.send("USER x")).startswith(b"-ERR Unknown command or wrong state")

    run(dsn, body)


def test_three_failed_logins_close(dsn: str) -> None:
    """The third wrong password closes the connection."""

    async def body(env: Env, name: str) -> None:
        c = Pop3Client(env)
        for _ in range(3):
            await c.send(f"USER {name}")
            assert await c.send("PASS nope") == b"-ERR [AUTH] Authentication failed\r\n"
        assert c.wire.closed

    run(dsn, body)


def test_blobs_down_is_a_temporary_error(dsn: str) -> None:
    """RETR with the object servers down answers -ERR [SYS/TEMP] and the session goes on."""

    async def body(env: Env, name: str) -> None:
        await env.deliver(name, corpus(NESTED))
        c = Pop3Client(env)
        await c.send(f"USER {name}")
        await c.send("PASS secret")
        env.blobs.unavailable = True
        assert await c.send("RETR 1") == b"-ERR [SYS/TEMP] Temporarily unavailable, try again\r\n"
        env.blobs.unavailable = False
        assert (await c.send("RETR 1")).endswith(b"\r\n.\r\n")

    run(dsn, body)

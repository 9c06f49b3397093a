"""CATENATE (RFC 4469): IMAP URLs (RFC 5092) as CATENATE takes them, the APPEND grammar,
and the session over a real PostgreSQL joining TEXT and URL parts into one delivery
(RFC 4469's own example), BADURL and TOOBIG, MULTIAPPEND, and parts stored once."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from imapd import commands as c
from imapd.catenate import BadUrl, ImapUrl, parse_url
from imapd.fetchatts import BodySection, Partial, Section, SectionText
from imapd.grammar import parse_command
from imapd.lexer import Frame
from tests.imapd_support import Env, environment
from tests.metadata_support import fresh_database

# -- URLs ----------------------------------------------------------------------------------


def peek(section: Section | None = None, partial: Partial | None = None) -> BodySection:
    return BodySection(section or Section(), peek=True, partial=partial)


@pytest.mark.parametrize(("url", "expected"), [
    ("/Drafts;UIDVALIDITY=385759045/;UID=20/;section=HEADER",
     ImapUrl("Drafts", 385759045, 20, peek(Section((), SectionText.HEADER)))),
    ("/Drafts;UIDVALIDITY=385759045/;UID=20/;section=1.MIME",
     ImapUrl("Drafts", 385759045, 20, peek(Section((1,), SectionText.MIME)))),
    ("/Drafts;UIDVALIDITY=385759045/;UID=30", ImapUrl("Drafts", 385759045, 30, peek())),
    ("imap://fred@example.org/INBOX/;UID=7/;SECTION=2/;PARTIAL=10.20",
     ImapUrl("INBOX", None, 7, peek(Section((2,)), Partial(10, 20)))),
    ("imap://fred;AUTH=*@example.org:993/inbox;UIDVALIDITY=1/;UID=7",
     ImapUrl("INBOX", 1, 7, peek())),
    ("//example.org/Lists/objmail%20dev/;UID=3", ImapUrl("Lists/objmail dev", None, 3, peek())),
    ("/Entw&APw-rfe/;UID=3", ImapUrl("Entw\u00fcrfe", None, 3, peek())),
    ("/Entw%C3%BCrfe/;UID=3", ImapUrl("Entw\u00fcrfe", None, 3, peek())),
    (";UID=20/;SECTION=HEADER.FIELDS%20(FROM%20TO)",
     ImapUrl(None, None, 20, peek(Section((), SectionText.HEADER_FIELDS, ("FROM", "TO"))))),
    (";uid=5/;partial=100", ImapUrl(None, None, 5, peek(partial=Partial(100)))),
])
def test_urls_catenate_accepts(url: str, expected: ImapUrl) -> None:
    """Absolute, network-path, absolute-path and mailbox-relative URLs, with UIDVALIDITY,
    SECTION (%-encoded) and PARTIAL, name the message part BODY.PEEK would read."""
    assert parse_url(url, user="fred") == expected


@pytest.mark.parametrize(("url", "reason"), [
    ("imap://joe@example.org/INBOX/;UID=1", "another user"),
    ("imap://example.org/;UID=1", "Not an IMAP URL"),
    ("imap://example.org;UID=1", "Not an IMAP URL"),
    ("/INBOX", "Not an IMAP URL"),
    ("/INBOX?SUBJECT%20x", "Not an IMAP URL"),
    ("/INBOX/;UID=0", "Not an IMAP URL"),
    ("/INBOX/;UID=1;EXPIRE=2030-01-01T00:00:00Z;URLAUTH=anonymous:internal:abc",
     "Not an IMAP URL"),
    ("/INBOX/;UID=1/;SECTION=BOGUS", "Invalid section"),
    (";SECTION=1", "Not an IMAP URL"),
    ("http://example.org/INBOX/;UID=1", "Not an IMAP URL"),
])
def test_urls_catenate_refuses(url: str, reason: str) -> None:
    """Other users, searches, URLAUTH, a section alone and other schemes are BADURL."""
    with pytest.raises(BadUrl) as info:
        parse_url(url, user="fred")
    assert reason in info.value.reason and info.value.url == url


# -- grammar -------------------------------------------------------------------------------


def test_append_with_catenate_parses_with_multiappend() -> None:
    """RFC 4469's APPEND: URL and TEXT parts in order, flags kept; a plain literal
    message may follow it (MULTIAPPEND)."""
    boundary = b"\r\n--------------030308070208000400050907\r\n"
    line = (b'A003 APPEND Drafts (\\Seen \\Draft $MDNSent) CATENATE (URL '
            b'"/Drafts;UIDVALIDITY=385759045/;UID=20/;section=HEADER" TEXT {42}')
    segments = (line, b' URL "/Drafts;UIDVALIDITY=385759045/;UID=30" TEXT {44}',
                b") {5}", b"")
    frame = Frame(segments, (boundary[:42], boundary[:-2] + b"--\r\n", b"hello"))
    command = parse_command(frame)
    assert isinstance(command, c.Append) and command.mailbox == "Drafts"
    first, second = command.messages
    assert first.flags == ("\\Seen", "\\Draft", "$MDNSent") and first.data == b""
    assert first.catenate == (
        c.CatUrl("/Drafts;UIDVALIDITY=385759045/;UID=20/;section=HEADER"),
        c.CatText(boundary[:42]),
        c.CatUrl("/Drafts;UIDVALIDITY=385759045/;UID=30"),
        c.CatText(boundary[:-2] + b"--\r\n"))
    assert second == c.AppendMessage(b"hello")


@pytest.mark.parametrize("line", [
    b"a APPEND INBOX CATENATE ()",
    b"a APPEND INBOX CATENATE (TEXT hello)",
    b"a APPEND INBOX CATENATE (FILE x)",
    b"a APPEND INBOX CATENATE URL x",
])
def test_bad_catenate_syntax_is_a_command_error(line: bytes) -> None:
    """An empty part list, a TEXT that is no literal, an unknown part word and a
    missing list are syntax errors (BAD)."""
    from imapd.grammar import CommandError

    with pytest.raises(CommandError):
        parse_command(Frame.from_line(line))


# -- the session, over PostgreSQL ------------------------------------------------------------


@pytest.fixture(scope="module")
def dsn(postgres: str) -> Iterator[str]:
    with fresh_database(postgres) as target:
        yield target


def run(dsn: str, body: Callable[[Env], Awaitable[None]], **imapd: Any) -> None:
    async def main() -> None:
        async with environment(dsn, **imapd) as env:
            await body(env)

    asyncio.run(main())


ATTACHED = bytes(range(256)) * 64  # 16 KB: stored as a blob, decoded
DRAFT = (
    b"From: fred@example.org\r\nTo: joe@example.org\r\nSubject: the report\r\n"
    b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n"
    b"--B\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
    b"--B\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n"
    b"\r\n" + base64.encodebytes(ATTACHED).replace(b"\n", b"\r\n") + b"--B--\r\n"
)


def literal(data: bytes) -> bytes:
    return b"{%d+}\r\n%s" % (len(data), data)


def test_catenate_joins_urls_and_text_into_one_delivery(dsn: str) -> None:
    """RFC 4469's forwarding example: the stored draft's header, new text, and its
    attachment part (with its MIME header) by URL make the new message, byte for byte;
    the attachment is not stored twice; the draft keeps its flags (no \\Seen)."""

    async def body(env: Env) -> None:
        await env.user("fred")
        client = env.client()
        login = await client.login("fred")
        assert b" CATENATE" in login
        await client.send("a CREATE Drafts")
        delivered = await env.deliver("fred", DRAFT, mailbox="Drafts")
        validity, uid = delivered.uidvalidity, delivered.uid
        blobs_before = len(env.blobs.data)
        base = f"/Drafts;UIDVALIDITY={validity}/;UID={uid}"
        text = b"--B\r\nContent-Type: text/plain\r\n\r\nforwarding it\r\n--B\r\n"
        command = (b"b APPEND Drafts (\\Draft) CATENATE (URL \"" + base.encode()
                   + b"/;section=HEADER\" TEXT " + literal(text)
                   + b" URL \"" + base.encode() + b"/;section=2.MIME\" URL \""
                   + base.encode() + b"/;section=2\" TEXT " + literal(b"\r\n--B--\r\n")
                   + b")\r\n")
        reply = await client.send(command)
        assert reply.startswith(b"b OK [APPENDUID %d %d]" % (validity, uid + 1)), reply
        header = DRAFT.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
        part = DRAFT.split(b"--B\r\n")[2]
        mime, content = part.split(b"\r\n\r\n", 1)
        content = content[:-len(b"\r\n--B--\r\n")]
        expected = (header + text + mime + b"\r\n\r\n" + content + b"\r\n--B--\r\n")
        await client.send("c SELECT Drafts")
        assert await client.send(f"d UID FETCH {uid + 1} (FLAGS BODY.PEEK[])") == (
            b"* 2 FETCH (UID %d FLAGS (\\Draft \\Recent) BODY[] {%d}\r\n%s)\r\n"
            b"d OK UID FETCH completed\r\n" % (uid + 1, len(expected), expected))
        # Only the new message's skeleton was stored: the 16 KB part is the same blob.
        assert len(env.blobs.data) == blobs_before + 1
        assert (await client.send(f"e UID FETCH {uid} (FLAGS)")).startswith(
            b"* 1 FETCH (UID %d FLAGS (\\Recent))" % uid)

    run(dsn, body)


def test_relative_urls_and_badurl(dsn: str) -> None:
    """A mailbox-relative URL reads the selected mailbox; without one, or with a wrong
    UIDVALIDITY, a missing UID or mailbox, or another user's name, the APPEND is
    NO [BADURL url] and nothing is stored."""

    async def body(env: Env) -> None:
        await env.user("rel")
        await env.user("other")
        await env.deliver("rel", b"Subject: one\r\n\r\nfirst body\r\n")
        client = env.client()
        await client.login("rel")
        bad = [
            (';UID=1', b"A relative URL needs a selected mailbox"),
            ('/INBOX;UIDVALIDITY=1/;UID=1', b"UIDVALIDITY does not match"),
            ('/INBOX/;UID=9', b"No such message"),
            ('/Nowhere/;UID=1', b"No such mailbox"),
            ('imap://other@host/INBOX/;UID=1', b"The URL names another user"),
        ]
        for n, (url, reason) in enumerate(bad):
            reply = await client.send(f'b{n} APPEND INBOX CATENATE (URL "{url}")')
            assert reply == b"b%d NO [BADURL %s] %s\r\n" % (n, url.encode(), reason)
        await client.send("c SELECT INBOX")
        reply = await client.send(b'd APPEND INBOX CATENATE (URL ";UID=1/;SECTION=HEADER" '
                                   b'TEXT ' + literal(b"second body\r\n") + b")")
        assert reply.startswith(b"* 2 EXISTS\r\n") and b"d OK [APPENDUID " in reply
        assert (await client.send("e FETCH 2 (BODY.PEEK[])")).startswith(
            b"* 2 FETCH (BODY[] {29}\r\nSubject: one\r\n\r\nsecond body\r\n)")

    run(dsn, body)


def test_too_big_and_multiappend_all_or_nothing(dsn: str) -> None:
    """Parts adding up past max_message_size are NO [TOOBIG] before anything is read
    further; in a MULTIAPPEND a CATENATE with a bad URL undoes the messages before it."""

    async def body(env: Env) -> None:
        await env.user("big")
        await env.deliver("big", b"Subject: x\r\n\r\n" + b"y" * 3000 + b"\r\n")
        client = env.client()
        await client.login("big")
        reply = await client.send(b'a APPEND INBOX CATENATE (URL "/INBOX/;UID=1" TEXT '
                                  + literal(b"z" * 2000) + b")")
        assert reply == b"a NO [TOOBIG] Message too large\r\n"
        reply = await client.send(b"b APPEND INBOX " + literal(b"Subject: ok\r\n\r\nok\r\n")
                                  + b' CATENATE (URL "/INBOX/;UID=77")')
        assert reply.startswith(b"b NO [BADURL /INBOX/;UID=77]")
        status = await client.send("c STATUS INBOX (MESSAGES)")
        assert status.startswith(b'* STATUS "INBOX" (MESSAGES 1)')

    run(dsn, body, max_message_size=4096)

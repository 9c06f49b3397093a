"""BINARY (RFC 3516): decoding (imapd.binary, checked against Python's email package),
what a stored message lets BINARY skip (no decoding and no blob for a base64 body
delivery kept decoded), and the session over a real PostgreSQL: FETCH BINARY[...],
BINARY.PEEK, BINARY.SIZE, partial ranges, literal8 both ways, UNKNOWN-CTE."""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import quopri
import re
from collections.abc import Iterator

import pytest

from imapd.binary import (
    UnknownCte,
    blobs_needed,
    decode,
    decoded,
    decoded_size,
    locate_binary,
    stored_decoded,
    transfer_encoding,
)
from metadata.mimetree import parse
from metadata.sections import section_map
from metadata.splitter import split
from tests.binary_oracle import oracle_parts
from tests.imapd_support import ATTACHMENT, Env, corpus, environment
from tests.metadata_support import fresh_database

# -- decoding ------------------------------------------------------------------------------


def test_transfer_encoding_reads_the_first_field_unfolded() -> None:
    """The encoding is the first Content-Transfer-Encoding field's value, any case,
    folded or commented, without white space; none is ''."""
    assert transfer_encoding(b"Content-Type: text/plain\r\n") == ""
    assert transfer_encoding(b"content-transfer-ENCODING:  Base64 \n") == "base64"
    assert transfer_encoding(b"X: y\nContent-Transfer-Encoding:\n quoted-printable (qp)\n"
                             b"Content-Transfer-Encoding: base64\n") == "quoted-printable"


@pytest.mark.parametrize("body", [
    b"SGVsbG8sIHdvcmxkIQ==\r\n",
    b"SGVsbG8s\nIHdvcmxk\nIQ==\n",  # LF line ends
    b"SGVsbG8sIHdvcmxkIQ\r\n",  # padding missing
    b"SGVs*bG8sIH!dvcmxkIQ==",  # characters outside the alphabet
    b"SGVsbG8sIHdvcmxkIQ==garbage after the end",
    b"QUJD\r\nR",  # one octet too many
    b"",
])
def test_base64_decodes_as_the_email_package_does(body: bytes) -> None:
    """Lenient base64 gives what Python's email gives for the same body."""
    message = email.message_from_bytes(
        b"Content-Transfer-Encoding: base64\r\n\r\n" + body, policy=email.policy.compat32)
    assert decode("base64", body) == message.get_payload(decode=True)


def test_quoted_printable_and_identities() -> None:
    """quoted-printable is undone (soft line breaks, =XX, CRLF or LF); 7bit, 8bit,
    binary and no encoding give the octets unchanged; anything else is UnknownCte."""
    body = b"caf=C3=A9 =\r\nsoft\r\nline=3D\n"
    assert decode("quoted-printable", body) == quopri.decodestring(body)
    for identity in ("", "7bit", "8bit", "binary"):
        assert decode(identity, b"a\0b\r\nc") == b"a\0b\r\nc"
    with pytest.raises(UnknownCte):
        decode("x-uuencode", b"begin 644 x\n")


# -- what the store already knows ------------------------------------------------------------

#: A message whose 12 KB base64 attachment the splitter stores decoded, and a short
#: quoted-printable part kept in the skeleton.
PAYLOAD = bytes(range(256)) * 48
MESSAGE = (
    b"From: a@example.org\r\nSubject: parts\r\nMIME-Version: 1.0\r\n"
    b"Content-Type: multipart/mixed; boundary=XX\r\n\r\n"
    b"--XX\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
    b"na=C3=AFve =\r\ntext\r\n"
    b"--XX\r\nContent-Type: application/octet-stream\r\n"
    b"Content-Transfer-Encoding: BASE64\r\n\r\n"
    + base64.encodebytes(PAYLOAD).replace(b"\n", b"\r\n")
    + b"--XX--\r\n"
)


def test_a_base64_body_stored_decoded_is_served_as_stored() -> None:
    """The base64 attachment is one recipe blob: its decoded size comes from the
    skeleton with no blob at all, its octets are the blob as stored; the short
    quoted-printable part is decoded from the skeleton's inline bytes."""
    parts = split(MESSAGE)
    skeleton, blobs = parts.skeleton, parts.blobs
    sections = section_map(parse(MESSAGE))
    body, header = locate_binary(sections, (2,))
    assert body is not None and header is not None
    assert stored_decoded(skeleton, body) is not None
    assert blobs_needed(skeleton, body, "base64", size_only=True) == ()
    assert decoded_size(skeleton, {}, body, "base64") == len(PAYLOAD)
    needed = blobs_needed(skeleton, body, "base64", size_only=False)
    assert len(needed) == 1 and blobs[needed[0]] == PAYLOAD
    assert decoded(skeleton, blobs, body, "base64") == PAYLOAD
    text, _ = locate_binary(sections, (1,))
    assert text is not None
    assert blobs_needed(skeleton, text, "quoted-printable", size_only=True) == ()
    assert decoded(skeleton, {}, text, "quoted-printable") == "na\u00efve text".encode()
    assert locate_binary(sections, (3,)) == (None, None)
    whole, none = locate_binary(sections, ())
    assert none is None and whole is not None and whole.end == len(MESSAGE)


# -- the session, over PostgreSQL ------------------------------------------------------------


@pytest.fixture(scope="module")
def dsn(postgres: str) -> Iterator[str]:
    with fresh_database(postgres) as target:
        yield target


def run(dsn: str, body: object) -> None:
    async def main() -> None:
        async with environment(dsn) as env:
            await body(env)  # type: ignore[operator]

    asyncio.run(main())


#: RFC 3501 6.3.11's APPEND example message (the one RFC 9051 6.3.12 repeats), made
#: binary here: Content-Transfer-Encoding binary and a body line holding a NUL, which only
#: a literal8 can carry.
RFC_DRAFT = (
    b"Date: Mon, 7 Feb 1994 21:52:25 -0800 (PST)\r\n"
    b"From: Fred Foobar <foobar@Blurdybloop.COM>\r\n"
    b"Subject: afternoon meeting\r\n"
    b"To: mooch@owatagu.siam.edu\r\n"
    b"Message-Id: <B27397-0100000@Blurdybloop.COM>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: TEXT/PLAIN; CHARSET=US-ASCII\r\n"
    b"Content-Transfer-Encoding: binary\r\n"
    b"\r\n"
    b"Hello Joe, do you think we can meet at 3:30 tomorrow?\r\n"
    b"\0\r\n"
)


def test_literal8_append_and_binary_fetch_keep_a_nul(dsn: str) -> None:
    """BINARY is announced after login; a literal8 APPEND (RFC 3516) is stored as sent and
    BINARY[1] returns its body as a literal8 with the NUL, BINARY.SIZE[1] its size,
    while BODY[1] shows the NUL as IMAP text does (0x80)."""

    async def body(env: Env) -> None:
        await env.user("fred")
        client = env.client()
        assert b" BINARY" not in (await client.send("a CAPABILITY"))
        assert b" BINARY" in await client.login("fred")
        reply = await client.send(b"b APPEND INBOX (\\Seen) ~{%d+}\r\n%s\r\n"
                                  % (len(RFC_DRAFT), RFC_DRAFT))
        assert reply.startswith(b"b OK [APPENDUID ")
        await client.send("c SELECT INBOX")
        content = RFC_DRAFT.split(b"\r\n\r\n", 1)[1]
        assert await client.send("d FETCH 1 (BINARY.SIZE[1] BINARY.PEEK[1])") == (
            b"* 1 FETCH (BINARY.SIZE[1] %d BINARY[1] ~{%d}\r\n%s)\r\nd OK FETCH completed\r\n"
            % (len(content), len(content), content))
        assert await client.send("e FETCH 1 (BODY.PEEK[1])") == (
            b"* 1 FETCH (BODY[1] {%d}\r\n%s)\r\ne OK FETCH completed\r\n"
            % (len(content), content.replace(b"\0", b"\x80")))
        assert await client.send("f FETCH 1 (BINARY.PEEK[])") == (
            b"* 1 FETCH (BINARY[] ~{%d}\r\n%s)\r\nf OK FETCH completed\r\n"
            % (len(RFC_DRAFT), RFC_DRAFT))

    run(dsn, body)


def test_binary_decodes_parts_sets_seen_and_takes_partial_ranges(dsn: str) -> None:
    """BINARY[2] of a base64 attachment is the decoded octets (and BINARY.SIZE[2] their
    count, with no attachment blob read); BINARY[1] undoes quoted-printable; a partial
    range cuts the decoded octets; BINARY sets \\Seen, BINARY.PEEK does not; a part that
    does not exist is empty."""

    async def body(env: Env) -> None:
        await env.user("bin")
        delivered = await env.deliver("bin", MESSAGE)
        assert delivered.uid == 1
        client = env.client()
        await client.login("bin")
        await client.send("a SELECT INBOX")
        env.blobs.reads.clear()
        assert await client.send("b FETCH 1 (BINARY.SIZE[2] BINARY.SIZE[1])") == (
            b"* 1 FETCH (BINARY.SIZE[2] %d BINARY.SIZE[1] 11)\r\nb OK FETCH completed\r\n"
            % len(PAYLOAD))
        assert len(env.blobs.reads) == 1  # the skeleton, not the 12 KB attachment
        reply = await client.send("c FETCH 1 (BINARY.PEEK[2] BINARY.PEEK[1] FLAGS)")
        expected = (b"* 1 FETCH (BINARY[2] ~{%d}\r\n" % len(PAYLOAD) + PAYLOAD
                    + b" BINARY[1] {11}\r\nna\xc3\xafve text FLAGS (\\Recent))\r\n"
                    b"c OK FETCH completed\r\n")
        assert reply == expected
        reply = await client.send("d FETCH 1 (BINARY[2]<256.10>)")
        assert reply == (b"* 1 FETCH (BINARY[2]<256> ~{10}\r\n" + PAYLOAD[:10]
                         + b" FLAGS (\\Seen \\Recent))\r\nd OK FETCH completed\r\n")
        assert await client.send("e FETCH 1 (BINARY.PEEK[2]<20000.5> BINARY.PEEK[7])") == (
            b"* 1 FETCH (BINARY[2]<20000> {0}\r\n BINARY[7] {0}\r\n)\r\n"
            b"e OK FETCH completed\r\n")

    run(dsn, body)


def test_an_unknown_encoding_is_no_unknown_cte(dsn: str) -> None:
    """A part in an encoding the server cannot undo is NO [UNKNOWN-CTE] (RFC 3516 4.3),
    for BINARY and BINARY.SIZE alike; BODY still reads it and the session goes on."""

    async def body(env: Env) -> None:
        await env.user("uu")
        raw = (b"Subject: uu\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\n"
               b"begin 644 a.txt\r\n#86)C\r\n`\r\nend\r\n")
        await env.deliver("uu", raw)
        client = env.client()
        await client.login("uu")
        await client.send("a SELECT INBOX")
        for tag, item in (("b", "BINARY.PEEK[1]"), ("c", "BINARY.SIZE[1]")):
            reply = await client.send(f"{tag} FETCH 1 ({item})")
            assert reply == (f"{tag} NO [UNKNOWN-CTE] Unknown Content-Transfer-Encoding "
                             "x-uuencode\r\n").encode()
        assert (await client.send("d FETCH 1 (BODY.PEEK[1])")).endswith(
            b"d OK FETCH completed\r\n")

    run(dsn, body)


def test_binary_of_a_corpus_attachment_matches_the_email_package(dsn: str) -> None:
    """A real message's base64 JPEG, LF line ends and all, comes back as Python's email
    package decodes it."""

    async def body(env: Env) -> None:
        await env.user("jpg")
        raw = corpus(ATTACHMENT)
        await env.deliver("jpg", raw)
        jpeg = oracle_parts(raw)[1]
        assert jpeg.number == (2,) and jpeg.encoding == "base64"  # written "base64 "
        expected = jpeg.decoded
        client = env.client()
        await client.login("jpg")
        await client.send("a SELECT INBOX")
        reply = await client.send("b FETCH 1 (BINARY.PEEK[2] BINARY.SIZE[2])")
        found = re.match(rb"\* 1 FETCH \(BINARY\[2\] (~?)\{(\d+)\}\r\n", reply)
        assert found is not None and int(found.group(2)) == len(expected)
        start = found.end()
        assert reply[start:start + len(expected)] == expected
        assert reply[start + len(expected):] == (
            b" BINARY.SIZE[2] %d)\r\nb OK FETCH completed\r\n" % len(expected))

    run(dsn, body)

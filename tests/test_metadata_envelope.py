"""Tests for metadata.envelope: ENVELOPE bytes as an IMAP server sends them.

Expected values were checked against Dovecot 2.3 (see test_metadata_dovecot_oracle
for the systematic comparison).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metadata.envelope import Address, envelope_of, parse_addresses, render_envelope, tree_envelope
from metadata.mimetree import parse


def _env(raw: bytes) -> bytes:
    return tree_envelope(parse(raw))


def test_folding_groups_routes_and_quoting() -> None:
    """Folding is removed from Date/Message-ID, Subject and names are tidied for humans
    (sent as literals when changed), groups and routes are kept."""
    raw = (
        b"Date: Thu,\r\n 20 Jun 1996\r\n"
        b"Subject:  two  spaces\r\n\tand tab\r\n"
        b"Message-ID:\r\n <a@b>\r\n"
        b'From: "A\\"B" <a@b.c>\r\n'
        b"To: undisclosed-recipients:;\r\n"
        b'Cc: grp: x@y, z@w;, "q" <@r1,@r2:m@d>\r\n'
        b"\r\nbody\r\n"
    )
    assert _env(raw) == (
        b'("Thu, 20 Jun 1996" {18}\r\ntwo spaces and tab'
        b' (({3}\r\nA"B NIL "a" "b.c")) (({3}\r\nA"B NIL "a" "b.c")) (({3}\r\nA"B NIL "a" "b.c"))'
        b' ((NIL NIL "undisclosed-recipients" NIL)(NIL NIL NIL NIL))'
        b' ((NIL NIL "grp" NIL)(NIL NIL "x" "y")(NIL NIL "z" "w")(NIL NIL NIL NIL)("q" "@r1,@r2" "m" "d"))'
        b' NIL NIL " <a@b>")'
    )


def test_repeated_fields() -> None:
    """The last Subject/Date/In-Reply-To wins, address fields accumulate, Sender and
    Reply-To default to From."""
    raw = (
        b"Subject: x\nSubject: second\nFrom: one@a\nFrom: two@b\n"
        b"Date:   spaced\nIn-Reply-To: <x>\n <y>\n\nbody\n"
    )
    from_ = b'((NIL NIL "one" "a")(NIL NIL "two" "b"))'
    assert (
        _env(raw)
        == b'("spaced" "second" ' + b" ".join([from_] * 3) + b' NIL NIL NIL "<x> <y>" NIL)'
    )


def test_tab_in_folded_date_kept_and_subject_literal() -> None:
    """A TAB continuing Date stays (as a TAB) once the line break is removed; a folded
    Subject becomes a literal with one space."""
    raw = b"Subject: a\n b\nDate: x\n\tyy\nMessage-ID: <a>\n\t<b>\n\nbody\n"
    assert _env(raw) == b'("x\tyy" {3}\r\na b NIL NIL NIL NIL NIL NIL NIL "<a>\t<b>")'


def test_no_headers_is_all_nil() -> None:
    """A message without envelope fields has ten NILs."""
    assert _env(b"\nbody") == b"(" + b" ".join([b"NIL"] * 10) + b")"


def test_encoded_words_and_8bit_kept_as_received() -> None:
    """RFC 2047 words stay encoded; 8-bit bytes are sent in literals."""
    raw = b"Subject: =?utf-8?q?caf=C3=A9?=\nFrom: Andr\xc3\xa9 <a@b>\n\nx"
    env = _env(raw)
    assert env.startswith(b'(NIL "=?utf-8?q?caf=C3=A9?=" (({6}\r\nAndr\xc3\xa9 NIL "a" "b"))')


def test_empty_sender_falls_back_to_from() -> None:
    """An empty Sender or Reply-To field is replaced by From (RFC 3501)."""
    raw = b"From: a@b\nSender:\nReply-To: \n\nx"
    env = envelope_of(parse(raw).root.headers)
    assert env.sender == () and env.reply_to == ()
    assert render_envelope(env).count(b'((NIL NIL "a" "b"))') == 3


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"user@example.com", [Address(None, None, b"user", b"example.com")]),
        (b"John Smith <js@x.org>", [Address(b"John Smith", None, b"js", b"x.org")]),
        (b"js@x.org (John Smith)", [Address(b"John Smith", None, b"js", b"x.org")]),
        (b"<>", [Address(None, None, b"MISSING_MAILBOX", b"MISSING_DOMAIN")]),
        (b"user", [Address(None, None, b"user", b"MISSING_DOMAIN")]),
        (b"John Smith", [Address(b"John Smith", None, b"MISSING_MAILBOX", b"MISSING_DOMAIN")]),
        (b'"q@x"', [Address(b"q@x", None, b"MISSING_MAILBOX", b"MISSING_DOMAIN")]),
        (
            b"a@b, , c@d",
            [
                Address(None, None, b"a", b"b"),
                Address(None, None, b"MISSING_MAILBOX", b"MISSING_DOMAIN"),
                Address(None, None, b"c", b"d"),
            ],
        ),
        (b"Name <broken", [Address(b"Name", None, b"broken", b"SYNTAX_ERROR")]),
        (b"<@r:x@y>", [Address(None, b"@r", b"x", b"y")]),
        (b"<@r x@y>", [Address(None, b"INVALID_ROUTE", b"x", b"y")]),
        (b"first.last.@host", [Address(None, None, b"first.last.", b"host")]),
        (b"g:;", [Address(None, None, b"g", None), Address(None, None, None, None)]),
        (b'"a\0b" <x@y>', [Address(b"a\xef\xbf\xbdb", None, b"x", b"y")]),
        (b"", []),
        (b"  (only a comment) ", []),
    ],
)
def test_parse_addresses(value: bytes, expected: list[Address]) -> None:
    """Addresses parse leniently, with Dovecot's placeholders for missing parts."""
    assert list(parse_addresses(value)) == expected


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_junk_never_raises(value: bytes) -> None:
    """Any bytes in any envelope field render without raising."""
    raw = b"From: " + value + b"\nSubject: " + value + b"\nDate: " + value + b"\n\nx"
    env = _env(raw)
    assert env.startswith(b"(") and env.endswith(b")")

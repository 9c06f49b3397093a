"""Tests for metadata.rfc822: lenient tokenizing of header values."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from metadata.rfc822 import (
    NUL_REPLACEMENT,
    Tokenizer,
    cstring,
    parse_content_type,
    parse_parameters,
)


@pytest.mark.parametrize(
    ("value", "ctype", "ok"),
    [
        (b"text/plain", b"text/plain", True),
        (b"  Text/HTML ; charset=x", b"Text/HTML", True),
        (b"(comment) multipart/mixed;boundary=b", b"multipart/mixed", True),
        (b"text / plain", b"text/plain", True),
        (b"text", b"text", False),
        (b"text/plain charset=x", b"", False),
        (b"/plain", b"", False),
        (b"text/", b"", False),
        (b"", b"", False),
        (b";;", b"", False),
    ],
)
def test_content_type(value: bytes, ctype: bytes, ok: bool) -> None:
    """type/subtype is read leniently; a broken one yields what survives and ok=False."""
    ct = parse_content_type(Tokenizer(value))
    assert (ct.value, ct.ok) == (ctype, ok)


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        (b'; a=1; B="two words"', [(b"a", b"1"), (b"B", b"two words")]),
        (b'; q="esc\\"aped\\\\"', [(b"q", b'esc"aped\\')]),
        (b'; folded="x\r\n y"', [(b"folded", b"x y")]),
        (b"; empty=", [(b"empty", b"")]),
        (b"; name==?utf-8?b?w6k=?=; x=y", [(b"name", b"=?utf-8?b?w6k=?="), (b"x", b"y")]),
        (b"; junk; ok=1", []),  # after a broken parameter nothing is readable (as in Dovecot)
        (b"; n*0=ab; n*1=cd", [(b"n", b"abcd")]),
        (b"; n*1=cd; n*0=ab", [(b"n", b"abcd")]),
        (b"; n*0*=utf-8''a%20; n*1=b%", [(b"n*", b"utf-8''a%20b%25")]),
        (b"; n*0=a; n*2=c", [(b"n*0", b"a"), (b"n*2", b"c")]),
        (b"; f*=iso-8859-1''%e9", [(b"f*", b"iso-8859-1''%e9")]),
        (b'; nul="a\0b"', [(b"nul", b"a\xef\xbf\xbdb")]),
        (b"; nul=a\0b", [(b"nul", b"a")]),
    ],
)
def test_parameters(params: bytes, expected: list[tuple[bytes, bytes]]) -> None:
    """Parameters: quoted strings unescaped and unfolded (NUL shown as U+FFFD), junk
    skipped, RFC 2231 continuations merged (extended values left encoded)."""
    tok = Tokenizer(b"x/y" + params, nul_replacement=NUL_REPLACEMENT)
    assert parse_content_type(tok).ok
    assert parse_parameters(tok) == expected


def test_comments_kept_for_display_names() -> None:
    """Nested comments with escapes are skipped and the last one kept when asked."""
    tok = Tokenizer(b"(outer (inner) \\) x) rest", keep_comments=True)
    assert tok.skip_lwsp() == 1
    assert tok.last_comment == bytearray(b"outer (inner) ) x")
    assert tok.data[tok.pos :] == b"rest"
    assert Tokenizer(b"(unterminated").skip_lwsp() == -1


def test_phrase_and_domain() -> None:
    """Phrases join words with one space; domains parse as dot-atoms or literals."""
    out = bytearray()
    tok = Tokenizer(b'John  "Q."  Public <')
    assert tok.parse_phrase(out) == 1 and out == b"John Q. Public"
    out = bytearray()
    tok = Tokenizer(b"@ example . com>")
    assert tok.parse_domain(out) == 1 and out == b"example.com"
    out = bytearray()
    tok = Tokenizer(b"@[1.2.3.4]")
    assert tok.parse_domain(out) == 0 and out == b"[1.2.3.4]"


def test_cstring() -> None:
    """cstring cuts at the first NUL."""
    assert cstring(b"ab\0cd") == b"ab" and cstring(b"abc") == b"abc"


@given(st.binary(max_size=200))
def test_junk_never_raises(value: bytes) -> None:
    """Any bytes tokenize without raising."""
    tok = Tokenizer(value)
    parse_content_type(tok)
    parse_parameters(tok)

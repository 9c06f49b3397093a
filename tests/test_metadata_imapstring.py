"""Tests for metadata.imapstring: quoted strings versus literals."""

from __future__ import annotations

import pytest

from metadata.imapstring import literal, nstring, nstring_nolf, string_for_humans


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, b"NIL"),
        (b"", b'""'),
        (b"plain", b'"plain"'),
        (b'a"b\\c', b'"a\\"b\\\\c"'),
        (b'""""', b'"\\"\\"\\"\\""'),
        (b'"""""', b'{5}\r\n"""""'),
        (b"caf\xc3\xa9", b"{5}\r\ncaf\xc3\xa9"),
        (b"two\r\nlines", b"{10}\r\ntwo\r\nlines"),
        (b"cut\0here", b'"cut"'),
    ],
)
def test_nstring(value: bytes | None, expected: bytes) -> None:
    """Quoted unless CR, LF, 8-bit or more than four escapes call for a literal."""
    assert nstring(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"a\r\n b", b'"a b"'),
        (b"a\r\nb", b'"a b"'),
        (b"a\n\tb", b'"a\tb"'),
        (b"a\r\n", b'"a"'),
    ],
)
def test_nstring_nolf(value: bytes, expected: bytes) -> None:
    """Line breaks are dropped, a space kept between words they separated."""
    assert nstring_nolf(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"Hello world", b'"Hello world"'),
        (b"", b'""'),
        (b"   ", b'""'),
        (b" two  spaces ", b"{10}\r\ntwo spaces"),
        (b"tab\there", b"{8}\r\ntab here"),
        (b"fold\r\n here", b"{9}\r\nfold here"),
        (b'say "hi"', b'{8}\r\nsay "hi"'),
        (b"nul\0", b'"nul"'),
        (b"\xe9t\xe9", b"{3}\r\n\xe9t\xe9"),
    ],
)
def test_string_for_humans(value: bytes, expected: bytes) -> None:
    """Display strings collapse and trim whitespace; any change means a literal."""
    assert string_for_humans(value) == expected


def test_literal() -> None:
    """A literal is its length in braces, CRLF, then the bytes."""
    assert literal(b"abc") == b"{3}\r\nabc"

"""Tests for metadata.imapstring: quoted strings versus literals."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

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


# The byte-at-a-time definitions these functions had before they moved to regular
# expressions, kept as the oracle: the cached ENVELOPE bytes must not change.
def _reference_nstring(value: bytes) -> bytes:
    value = value.split(b"\0", 1)[0]
    escapes = 0
    for c in value:
        if c in b'"\\':
            escapes += 1
            if escapes > 4:
                return literal(value)
        elif c in (0x0D, 0x0A) or c >= 0x80:
            return literal(value)
    if escapes:
        value = value.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
    return b'"' + value + b'"'


def _reference_for_humans(value: bytes) -> bytes:
    value = value.split(b"\0", 1)[0]
    out = bytearray()
    last_lwsp = True
    modify = False
    for c in value:
        if c in b" \t\r\n":
            if c != 0x20 or last_lwsp:
                modify = True
            if not last_lwsp:
                out.append(0x20)
            last_lwsp = True
        else:
            if c in b'"\\' or c >= 0x80 or c == 0:
                modify = True
            out.append(0x80 if c == 0 else c)
            last_lwsp = False
    if out and out[-1] == 0x20:
        out.pop()
        modify = True
    if not modify:
        return b'"' + value + b'"'
    if not out:
        return b'""'
    return literal(bytes(out))


@given(st.binary(max_size=40) | st.lists(st.sampled_from(
    [b" ", b"  ", b"\t", b"\r\n", b"a", b"Zz", b'"', b"\\", b"\xc3\xa9", b"\0", b"x y"]),
    max_size=12).map(b"".join))
def test_matches_the_byte_loop_definitions(value: bytes) -> None:
    """nstring and string_for_humans give what the per-byte definitions gave."""
    assert nstring(value) == _reference_nstring(value)
    assert string_for_humans(value) == _reference_for_humans(value)

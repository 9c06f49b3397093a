"""IMAP string encoding for cached FETCH data (RFC 3501 section 4.3).

A value is sent as a quoted string when it can be, otherwise as a literal
(``{n}\\r\\n`` + bytes): CR, LF and 8-bit bytes are not allowed in quoted strings, and
past a few quote/backslash escapes a literal is shorter anyway. The choices follow
Dovecot's ``imap-quote.c`` so that cached ENVELOPE and BODYSTRUCTURE bytes are the
same as a reference server's.

Values are C strings: anything from a NUL on is not sent.
"""

from __future__ import annotations

import re

from metadata.rfc822 import cstring

__all__ = ["QUOTED_MAX_ESCAPES", "literal", "nstring", "nstring_nolf", "string_for_humans"]

#: After this many quote/backslash escapes a literal is preferred to a quoted string.
QUOTED_MAX_ESCAPES = 4

# Byte classes matched by the C regex engine rather than a Python loop per byte: these
# run for every address and subject of every delivered message.
_UNQUOTABLE = re.compile(rb"[\r\n\x80-\xff]")
_NOT_PLAIN = re.compile(rb'["\\\x00\x80-\xff]')
_LWSP_RUN = re.compile(rb"[ \t\r\n]+")


def literal(value: bytes) -> bytes:
    """*value* as an IMAP literal."""
    return b"{%d}\r\n" % len(value) + value


def nstring(value: bytes | None) -> bytes:
    """``NIL``, a quoted string, or a literal."""
    if value is None:
        return b"NIL"
    value = cstring(value)
    escapes = value.count(b'"') + value.count(b"\\")
    if escapes > QUOTED_MAX_ESCAPES or _UNQUOTABLE.search(value) is not None:
        return literal(value)
    if escapes:
        value = value.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
    return b'"' + value + b'"'


def nstring_nolf(value: bytes | None) -> bytes:
    """Like :func:`nstring`, with line breaks dropped (a space keeps words apart)."""
    if value is None:
        return b"NIL"
    value = cstring(value)
    if b"\r" not in value and b"\n" not in value:
        return nstring(value)
    out = bytearray()
    n = len(value)
    for i, c in enumerate(value):
        if c not in (0x0D, 0x0A):
            out.append(c)
        elif i + 1 < n and value[i + 1] not in b" \t\r\n":
            out.append(0x20)
    return nstring(bytes(out))


def string_for_humans(value: bytes) -> bytes:
    """A display string: whitespace runs collapsed to one space and trimmed, NUL shown
    as 0x80; sent quoted when nothing had to change, else as a literal."""
    value = cstring(value)
    # Runs of whitespace become one space, none at either end.
    out = _LWSP_RUN.sub(b" ", value).strip(b" ")
    if out == value and _NOT_PLAIN.search(value) is None:
        return b'"' + value + b'"'
    if not out:
        return b'""'
    return literal(out.replace(b"\0", b"\x80"))

"""IMAP string encoding for cached FETCH data (RFC 3501 section 4.3).

A value is sent as a quoted string when it can be, otherwise as a literal
(``{n}\\r\\n`` + bytes): CR, LF and 8-bit bytes are not allowed in quoted strings, and
past a few quote/backslash escapes a literal is shorter anyway. The choices follow
Dovecot's ``imap-quote.c`` so that cached ENVELOPE and BODYSTRUCTURE bytes are the
same as a reference server's.

Values are C strings: anything from a NUL on is not sent.
"""

from __future__ import annotations

from metadata.rfc822 import cstring

__all__ = ["QUOTED_MAX_ESCAPES", "literal", "nstring", "nstring_nolf", "string_for_humans"]

#: After this many quote/backslash escapes a literal is preferred to a quoted string.
QUOTED_MAX_ESCAPES = 4

_QUOTED_SPECIALS = frozenset(b'"\\')


def literal(value: bytes) -> bytes:
    """*value* as an IMAP literal."""
    return b"{%d}\r\n" % len(value) + value


def nstring(value: bytes | None) -> bytes:
    """``NIL``, a quoted string, or a literal."""
    if value is None:
        return b"NIL"
    value = cstring(value)
    escapes = 0
    for c in value:
        if c in _QUOTED_SPECIALS:
            escapes += 1
            if escapes > QUOTED_MAX_ESCAPES:
                return literal(value)
        elif c in (0x0D, 0x0A) or c >= 0x80:
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
            if c in _QUOTED_SPECIALS or c >= 0x80 or c == 0:
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

"""``BODY[HEADER.FIELDS (...)]`` and ``HEADER.FIELDS.NOT``: a subset of a header block.

The top-level header is stored in PostgreSQL exactly as received (``messages.header_block``),
so the FETCH that every client sends when it opens a folder (``BODY.PEEK[HEADER.FIELDS
(From To Subject Date ...)]``) is answered without reading a blob.  A field is its first
line plus every continuation line (starting with SP or TAB); it is kept or dropped whole,
with its bytes untouched.  The result ends with the blank line that delimits a header
(RFC 3501 6.4.5), whether or not the stored block had one (a message without a body).
Line ends are converted to CRLF by the caller, with the rest of the IMAP view.

Keeping named fields (the common case: a client opening a folder) is one pass of a
regular expression over the block; the field-by-field walk of :func:`split_fields`, a
Python step per header line, is left for ``HEADER.FIELDS.NOT`` and names that are not
plain ftext.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Iterator

__all__ = ["filter_fields", "split_fields"]

#: Names the fast path can look for: printable, no space, no colon (RFC 5322 ftext).
_FTEXT = re.compile(rb"[!-9;-~]+\Z")


def split_fields(block: bytes) -> Iterator[tuple[bytes, bytes]]:
    """``(upper-cased name, raw bytes)`` of each field of ``block``, in order; the blank
    line ending the header is not a field.  A line that is neither a field nor a
    continuation (no colon) is reported with the name ``b""``."""
    pos = 0
    end = len(block)
    current: list[bytes] = []
    name = b""
    while pos < end:
        newline = block.find(b"\n", pos)
        stop = end if newline < 0 else newline + 1
        line = block[pos:stop]
        pos = stop
        if line in (b"\n", b"\r\n"):
            break  # the delimiting blank line
        if line[:1] in (b" ", b"\t") and current:
            current.append(line)
            continue
        if current:
            yield name, b"".join(current)
        colon = line.find(b":")
        name = line[:colon].rstrip(b" \t").upper() if colon > 0 else b""
        current = [line]
    if current:
        yield name, b"".join(current)


@functools.lru_cache(maxsize=128)
def _wanted(names: tuple[str, ...]) -> tuple[frozenset[bytes], re.Pattern[bytes] | None]:
    """The upper-cased names, and a scanner for them when they are all plain ftext.

    The scanner runs over the block behind one extra LF.  At each line start it matches
    either a field with one of the names (group 1: its lines, without the last LF) or the
    blank line that ends the header: exactly the fields :func:`split_fields` yields for
    those names, found in one pass of the regular-expression engine.
    """
    wanted = frozenset(name.upper().encode("ascii", "replace") for name in names)
    if not wanted or not all(_FTEXT.match(name) for name in wanted):
        return wanted, None
    alternatives = b"|".join(re.escape(name) for name in sorted(wanted))
    return wanted, re.compile(rb"\n(?:((?:" + alternatives + rb")[ \t]*:[^\n]*(?:\n[ \t][^\n]*)*)"
                              rb"|\r?\n)", re.IGNORECASE)


def filter_fields(block: bytes, names: Iterable[str], *, exclude: bool = False) -> bytes:
    """The fields of ``block`` named in ``names`` (or, with ``exclude``, all the others),
    followed by a blank line.  Names compare case-insensitively."""
    wanted, scanner = _wanted(tuple(names))
    kept: list[bytes] = []
    if scanner is not None and not exclude:
        text = b"\n" + block
        for found in scanner.finditer(text):
            field = found.group(1)
            if field is None:
                break  # the blank line
            # The field's last line ends where its LF is (or the block ends).
            kept.append(field + (b"\n" if text[found.end():found.end() + 1] else b"\r\n"))
        kept.append(b"\r\n")
        return b"".join(kept)
    for name, raw in split_fields(block):
        if (name in wanted) != exclude:
            if not raw.endswith(b"\n"):
                raw += b"\r\n"  # the last field of a header without a body
            kept.append(raw)
    kept.append(b"\r\n")
    return b"".join(kept)

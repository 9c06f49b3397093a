"""``BODY[HEADER.FIELDS (...)]`` and ``HEADER.FIELDS.NOT``: a subset of a header block.

The top-level header is stored in PostgreSQL exactly as received (``messages.header_block``),
so the FETCH that every client sends when it opens a folder (``BODY.PEEK[HEADER.FIELDS
(From To Subject Date ...)]``) is answered without reading a blob.  A field is its first
line plus every continuation line (starting with SP or TAB); it is kept or dropped whole,
with its bytes untouched.  The result ends with the blank line that delimits a header
(RFC 3501 6.4.5), whether or not the stored block had one (a message without a body).
Line ends are converted to CRLF by the caller, with the rest of the IMAP view.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

__all__ = ["filter_fields", "split_fields"]


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


def filter_fields(block: bytes, names: Iterable[str], *, exclude: bool = False) -> bytes:
    """The fields of ``block`` named in ``names`` (or, with ``exclude``, all the others),
    followed by a blank line.  Names compare case-insensitively."""
    wanted = {name.upper().encode("ascii", "replace") for name in names}
    kept: list[bytes] = []
    for name, raw in split_fields(block):
        if (name in wanted) != exclude:
            if not raw.endswith(b"\n"):
                raw += b"\r\n"  # the last field of a header without a body
            kept.append(raw)
    kept.append(b"\r\n")
    return b"".join(kept)

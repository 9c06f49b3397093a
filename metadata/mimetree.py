"""Byte-level MIME structure of a raw message, as offsets into the bytes received.

Why not the stdlib ``email`` package: it normalises line endings and re-folds headers,
so what it hands back is not what was delivered. The store must serve back exactly
the bytes received, so this parser never copies or rewrites the message: it only
records where things are.

Theory of operation
-------------------
:func:`parse` makes one forward pass over the message with an explicit state machine
(no recursion, so no stack overflow on nesting bombs):

``HEADERS``
    Read header fields line by line until the blank line. A line that is a boundary
    of an enclosing multipart ends the header early (the part then has no body).
``BODY``
    Search forward for the next boundary line of *any* open multipart (innermost
    first, longest prefix wins), jumping from ``b"\\n--"`` to ``b"\\n--"`` with
    :meth:`bytes.find`, so bodies are scanned once, never re-scanned.

A boundary line closes every part nested below its multipart (that is how a missing
close delimiter is survived). The ``[CR]LF`` before ``--boundary`` belongs to the
delimiter, not to the part before it (RFC 2046 5.1.1). After a delimiter comes a new
part; after a close delimiter comes the epilogue. A ``message/rfc822`` body is parsed
as a message of its own, in place.

The boundary and header rules follow Dovecot 2.3's ``message-parser.c`` behaviour
(prefix matching, first Content-Type wins, Content-* ignored without MIME-Version or
Content-Type, digest defaults), so that sizes, line counts and part numbers agree
byte for byte with a reference IMAP server. Limits (:data:`MAX_NESTING`,
:data:`MAX_PARTS`, :data:`MAX_BOUNDARY_LEN`) turn the rest of a hostile message into
an opaque leaf instead of an exception.

Sizes: ``*_vsize`` fields count octets as IMAP sends them, where a bare LF is sent as
CRLF; ``*_lines`` count LFs. Sums over the regions of a part are aggregated bottom-up,
so counting is linear in the message size whatever the depth.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass, field

from metadata.rfc822 import (
    NUL_REPLACEMENT,
    Tokenizer,
    cstring,
    parse_content_type,
    parse_parameters,
)

__all__ = [
    "MAX_BOUNDARY_LEN",
    "MAX_NESTING",
    "MAX_PARTS",
    "HeaderField",
    "MimePart",
    "MimeTree",
    "PartKind",
    "Span",
    "bare_lf_count",
    "iter_parts",
    "parse",
]

#: Containers (multipart, message/rfc822) open only while their depth + 1 is below
#: this; deeper ones are opaque leaves. Same default as Dovecot's max_nested_mime_parts.
MAX_NESTING = 100
#: The part that brings the count (root included) to this is an opaque leaf running
#: to the end of the message. Same default as Dovecot's max_total_mime_parts.
MAX_PARTS = 10_000
#: Boundary parameters are cut to this length (RFC 2046 allows 70); lines still match
#: by prefix, so over-long boundaries keep working.
MAX_BOUNDARY_LEN = 80
# A boundary line with no LF before the end of the message is compared on at most
# this many bytes (boundary + "--" + "--" + slack).
_BOUNDARY_LINE_MAX = MAX_BOUNDARY_LEN + 4

_CR, _LF, _SP, _TAB = 0x0D, 0x0A, 0x20, 0x09


@dataclass(frozen=True, slots=True)
class Span:
    """A byte range ``[start, end)`` of the raw message."""

    start: int
    end: int

    @property
    def length(self) -> int:
        """Number of bytes in the range."""
        return self.end - self.start


@dataclass(frozen=True, slots=True)
class HeaderField:
    """One header field.

    ``value`` is the raw value: whitespace after the colon dropped, continuation lines
    kept with their line breaks (as IMAP servers see it before quoting). ``span``
    covers the field's raw lines, including the final newline.
    """

    name: bytes
    value: bytes
    span: Span


class PartKind(enum.Enum):
    """How a part's body is structured."""

    LEAF = "leaf"
    MULTIPART = "multipart"
    MESSAGE = "message"


@dataclass(frozen=True, slots=True)
class MimePart:
    """One part: its header, body and, for containers, children.

    For a multipart, ``body`` is covered, in order, by ``preamble``, then each
    delimiter line followed by its child part, then ``epilogue``: what follows the
    close delimiter or, without one, the last part (at most a newline that an
    enclosing boundary cut off a child). A delimiter span starts at the ``[CR]LF``
    before ``--boundary`` (or at the ``--`` when nothing precedes it) and ends after
    the line's LF. For a message/rfc822 part, the only child starts the body and
    covers it but for such a cut-off newline.

    :ivar separator: the blank line ending the header, None when there is none.
    :ivar is_mime: Content-* fields count (MIME-Version or Content-Type seen, or a
        part of a multipart).
    :ivar content_type: lowercased ``type/subtype`` the structure was decided on
        (empty without a usable Content-Type).
    :ivar boundary: a multipart's boundary (cut to :data:`MAX_BOUNDARY_LEN`).
    :ivar overflow: a limit made this part an opaque leaf.
    :ivar header_vsize: header octets as IMAP sends them (bare LF counted as CRLF);
        ``body_vsize`` likewise; ``*_lines`` count LFs.
    """

    span: Span
    header: Span
    separator: Span | None
    body: Span
    headers: tuple[HeaderField, ...]
    kind: PartKind
    is_mime: bool
    content_type: bytes
    boundary: bytes | None
    children: tuple[MimePart, ...]
    preamble: Span | None
    delimiters: tuple[Span, ...]
    epilogue: Span | None
    overflow: bool
    depth: int
    header_lines: int
    header_vsize: int
    body_lines: int
    body_vsize: int

    @property
    def vsize(self) -> int:
        """IMAP size of header plus body."""
        return self.header_vsize + self.body_vsize

    def header_values(self, name: bytes) -> list[bytes]:
        """Values of every field called *name* (case-insensitive), in order."""
        lname = name.lower()
        return [h.value for h in self.headers if h.name.lower() == lname]


@dataclass(frozen=True, slots=True)
class MimeTree:
    """The parsed structure of one message."""

    root: MimePart
    size: int
    vsize: int
    has_nuls: bool


def bare_lf_count(raw: bytes, start: int, end: int) -> int:
    """LFs in ``raw[start:end]`` not preceded by CR within the range."""
    return raw.count(b"\n", start, end) - raw.count(b"\r\n", start, end)


def iter_parts(part: MimePart) -> Iterator[MimePart]:
    """Every part of the subtree, in pre-order (document order), without recursion."""
    stack = [part]
    while stack:
        p = stack.pop()
        yield p
        stack.extend(reversed(p.children))


# --- parser ----------------------------------------------------------------------


@dataclass(slots=True)
class _Builder:
    start: int
    depth: int
    parent: _Builder | None
    is_mime: bool
    header_end: int = -1
    separator: Span | None = None
    headers: list[HeaderField] = field(default_factory=list)
    seen_content_type: bool = False
    content_type: bytes = b""
    multipart: bool = False
    rfc822: bool = False
    digest: bool = False
    boundary: bytes | None = None
    opened: bool = False  # boundary pushed / message child started
    overflow: bool = False
    end: int = -1
    children: list[_Builder] = field(default_factory=list)
    delimiters: list[Span] = field(default_factory=list)
    closed: bool = False  # close delimiter seen


@dataclass(slots=True)
class _Bound:
    boundary: bytes
    owner: _Builder


@dataclass(slots=True)
class _Hit:
    index: int
    delim_start: int
    line_end: int
    closing: bool
    has_lf: bool


def _match_boundary_line(raw: bytes, line: int, bounds: list[_Bound]) -> _Hit | None:
    """Is the line at *line* (which starts with ``--``) a boundary of an open multipart?

    Boundaries match by prefix (RFC 2046 allows trailing junk); the innermost one
    wins unless an outer one is longer, and an exact match (``--b`` or ``--b--``)
    ends the search.
    """
    p = line + 2
    lf = raw.find(b"\n", p)
    trailing_dashes = False
    if lf < 0:
        find_size = min(len(raw) - p, _BOUNDARY_LINE_MAX)
        line_end = len(raw)
    else:
        find_size = lf - p
        if find_size > 0 and raw[p + find_size - 1] == _CR:
            find_size -= 1
        trailing_dashes = (
            find_size > 2 and raw[p + find_size - 2] == 0x2D and raw[p + find_size - 1] == 0x2D
        )
        line_end = lf + 1
    best = -1
    best_len = -1
    for i in range(len(bounds) - 1, -1, -1):
        b = bounds[i].boundary
        blen = len(b)
        if blen <= find_size and blen > best_len and raw.startswith(b, p):
            best, best_len = i, blen
            if blen == find_size or (trailing_dashes and blen == find_size - 2):
                break
    if best < 0:
        return None
    closing = raw.startswith(b"--", p + best_len)
    return _Hit(best, line, line_end, closing, lf >= 0)


def _find_boundary(raw: bytes, pos: int, bounds: list[_Bound]) -> _Hit | None:
    """The first boundary line at or after *pos* (a line start), or None."""
    if raw.startswith(b"--", pos):
        hit = _match_boundary_line(raw, pos, bounds)
        if hit is not None:
            return hit
    i = pos
    while True:
        j = raw.find(b"\n--", i)
        if j < 0:
            return None
        hit = _match_boundary_line(raw, j + 1, bounds)
        if hit is not None:
            hit.delim_start = j - 1 if (j > pos and raw[j - 1] == _CR) else j
            return hit
        i = j + 1


def _header_value(raw: bytes, lines: list[tuple[int, int]], value_start: int) -> bytes:
    """A field's value: *lines* are (content start, content end) of its physical lines.

    Whitespace after the colon is dropped (all of it, unless that is all there is);
    continuation lines keep their line breaks, exactly as received.
    """
    first_end = lines[0][1]
    v = value_start
    while v < first_end and raw[v] in (_SP, _TAB):
        v += 1
    if v == first_end and value_start < first_end:
        v = value_start + 1
    return raw[v : lines[-1][1]]


def _apply_field(part: _Builder, name: bytes, value: bytes) -> None:
    lname = name.lower()
    if lname == b"mime-version":
        part.is_mime = True
    elif lname == b"content-type":
        part.is_mime = True
        if part.seen_content_type:
            return
        part.seen_content_type = True
        tok = Tokenizer(value, nul_replacement=NUL_REPLACEMENT)
        ct = parse_content_type(tok)
        value_l = ct.value.lower()
        part.content_type = value_l
        if value_l == b"message/rfc822":
            part.rfc822 = True
        elif value_l.startswith(b"multipart/"):
            part.multipart = True
            part.digest = value_l == b"multipart/digest"
        if not ct.ok or not part.multipart:
            return
        for pname, pvalue in parse_parameters(tok):
            if pname.lower() == b"boundary":
                part.boundary = cstring(pvalue)[:MAX_BOUNDARY_LEN]
                break


def _parse_headers(raw: bytes, part: _Builder, bounds: list[_Bound]) -> _Hit | None:
    """Fill *part*'s header fields; return the boundary hit that cut them short, if any."""
    n = len(raw)
    pos = part.start
    prev_nl = 0
    while True:
        if pos >= n:
            part.header_end = n
            return None
        if bounds and raw.startswith(b"--", pos):
            hit = _match_boundary_line(raw, pos, bounds)
            if hit is not None:
                _cut_header(part, pos - prev_nl, hit, bounds)
                return hit
        c = raw[pos]
        if c == _LF or (c == _CR and pos + 1 < n and raw[pos + 1] == _LF):
            end = pos + (1 if c == _LF else 2)
            part.separator = Span(pos, end)
            part.header_end = end
            return None
        field_start = pos
        lines: list[tuple[int, int]] = []
        while True:
            lf = raw.find(b"\n", pos)
            if lf < 0:
                lines.append((pos, n))
                pos = n
                prev_nl = 0
                break
            cend = lf - 1 if lf > pos and raw[lf - 1] == _CR else lf
            lines.append((pos, cend))
            prev_nl = lf + 1 - cend
            pos = lf + 1
            if pos >= n or raw[pos] not in (_SP, _TAB):
                break
        first_start, first_end = lines[0]
        colon = raw.find(b":", first_start, first_end)
        if colon < 0:
            name = raw[first_start:first_end]
            value = b""
        else:
            name = raw[first_start:colon].rstrip(b" \t")
            value = _header_value(raw, lines, colon + 1)
        part.headers.append(HeaderField(name, value, Span(field_start, pos)))
        _apply_field(part, name, value)


class _Counter:
    """Line and bare-LF counts per region, summed without rescanning nested bytes."""

    __slots__ = ("raw",)

    def __init__(self, raw: bytes) -> None:
        self.raw = raw

    def lines(self, s: int, e: int) -> int:
        return self.raw.count(b"\n", s, e)

    def vsize(self, s: int, e: int) -> int:
        return (e - s) + bare_lf_count(self.raw, s, e)


def parse(
    raw: bytes,
    *,
    max_nesting: int = MAX_NESTING,
    max_parts: int = MAX_PARTS,
) -> MimeTree:
    """Parse *raw* into a :class:`MimeTree`. Never raises on any input."""
    n = len(raw)
    root = _Builder(start=0, depth=0, parent=None, is_mime=False)
    part = root  # the part whose header or body is being read
    parts_count = 1
    bounds: list[_Bound] = []
    pos = 0
    in_headers = True
    while True:
        hit: _Hit | None = None
        if in_headers:
            hit = _parse_headers(raw, part, bounds)
            pos = part.header_end
            # The header's end settles the part's type, even when a boundary cut it.
            opened = _start_body(part, max_nesting)
            if opened and part.multipart:
                bounds.append(_Bound(part.boundary or b"", part))
            if hit is None:
                hit = _boundary_after_blank_line(raw, part, bounds)
            if opened and part.rfc822:
                # message/rfc822: the enclosed message starts right here.
                child = _Builder(
                    start=part.header_end, depth=part.depth + 1, parent=part, is_mime=False
                )
                part.children.append(child)
                part = child
                parts_count += 1
                if parts_count >= max_parts:
                    child.overflow = True  # the rest of the message is its body
                    bounds.clear()
                    hit = None
                if hit is None:
                    continue
                # Cut by a boundary too: the enclosed message is empty.
                child.header_end = child.end = child.start
        if hit is None:
            if not bounds:
                break
            hit = _find_boundary(raw, pos, bounds)
            if hit is None:
                break
        # A boundary line: it ends every part nested below its multipart.
        owner = bounds[hit.index].owner
        while part is not owner:
            if part.end < 0:
                part.end = hit.delim_start
            assert part.parent is not None
            part = part.parent
        if hit.closing:
            del bounds[hit.index :]
            owner.closed = True
        else:
            del bounds[hit.index + 1 :]
        owner.delimiters.append(Span(hit.delim_start, hit.line_end))
        pos = hit.line_end
        if not hit.has_lf:
            break  # a delimiter line cut by the end of the message opens nothing
        if hit.closing:
            in_headers = False  # epilogue of `owner`
            continue
        child = _Builder(start=pos, depth=owner.depth + 1, parent=owner, is_mime=True)
        owner.children.append(child)
        part = child
        in_headers = True
        parts_count += 1
        if parts_count >= max_parts:
            child.overflow = True  # the rest of the message is its body
            bounds.clear()
    # Whatever is still open runs to the end of the message.
    p: _Builder | None = part
    while p is not None:
        if p.end < 0:
            p.end = n
        p = p.parent
    return MimeTree(_freeze(raw, root), n, n + bare_lf_count(raw, 0, n), b"\0" in raw)


def _cut_header(part: _Builder, newline: int, hit: _Hit, bounds: list[_Bound]) -> None:
    """An enclosing boundary line cuts *part*'s header short; *newline* is where the
    newline before that boundary line starts. Like a body's last newline, it belongs
    to the part's parent: to the delimiter when the parent owns the boundary, else to
    the parent's body, after *part* (the delimiter then starts at its ``--``)."""
    part.header_end = newline
    part.separator = None
    if bounds[hit.index].owner is part.parent:
        hit.delim_start = newline
    else:
        part.end = newline


def _boundary_after_blank_line(raw: bytes, part: _Builder, bounds: list[_Bound]) -> _Hit | None:
    """An enclosing boundary right after *part*'s blank line leaves the part empty and
    takes the blank line as the newline before its delimiter."""
    sep = part.separator
    if sep is None or not bounds or not raw.startswith(b"--", sep.end):
        return None
    hit = _match_boundary_line(raw, sep.end, bounds)
    if hit is None or bounds[hit.index].owner is part:
        return None
    _cut_header(part, sep.start, hit, bounds)
    return hit


def _start_body(part: _Builder, max_nesting: int) -> bool:
    """Settle *part*'s type at the end of its header; True if its body has parts."""
    if not part.is_mime:
        # Content-* fields mean nothing without MIME-Version or Content-Type.
        part.multipart = part.rfc822 = part.digest = False
        part.boundary = None
    if not part.seen_content_type or not part.is_mime:
        parent = part.parent
        part.rfc822 = parent is not None and parent.digest
    if part.overflow:
        part.multipart = part.rfc822 = False
        return False
    container = part.rfc822 or (
        part.multipart and part.boundary is not None and part.separator is not None
    )
    if not container:
        return False
    if part.depth + 1 >= max_nesting:
        part.overflow = True
        part.multipart = part.rfc822 = False
        return False
    part.opened = True
    return True


def _freeze(raw: bytes, root: _Builder) -> MimePart:
    """Turn builders into frozen parts, post-order, aggregating counts."""
    counter = _Counter(raw)
    done: dict[int, MimePart] = {}
    stack: list[tuple[_Builder, bool]] = [(root, False)]
    while stack:
        b, expanded = stack.pop()
        if not expanded:
            stack.append((b, True))
            stack.extend((c, False) for c in reversed(b.children))
            continue
        children = tuple(done.pop(id(c)) for c in b.children)
        hs, he, be = b.start, b.header_end, b.end
        header_lines = counter.lines(hs, he)
        header_vsize = counter.vsize(hs, he)
        preamble: Span | None = None
        epilogue: Span | None = None
        if b.opened:
            kind = PartKind.MULTIPART if b.multipart else PartKind.MESSAGE
            # Own bytes (preamble, delimiters, epilogue, a newline left by a cut child)
            # are the gaps between children; children were summed already.
            body_lines = body_vsize = 0
            cur = he
            for c in children:
                body_lines += counter.lines(cur, c.span.start) + c.header_lines + c.body_lines
                body_vsize += counter.vsize(cur, c.span.start) + c.vsize
                cur = c.span.end
            body_lines += counter.lines(cur, be)
            body_vsize += counter.vsize(cur, be)
            if b.multipart:
                preamble = Span(he, b.delimiters[0].start if b.delimiters else be)
                if b.delimiters:
                    tail = max(b.delimiters[-1].end, cur)
                    if b.closed or tail < be:
                        epilogue = Span(tail, be)
        else:
            kind = PartKind.MULTIPART if b.multipart else PartKind.LEAF
            body_lines = counter.lines(he, be)
            body_vsize = counter.vsize(he, be)
        done[id(b)] = MimePart(
            span=Span(hs, be),
            header=Span(hs, he),
            separator=b.separator,
            body=Span(he, be),
            headers=tuple(b.headers),
            kind=kind,
            is_mime=b.is_mime,
            content_type=b.content_type if b.is_mime else b"",
            boundary=b.boundary if kind is PartKind.MULTIPART else None,
            children=children,
            preamble=preamble,
            delimiters=tuple(b.delimiters),
            epilogue=epilogue,
            overflow=b.overflow,
            depth=b.depth,
            header_lines=header_lines,
            header_vsize=header_vsize,
            body_lines=body_lines,
            body_vsize=body_vsize,
        )
    return done[id(root)]

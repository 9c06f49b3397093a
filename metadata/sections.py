"""IMAP body section numbering (RFC 3501 section 6.4.5) as byte ranges.

Delivery computes a :class:`SectionMap` from the parsed message and stores it
(:meth:`SectionMap.to_bytes`); the mailbox server answers ``BODY[section]<partial>``
by :meth:`SectionMap.locate`-ing the section and reading just that range of the stored
message (see :mod:`metadata.splitter`), never re-parsing MIME.

Numbering follows RFC 3501 and, where the RFC leaves room, Dovecot:

* ``""`` is the whole message, ``HEADER``/``TEXT`` its header and body;
* in a multipart, ``n`` is the n-th part; a message that is not multipart has exactly
  one part, ``1``, which is its body;
* inside a message/rfc822 part ``n``, ``n.1`` ... number the encapsulated message's
  parts, and ``n.HEADER``/``n.TEXT`` are its header and body;
* ``n.MIME`` is part n's own MIME header (for a non-multipart top-level message,
  ``1.MIME`` is the message header);
* ``HEADER``/``TEXT`` after a number that is not a message/rfc822 part, and numbers
  that name no part, give ``None`` (the server answers with an empty string).

Ranges are raw byte offsets into the stored message plus ``vsize``, the section's
size in the IMAP view (:func:`imap_view`: bare LF sent as CRLF, NUL as 0x80), which is
what partial fetch offsets count.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from metadata.errors import CorruptMessage, MetadataError
from metadata.mimetree import MimePart, MimeTree, PartKind, iter_parts
from runtime import errors as kinds

__all__ = [
    "PartEntry",
    "SectionError",
    "SectionMap",
    "SectionMapError",
    "SectionRange",
    "imap_view",
    "section_map",
]

_MAGIC = b"OMSM\x01"
_BARE_LF = re.compile(rb"(?<!\r)\n")


class SectionError(MetadataError, kinds.InvalidInput):
    """The section specifier is not valid IMAP syntax (the client's error: BAD)."""


class SectionMapError(CorruptMessage):
    """A stored section map is not one (damaged, or not the message's): corruption, like
    a bad skeleton, never the client's fault."""


def imap_view(data: bytes, *, after_cr: bool = False) -> bytes:
    """*data* as IMAP sends message text: each bare LF as CRLF, NUL as 0x80.

    :param after_cr: whether the byte before *data* in the message was a CR.
    """
    out = _BARE_LF.sub(b"\r\n", data)
    if after_cr and data.startswith(b"\n"):
        out = out[1:]
    return out.replace(b"\0", b"\x80")


@dataclass(frozen=True, slots=True)
class SectionRange:
    """Raw bytes ``[start, end)`` of the message; ``vsize`` octets in the IMAP view."""

    start: int
    end: int
    vsize: int


@dataclass(frozen=True, slots=True)
class PartEntry:
    """What section lookups need to know about one part."""

    start: int
    header_end: int
    end: int
    header_vsize: int
    body_vsize: int
    kind: PartKind
    children: tuple[int, ...]


_KIND_CODE = {PartKind.LEAF: 0, PartKind.MULTIPART: 1, PartKind.MESSAGE: 2}
_CODE_KIND = {v: k for k, v in _KIND_CODE.items()}
_SECTION = re.compile(r"^(?P<num>[0-9]+(?:\.[0-9]+)*)?(?:(?(num)\.)(?P<spec>[A-Za-z.]+))?$")


def _varint(n: int, out: bytearray) -> None:
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        if pos >= len(data):
            raise SectionMapError("truncated section map")
        b = data[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if b < 0x80:
            return n, pos
        shift += 7


@dataclass(frozen=True, slots=True)
class SectionMap:
    """Part table of one message, in document order (entry 0 is the message)."""

    entries: tuple[PartEntry, ...]

    def _find(self, numbers: list[int]) -> int | None:
        # RFC 3501 numbering; see the module docstring.
        idx = 0
        for i, num in enumerate(numbers):
            e = self.entries[idx]
            more = i + 1 < len(numbers)
            if e.kind is PartKind.MULTIPART:
                if not 1 <= num <= len(e.children):
                    return None
                idx = e.children[num - 1]
            elif num != 1 or (more and e.kind is not PartKind.MESSAGE):
                return None
            if more and self.entries[idx].kind is PartKind.MESSAGE:
                idx = self.entries[idx].children[0]
        return idx

    def locate(self, section: str) -> SectionRange | None:
        """The range of ``BODY[section]`` (without HEADER.FIELDS lists), or None if the
        section names no part.

        :raises SectionError: on a malformed section specifier.
        """
        m = _SECTION.match(section)
        if m is None:
            raise SectionError(f"invalid section {section!r}")
        num, spec = m.group("num"), (m.group("spec") or "").upper()
        if spec not in ("", "HEADER", "TEXT", "MIME"):
            # HEADER.FIELDS (...) is answered by filtering the HEADER range.
            raise SectionError(f"not a byte range: {section!r}")
        root = self.entries[0]
        if num is None:
            if spec == "MIME":
                raise SectionError("MIME needs a part number")
            if spec == "HEADER":
                return _header(root)
            if spec == "TEXT":
                return _body(root)
            return SectionRange(root.start, root.end, root.header_vsize + root.body_vsize)
        numbers = [int(x) for x in num.split(".")]
        if 0 in numbers:
            raise SectionError(f"part numbers start at 1: {section!r}")
        idx = self._find(numbers)
        if idx is None:
            return None
        e = self.entries[idx]
        if spec == "":
            return _body(e)
        if spec == "MIME":
            return _header(e)
        if e.kind is not PartKind.MESSAGE:
            return None
        inner = self.entries[e.children[0]]
        return _header(inner) if spec == "HEADER" else _body(inner)

    def sections(self) -> Iterator[tuple[str, SectionRange | None]]:
        """Every section specifier that names something, with its range, for tests and
        precomputation: "", HEADER, TEXT, then each part's number, ``.MIME`` and (for
        message/rfc822 parts) ``.HEADER``/``.TEXT``."""
        for spec in ("", "HEADER", "TEXT"):
            yield spec, self.locate(spec)
        stack: list[tuple[str, int]] = [(p, i) for p, i in reversed(self._numbered(0, ""))]
        while stack:
            path, idx = stack.pop()
            yield path, self.locate(path)
            yield path + ".MIME", self.locate(path + ".MIME")
            if self.entries[idx].kind is PartKind.MESSAGE:
                yield path + ".HEADER", self.locate(path + ".HEADER")
                yield path + ".TEXT", self.locate(path + ".TEXT")
                inner = self.entries[idx].children[0]
                stack.extend(reversed(self._numbered(inner, path + ".")))
            elif self.entries[idx].kind is PartKind.MULTIPART:
                stack.extend(reversed(self._numbered(idx, path + ".")))
            # A leaf's "n.1" is an alias of "n" (RFC 3501 numbering); not listed.

    def _numbered(self, idx: int, prefix: str) -> list[tuple[str, int]]:
        """The numbered parts of the message at *idx*: a multipart's children, or the
        message itself as part 1."""
        e = self.entries[idx]
        if e.kind is PartKind.MULTIPART:
            return [(f"{prefix}{i + 1}", c) for i, c in enumerate(e.children)]
        return [(f"{prefix}1", idx)]

    def to_bytes(self) -> bytes:
        """Compact serialisation (varints), for storing with the message."""
        out = bytearray(_MAGIC)
        _varint(len(self.entries), out)
        for e in self.entries:
            _varint(e.start, out)
            _varint(e.header_end - e.start, out)
            _varint(e.end - e.header_end, out)
            _varint(e.header_vsize, out)
            _varint(e.body_vsize, out)
            out.append(_KIND_CODE[e.kind])
            _varint(len(e.children), out)
            for c in e.children:
                _varint(c, out)
        return bytes(out)

    @classmethod
    def from_bytes(cls, data: bytes) -> SectionMap:
        """Inverse of :meth:`to_bytes`.

        :raises SectionMapError: if *data* is not a section map.
        """
        if not data.startswith(_MAGIC):
            raise SectionMapError("not a section map")
        pos = len(_MAGIC)
        count, pos = _read_varint(data, pos)
        entries: list[PartEntry] = []
        for _ in range(count):
            start, pos = _read_varint(data, pos)
            hlen, pos = _read_varint(data, pos)
            blen, pos = _read_varint(data, pos)
            hv, pos = _read_varint(data, pos)
            bv, pos = _read_varint(data, pos)
            if pos >= len(data) or data[pos] not in _CODE_KIND:
                raise SectionMapError("bad part kind in section map")
            kind = _CODE_KIND[data[pos]]
            pos += 1
            nchild, pos = _read_varint(data, pos)
            children = []
            for _ in range(nchild):
                c, pos = _read_varint(data, pos)
                if not 0 < c < count:
                    raise SectionMapError("bad child index in section map")
                children.append(c)
            if kind is PartKind.MESSAGE and nchild != 1:
                # locate() steps into a message/rfc822 part's one child.
                raise SectionMapError("message part without its message in section map")
            entries.append(
                PartEntry(start, start + hlen, start + hlen + blen, hv, bv, kind, tuple(children))
            )
        if pos != len(data) or not entries:
            raise SectionMapError("malformed section map")
        return cls(tuple(entries))


def _header(e: PartEntry) -> SectionRange:
    return SectionRange(e.start, e.header_end, e.header_vsize)


def _body(e: PartEntry) -> SectionRange:
    return SectionRange(e.header_end, e.end, e.body_vsize)


def section_map(tree: MimeTree | MimePart) -> SectionMap:
    """Build the section map of a parsed message."""
    root = tree.root if isinstance(tree, MimeTree) else tree
    parts = list(iter_parts(root))
    index = {id(p): i for i, p in enumerate(parts)}
    return SectionMap(
        tuple(
            PartEntry(
                start=p.span.start,
                header_end=p.header.end,
                end=p.span.end,
                header_vsize=p.header_vsize,
                body_vsize=p.body_vsize,
                kind=p.kind,
                children=tuple(index[id(c)] for c in p.children),
            )
            for p in parts
        )
    )

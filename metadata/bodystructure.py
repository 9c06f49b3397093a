"""IMAP BODY and BODYSTRUCTURE (RFC 3501 section 7.4.2), computed once at delivery.

:func:`render_body` and :func:`render_bodystructure` return the exact bytes an IMAP
server sends after ``BODY `` / ``BODYSTRUCTURE ``.  Only BODYSTRUCTURE is stored (schema
8): BODY is BODYSTRUCTURE without the extension data, and
:func:`body_from_bodystructure` cuts it out of the stored bytes at FETCH time. Sizes and line counts come from
:mod:`metadata.mimetree` and count octets as IMAP serves them (a bare LF goes out as
CRLF). Field values are taken as received: types keep their case, parameters are not
decoded (an RFC 2231 ``name*`` parameter is reported under its starred name), 8-bit
values go out in literals.

Defaults and repairs follow Dovecot 2.3 so that the cached bytes match a reference
server: no Content-Type means ``"text" "plain" ("charset" "us-ascii")``; Content-*
fields of a message without MIME-Version and Content-Type are ignored; the first
Content-Type, Content-Transfer-Encoding, Content-ID, Content-Description, Content-MD5,
Content-Language and Content-Location win, while a later Content-Disposition replaces
one that had no parameters; a multipart without parts gets one empty text/plain part;
a broken Content-Type is reported as ``"" ""``.
"""

from __future__ import annotations

from dataclasses import dataclass

from metadata.envelope import tree_envelope
from metadata.errors import CorruptMessage
from metadata.imapstring import nstring, nstring_nolf
from metadata.mimetree import MimePart, MimeTree, PartKind
from metadata.rfc822 import NUL_REPLACEMENT, Tokenizer, parse_content_type, parse_parameters

__all__ = [
    "DEFAULT_CHARSET",
    "BodyStructureError",
    "PartData",
    "body_from_bodystructure",
    "part_data",
    "render_body",
    "render_bodystructure",
]

#: Charset assumed for text parts that name none (RFC 2045 5.2).
DEFAULT_CHARSET = b"us-ascii"

_EMPTY_BODY = b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0)'
_EMPTY_BODYSTRUCTURE = b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0 NIL NIL NIL NIL)'


@dataclass(frozen=True, slots=True)
class PartData:
    """What a part's Content-* fields say, unquoted."""

    content_type: bytes | None = None
    content_subtype: bytes | None = None
    params: tuple[tuple[bytes, bytes], ...] = ()
    transfer_encoding: bytes | None = None
    content_id: bytes | None = None
    description: bytes | None = None
    disposition: bytes | None = None
    disposition_params: tuple[tuple[bytes, bytes], ...] = ()
    md5: bytes | None = None
    language: tuple[bytes, ...] = ()
    location: bytes | None = None


def _header_string(value: bytes) -> bytes:
    return value.replace(b"\0", NUL_REPLACEMENT)


def part_data(part: MimePart) -> PartData:
    """Read a part's Content-* fields."""
    if not part.is_mime:
        return PartData()
    d: dict[str, object] = {}
    for h in part.headers:
        lname = h.name.lower()
        if not lname.startswith(b"content-"):
            continue
        key = lname[8:]
        value = h.value
        if key == b"type":
            if "content_type" in d:
                continue
            tok = Tokenizer(value, nul_replacement=NUL_REPLACEMENT)
            ct = parse_content_type(tok)
            d["content_type"] = ct.type
            d["content_subtype"] = ct.subtype
            if ct.ok:
                d["params"] = tuple(parse_parameters(tok))
        elif key == b"transfer-encoding":
            if "transfer_encoding" in d:
                continue
            tok = Tokenizer(value)
            tok.skip_lwsp()
            out = bytearray()
            if tok.parse_mime_token(out) >= 0 and tok.skip_lwsp() == 0 and out:
                d["transfer_encoding"] = bytes(out)
        elif key == b"id":
            d.setdefault("content_id", _header_string(value))
        elif key == b"description":
            d.setdefault("description", _header_string(value))
        elif key == b"md5":
            d.setdefault("md5", _header_string(value))
        elif key == b"location":
            d.setdefault("location", _header_string(value))
        elif key == b"language":
            if "language" in d:
                continue
            tok = Tokenizer(value)
            tok.skip_lwsp()
            langs: list[bytes] = []
            out = bytearray()
            while tok.parse_atom(out) >= 0:
                langs.append(bytes(out))
                out.clear()
                if not tok.at(0x2C):
                    break
                tok.pos += 1
                tok.skip_lwsp()
            if langs:
                d["language"] = tuple(langs)
        elif key == b"disposition":
            # Replaced by a later field as long as it carried no parameters.
            if d.get("disposition_params"):
                continue
            tok = Tokenizer(value, nul_replacement=NUL_REPLACEMENT)
            tok.skip_lwsp()
            out = bytearray()
            if tok.parse_mime_token(out) < 0:
                continue
            d["disposition"] = bytes(out)
            d["disposition_params"] = tuple(parse_parameters(tok))
    return PartData(**d)  # type: ignore[arg-type]


def _params(params: tuple[tuple[bytes, bytes], ...], default_charset: bool) -> bytes:
    if not params and not default_charset:
        return b"NIL"
    items: list[bytes] = []
    seen_charset = False
    for name, value in params:
        if name.lower() == b"charset":
            seen_charset = True
        items.append(nstring(name))
        items.append(nstring(value))
    if default_charset and not seen_charset:
        items.append(b'"charset" "' + DEFAULT_CHARSET + b'"')
    return b"(" + b" ".join(items) + b")"


def _common_extension(d: PartData) -> bytes:
    out = bytearray(b" ")
    if d.disposition is None:
        out += b"NIL"
    else:
        out += b"(" + nstring(d.disposition) + b" " + _params(d.disposition_params, False) + b")"
    out += b" "
    if d.language:
        out += b"(" + b" ".join(nstring(x) for x in d.language) + b")"
    else:
        out += b"NIL"
    out += b" " + nstring_nolf(d.location)
    return bytes(out)


def _write(part: MimePart, extended: bool, out: bytearray) -> None:
    # Parts nest at most mimetree.MAX_NESTING deep, so recursion depth stays bounded.
    d = part_data(part)
    if part.kind is PartKind.MULTIPART:
        if part.children:
            for child in part.children:
                out += b"("
                _write(child, extended, out)
                out += b")"
        else:
            out += _EMPTY_BODYSTRUCTURE if extended else _EMPTY_BODY
        out += b" " + nstring(d.content_subtype or b"")
        if extended:
            out += b" " + _params(d.params, False) + _common_extension(d)
        return
    if part.kind is PartKind.MESSAGE:
        out += b'"message" "rfc822"'
        text = False
    elif d.content_type is None:
        out += b'"text" "plain"'
        text = True
    else:
        text = d.content_type.lower() == b"text"
        out += nstring(d.content_type) + b" " + nstring(d.content_subtype or b"")
    out += b" " + _params(d.params, text)
    out += b" " + nstring_nolf(d.content_id)
    out += b" " + nstring_nolf(d.description)
    out += b" " + (nstring(d.transfer_encoding) if d.transfer_encoding else b'"7bit"')
    out += b" %d" % part.body_vsize
    if text:
        out += b" %d" % part.body_lines
    elif part.kind is PartKind.MESSAGE:
        child = part.children[0]
        out += b" " + tree_envelope(child) + b" ("
        _write(child, extended, out)
        out += b") %d" % part.body_lines
    if extended:
        out += b" " + nstring_nolf(d.md5) + _common_extension(d)


def _is_plain_7bit(part: MimePart) -> bool:
    """A plain us-ascii 7bit text message, with nothing else said about it."""
    if part.kind is not PartKind.LEAF:
        return False
    d = part_data(part)
    if d.content_type is not None and (
        d.content_type.lower() != b"text" or (d.content_subtype or b"").lower() != b"plain"
    ):
        return False
    if d.params and (
        len(d.params) != 1
        or d.params[0][0].lower() != b"charset"
        or d.params[0][1].lower() != DEFAULT_CHARSET
    ):
        return False
    if d.transfer_encoding is not None and d.transfer_encoding.lower() != b"7bit":
        return False
    return (
        d.content_id is None
        and d.description is None
        and d.md5 is None
        and d.disposition is None
        and not d.language
        and d.location is None
    )


def _render(tree: MimeTree | MimePart, extended: bool) -> bytes:
    part = tree.root if isinstance(tree, MimeTree) else tree
    if _is_plain_7bit(part):
        # The canonical spelling: such a message says nothing beyond the defaults, so
        # "US-ASCII"/"7BIT" are written as the defaults are (Dovecot caches these
        # messages as a flag and always answers this way once cached).
        plain = b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" %d %d' % (
            part.body_vsize,
            part.body_lines,
        )
        return plain + (b" NIL NIL NIL NIL)" if extended else b")")
    out = bytearray(b"(")
    _write(part, extended, out)
    out += b")"
    return bytes(out)


def render_bodystructure(tree: MimeTree | MimePart) -> bytes:
    """BODYSTRUCTURE (with extension data), parenthesized, as sent on the wire."""
    return _render(tree, True)


def render_body(tree: MimeTree | MimePart) -> bytes:
    """BODY (no extension data), parenthesized, as sent on the wire."""
    return _render(tree, False)


class BodyStructureError(CorruptMessage):
    """Stored bytes that are not a BODYSTRUCTURE as :func:`render_bodystructure` writes
    it: the row is corrupt, never serve a BODY made from it."""


_SP = 0x20
_LPAREN = 0x28
_RPAREN = 0x29
_DQUOTE = 0x22
_BACKSLASH = 0x5C
_LBRACE = 0x7B


def _skip_item(data: bytes, pos: int) -> int:
    """The position just after the item (list, quoted string, literal, atom) at ``pos``."""
    n = len(data)
    if pos >= n:
        raise BodyStructureError("item expected at the end")
    c = data[pos]
    if c == _LPAREN:
        pos += 1
        first = True
        while True:
            if pos >= n:
                raise BodyStructureError("unclosed list")
            if data[pos] == _RPAREN:
                return pos + 1
            if data[pos] == _SP:
                if first:
                    raise BodyStructureError(f"space after ( at {pos}")
                pos += 1
            # Lists follow each other without a space (an envelope's addresses).
            first = False
            pos = _skip_item(data, pos)
    if c == _DQUOTE:
        pos += 1
        while True:
            # The next quote ends the string unless an odd run of backslashes escapes it.
            quote = data.find(b'"', pos)
            if quote < 0:
                raise BodyStructureError("unclosed quoted string")
            k = quote - 1
            while k >= pos and data[k] == _BACKSLASH:
                k -= 1
            if (quote - 1 - k) % 2 == 0:
                return quote + 1
            pos = quote + 1
    if c == _LBRACE:
        close = data.find(b"}\r\n", pos)
        if close < 0:
            raise BodyStructureError("bad literal")
        length = int(data[pos + 1:close])
        end = close + 3 + length
        if end > n:
            raise BodyStructureError("literal runs past the end")
        return end
    start = pos
    while pos < n and data[pos] != _SP and data[pos] != _RPAREN and data[pos] != _LPAREN:
        pos += 1
    if pos == start:
        raise BodyStructureError(f"unexpected byte {c} at {start}")
    return pos


def _is_digit(data: bytes, pos: int) -> bool:
    return pos < len(data) and 0x30 <= data[pos] <= 0x39


def _strip(data: bytes, pos: int, out: bytearray) -> int:
    """Copy the body at ``pos`` (a list) without its extension data; return the position
    after it."""
    n = len(data)
    if pos >= n or data[pos] != _LPAREN:
        raise BodyStructureError("body list expected")
    out.append(_LPAREN)
    pos += 1
    if pos < n and data[pos] == _LPAREN:
        # body-type-mpart: 1*body SP media-subtype [SP body-ext-mpart]
        while pos < n and data[pos] == _LPAREN:
            pos = _strip(data, pos, out)
        start = pos
        if pos >= n or data[pos] != _SP:
            raise BodyStructureError("multipart subtype expected")
        pos = _skip_item(data, pos + 1)
        out += data[start:pos]
    else:
        # body-fields: type, subtype, parameters, id, description, encoding, octets
        start = pos
        for i in range(7):
            if i:
                if pos >= n or data[pos] != _SP:
                    raise BodyStructureError("body field expected")
                pos += 1
            pos = _skip_item(data, pos)
        out += data[start:pos]
        if pos + 1 < n and data[pos] == _SP and _is_digit(data, pos + 1):
            # body-type-text: SP body-fld-lines (body-fld-md5 is never a number)
            start = pos
            pos = _skip_item(data, pos + 1)
            out += data[start:pos]
        elif pos + 1 < n and data[pos] == _SP and data[pos + 1] == _LPAREN:
            # body-type-msg: SP envelope SP body SP body-fld-lines (the md5 is an nstring)
            start = pos
            pos = _skip_item(data, pos + 1)
            out += data[start:pos]
            if pos >= n or data[pos] != _SP:
                raise BodyStructureError("message body expected")
            out.append(_SP)
            pos = _strip(data, pos + 1, out)
            if pos >= n or data[pos] != _SP or not _is_digit(data, pos + 1):
                raise BodyStructureError("message line count expected")
            start = pos
            pos = _skip_item(data, pos + 1)
            out += data[start:pos]
    # The extension data, up to the list's end.
    while True:
        if pos >= n:
            raise BodyStructureError("unclosed body")
        if data[pos] == _RPAREN:
            out.append(_RPAREN)
            return pos + 1
        if data[pos] != _SP:
            raise BodyStructureError(f"unexpected byte {data[pos]} at {pos}")
        pos = _skip_item(data, pos + 1)


def body_from_bodystructure(bodystructure: bytes) -> bytes:
    """BODY from the bytes :func:`render_bodystructure` wrote: the same lists, each cut
    after its basic fields (RFC 3501 7.4.2: BODY is "the same as BODYSTRUCTURE except
    that extension data is not returned").  Equal to :func:`render_body` of the same
    tree, which tests check over the whole corpus.

    :raises BodyStructureError: ``bodystructure`` is not such bytes.
    """
    out = bytearray()
    end = _strip(bodystructure, 0, out)
    if end != len(bodystructure):
        raise BodyStructureError("bytes after the body")
    return bytes(out)

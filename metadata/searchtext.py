"""Text for full-text search: decoded header fields and decoded text parts.

Delivery feeds this to PostgreSQL (``to_tsvector``), once. Everything is decoded as
well as it reasonably can be and nothing raises: RFC 2047 encoded words in headers,
Content-Transfer-Encoding (base64, quoted-printable) and charsets in bodies, HTML
reduced to its text. Unknown or lying charsets fall back to UTF-8, then Latin-1,
with replacement characters rather than errors. Output is bounded
(:data:`MAX_TEXT_CHARS` of body text, :data:`MAX_FIELD_CHARS` per header field) and
free of NUL characters, which PostgreSQL text cannot hold.
"""

from __future__ import annotations

import binascii
import codecs
import datetime as dt
import email.utils
import html
import re
from collections.abc import Iterator
from dataclasses import dataclass

from metadata.bodystructure import part_data
from metadata.envelope import parse_addresses
from metadata.mimetree import MimePart, MimeTree, PartKind, iter_parts, parse

__all__ = [
    "MAX_FIELD_CHARS",
    "MAX_PART_BYTES",
    "MAX_TEXT_CHARS",
    "SearchText",
    "decode_header",
    "html_to_text",
    "search_text",
]

#: Body text kept per message (characters); the rest is not indexed.
MAX_TEXT_CHARS = 256 * 1024
#: Characters kept per header field.
MAX_FIELD_CHARS = 4096
#: Raw bytes of one text part looked at; a huge part is indexed by its beginning.
MAX_PART_BYTES = 4 * MAX_TEXT_CHARS

_ENCODED_WORD = re.compile(rb"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")
_BETWEEN_WORDS = re.compile(rb"\?=[ \t\r\n]+=\?")
_FOLD = re.compile(rb"\r?\n[ \t]")
_HTML_DROP = re.compile(r"<(script|style|head)\b.*?</\1\s*>|<!--.*?-->", re.I | re.S)
_HTML_BREAK = re.compile(r"<(?:br|p|div|tr|li|h[1-6]|table|blockquote)\b[^>]*>", re.I)
_HTML_TAG = re.compile(r"<[^>]*>")
_SPACES = re.compile(r"[ \t\f\v]+")
_FOLD_KEEP = re.compile(rb"\r?\n(?=[ \t])")
_FOLD_DROP = re.compile(rb"\r?\n[ \t]+")
_BOUNDARY_PARAM = re.compile(rb'(?i)[;\s]boundary\s*=\s*(?:"([^"]*)"|([^\s;"]+))')
_BLANK_LINES = re.compile(r"\n\s*\n+")


@dataclass(frozen=True, slots=True)
class SearchText:
    """What SEARCH needs about one message, decoded."""

    subject: str
    from_: str
    to: str
    cc: str
    bcc: str
    body: str
    message_id: str = ""
    #: The Date field, timezone-aware (UTC when it names no zone), or None.
    sent_at: dt.datetime | None = None
    #: Every top-level header field as (name, decoded value), in order (SEARCH HEADER).
    headers: tuple[tuple[str, str], ...] = ()


def _codec(charset: bytes | str | None) -> str:
    """A Python codec name for a MIME charset, falling back to UTF-8."""
    if isinstance(charset, bytes):
        charset = charset.decode("ascii", "replace")
    name = (charset or "").strip().strip('"').split("*", 1)[0]  # RFC 2231 language tag
    if not name:
        return "utf-8"
    try:
        info = codecs.lookup(name)
    except LookupError:
        return "utf-8"
    # us-ascii text is routinely 8-bit in practice; UTF-8 is a superset.
    return "utf-8" if info.name == "ascii" else info.name


def _to_str(data: bytes, charset: bytes | str | None = None) -> str:
    # No charset (every header field) needs no codec lookup.
    codec = "utf-8" if charset is None else _codec(charset)
    try:
        text = data.decode(codec)
    except (UnicodeDecodeError, LookupError):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = data.decode("latin-1")
    except Exception:  # a broken codec (an odd CJK one) must not stop delivery
        text = data.decode("utf-8", "replace")
    return text.replace("\0", "")


def _decode_word(match: re.Match[bytes]) -> bytes:
    charset, enc, text = match.group(1), match.group(2).upper(), match.group(3)
    try:
        if enc == b"B":
            data = binascii.a2b_base64(text + b"=" * (-len(text) % 4))
        else:
            data = binascii.a2b_qp(text.replace(b"_", b" "))
    except binascii.Error:
        return match.group(0)
    # Re-encode as UTF-8 so the whole field can be decoded once.
    return _to_str(data, charset).encode("utf-8", "surrogatepass")


def decode_header(value: bytes) -> str:
    """Unfold a header value and decode RFC 2047 encoded words in it."""
    value = _FOLD.sub(b" ", value)
    if b"=?" in value:
        value = _BETWEEN_WORDS.sub(b"?==?", value)
        value = _ENCODED_WORD.sub(_decode_word, value)
    return _to_str(value)[:MAX_FIELD_CHARS].strip()


def html_to_text(markup: str) -> str:
    """Cheap HTML to text: drop scripts, styles and comments, tags become spaces or
    line breaks, entities are decoded."""
    markup = _HTML_DROP.sub(" ", markup)
    markup = _HTML_BREAK.sub("\n", markup)
    markup = _HTML_TAG.sub(" ", markup)
    return html.unescape(markup)


def _tidy(text: str) -> str:
    text = _SPACES.sub(" ", text.replace("\r\n", "\n").replace("\r", "\n"))
    return _BLANK_LINES.sub("\n\n", text).strip()


def _part_text(raw: bytes, part: MimePart) -> str | None:
    """Decoded text of a text/* leaf, or None for other parts."""
    if part.kind is not PartKind.LEAF or part.overflow:
        return None
    d = part_data(part)
    ctype = (d.content_type or b"text").lower()
    subtype = (d.content_subtype or b"").lower()
    if ctype != b"text":
        return None
    charset = next((v for k, v in d.params if k.lower() == b"charset"), None)
    body = raw[part.body.start : min(part.body.end, part.body.start + MAX_PART_BYTES)]
    cte = (d.transfer_encoding or b"").lower()
    try:
        if cte == b"base64":
            body = binascii.a2b_base64(re.sub(rb"[^A-Za-z0-9+/]", b"", body) + b"==")
        elif cte == b"quoted-printable":
            body = binascii.a2b_qp(body)
    except binascii.Error:
        pass  # index what was sent
    text = _to_str(body, charset)
    if subtype == b"html":
        text = html_to_text(text)
    return _tidy(text)


def _field(part: MimePart, name: bytes) -> str:
    return ", ".join(decode_header(v) for v in part.header_values(name))[:MAX_FIELD_CHARS]


def _address_field(part: MimePart, name: bytes) -> str:
    """The decoded field, then its addresses as the ENVELOPE reads them (comments and
    folding whitespace gone): ``<user (c)@ (c) example.org>`` is also found as
    ``user@example.org``."""
    text = _field(part, name)
    found = []
    for value in part.header_values(name):
        for addr in parse_addresses(value):
            if addr.mailbox is None or addr.domain is None:
                continue  # a group marker
            spec = _to_str(addr.mailbox + b"@" + addr.domain)
            found.append(f"{decode_header(addr.name)} <{spec}>" if addr.name else spec)
    normalized = ", ".join(found)
    if normalized and normalized != text:
        text = f"{text}\n{normalized}"
    return text[: 2 * MAX_FIELD_CHARS]


def _sent_at(part: MimePart) -> dt.datetime | None:
    """The Date field, or None when it does not parse or names an instant the store cannot
    hold (a year outside 1..9999 once in UTC, e.g. ``31 Dec 9999 23:59:59 -1200``)."""
    values = part.header_values(b"date")
    if not values:
        return None
    try:
        when = email.utils.parsedate_to_datetime(decode_header(values[-1]))
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        when.astimezone(dt.UTC)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return when


def _lenient_boundaries(part: MimePart) -> list[bytes]:
    """Boundaries a multipart's Content-Type may mean that the strict reading (which must
    match Dovecot's BODYSTRUCTURE) missed: a parameter after ``;;``, or a value folded
    across lines, unfolded as RFC 5322 says and with the line break's whitespace gone."""
    values = part.header_values(b"content-type")
    if not values:
        return []
    found: list[bytes] = []
    for text in (_FOLD_KEEP.sub(b"", values[0]), _FOLD_DROP.sub(b"", values[0])):
        match = _BOUNDARY_PARAM.search(text)
        if match is not None:
            value = match.group(1) if match.group(1) is not None else match.group(2)
            if value and value not in found:
                found.append(value)
    return found


def _multipart_text(raw: bytes, part: MimePart) -> list[str] | None:
    """The text of a multipart whose delimiters the strict reading did not find, read
    again with a boundary found leniently; None when that finds nothing either."""
    body = raw[part.body.start : part.body.end]
    for boundary in _lenient_boundaries(part):
        if b"--" + boundary not in body:
            continue
        synthetic = b'Content-Type: multipart/mixed; boundary="' + boundary + b'"\r\n\r\n' + body
        tree = parse(synthetic)
        if not tree.root.delimiters:
            continue
        texts = [_part_text(synthetic, p) for p in iter_parts(tree.root)]
        return [t for t in texts if t]
    return None


def _texts(raw: bytes, root: MimePart) -> Iterator[str]:
    """The decoded text of every text part, in document order."""
    stack = [root]
    while stack:
        part = stack.pop()
        if part.kind is PartKind.MULTIPART and not part.delimiters:
            recovered = _multipart_text(raw, part)
            if recovered is not None:
                yield from recovered
                continue
        text = _part_text(raw, part)
        if text:
            yield text
        stack.extend(reversed(part.children))


def search_text(raw: bytes, tree: MimeTree | None = None) -> SearchText:
    """Decoded header fields and body text of *raw* (parsed again unless *tree* is
    given)."""
    if tree is None:
        tree = parse(raw)
    root = tree.root
    chunks: list[str] = []
    size = 0
    for text in _texts(raw, root):
        if size >= MAX_TEXT_CHARS:
            break
        chunks.append(text[: MAX_TEXT_CHARS - size])
        size += len(chunks[-1])
    return SearchText(
        subject=_field(root, b"subject"),
        from_=_address_field(root, b"from"),
        to=_address_field(root, b"to"),
        cc=_address_field(root, b"cc"),
        bcc=_address_field(root, b"bcc"),
        body="\n\n".join(chunks),
        message_id=_field(root, b"message-id"),
        sent_at=_sent_at(root),
        headers=tuple(
            (_to_str(h.name)[:MAX_FIELD_CHARS], decode_header(h.value)) for h in root.headers
        ),
    )

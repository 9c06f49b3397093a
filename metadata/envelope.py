"""IMAP ENVELOPE (RFC 3501 section 7.4.2), computed once at delivery.

The envelope is rendered to the exact bytes an IMAP server sends after ``ENVELOPE ``,
so the mailbox server never parses headers at FETCH time. Header values are kept as
received: RFC 2047 encoded words stay encoded (clients decode them), 8-bit bytes go
out in literals. Address parsing is lenient the way Dovecot's is, including its
placeholders for what a broken address lacks (``MISSING_MAILBOX``,
``MISSING_DOMAIN``, ``SYNTAX_ERROR``, ``INVALID_ROUTE``), so that the cached bytes
match a reference server's.

Rules worth knowing: Date, Subject, In-Reply-To and Message-ID take the *last* such
field; address fields accumulate over repeated fields; Sender and Reply-To fall back
to From when absent or empty (RFC 3501); groups are ``(NIL NIL "name" NIL)`` ...
``(NIL NIL NIL NIL)``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from metadata.imapstring import nstring, nstring_nolf, string_for_humans
from metadata.mimetree import HeaderField, MimePart, MimeTree
from metadata.rfc822 import NUL_REPLACEMENT, Tokenizer

__all__ = [
    "Address",
    "Envelope",
    "envelope_of",
    "parse_addresses",
    "render_envelope",
    "tree_envelope",
]


@dataclass(frozen=True, slots=True)
class Address:
    """One IMAP address; a group start has only ``mailbox`` (the group name) and a
    group end has nothing."""

    name: bytes | None
    route: bytes | None
    mailbox: bytes | None
    domain: bytes | None


@dataclass(frozen=True, slots=True)
class Envelope:
    """The ten ENVELOPE fields, raw (unquoted) values."""

    date: bytes | None = None
    subject: bytes | None = None
    from_: tuple[Address, ...] = ()
    sender: tuple[Address, ...] = ()
    reply_to: tuple[Address, ...] = ()
    to: tuple[Address, ...] = ()
    cc: tuple[Address, ...] = ()
    bcc: tuple[Address, ...] = ()
    in_reply_to: bytes | None = None
    message_id: bytes | None = None


# --- address parsing ---------------------------------------------------------------


class _AddressParser:
    """RFC 5322 address-list parsing that always produces something."""

    __slots__ = ("addr", "out", "tok")

    def __init__(self, value: bytes) -> None:
        self.tok = Tokenizer(value, keep_comments=True, nul_replacement=NUL_REPLACEMENT)
        self.out: list[Address] = []
        self.addr: dict[str, bytes | None] = {}

    def _add(self) -> None:
        a = self.addr
        self.out.append(Address(a.get("name"), a.get("route"), a.get("mailbox"), a.get("domain")))
        self.addr = {}

    def _add_fixed(self) -> None:
        if self.addr.get("mailbox") is None:
            self.addr["mailbox"] = b"MISSING_MAILBOX"
        if not self.addr.get("domain"):
            self.addr["domain"] = b"MISSING_DOMAIN"
        self._add()

    def _nonstrict_dot_atom(self, out: bytearray) -> int:
        tok = self.tok
        ret = -1
        while True:
            while tok.at(0x2E):
                out.append(0x2E)
                tok.pos += 1
                if tok.pos == tok.end:
                    return 0
                ret = 1
            if tok.at(0x40):
                break
            ret = tok.parse_atom(out)
            if not (ret > 0 and tok.at(0x2E)):
                break
        return ret

    def _local_part(self, out: bytearray) -> int:
        out.clear()
        if self.tok.at(0x22):
            ret = self.tok.parse_quoted_string(out)
        else:
            ret = self._nonstrict_dot_atom(out)
        if ret < 0:
            return -1
        self.addr["mailbox"] = bytes(out)
        return ret

    def _domain(self) -> int:
        out = bytearray()
        ret = self.tok.parse_domain(out)
        if ret < 0:
            return -1
        self.addr["domain"] = bytes(out)
        return ret

    def _domain_list(self) -> int:
        tok = self.tok
        out = bytearray()
        while True:
            if tok.pos >= tok.end:
                return 0
            if not tok.at(0x40):
                break
            if out:
                out.append(0x2C)
            out.append(0x40)
            ret = tok.parse_domain(out)
            if ret <= 0:
                return ret
            while tok.skip_lwsp() > 0 and tok.at(0x2C):
                tok.pos += 1
        self.addr["route"] = bytes(out)
        return 1

    def _angle_addr(self) -> int:
        tok = self.tok
        tok.pos += 1  # "<"
        if tok.skip_lwsp() <= 0:
            return -1
        if tok.at(0x40):
            if self._domain_list() > 0 and tok.at(0x3A):
                tok.pos += 1
            else:
                self.addr["route"] = b"INVALID_ROUTE"
                if tok.pos >= tok.end:
                    return -1
            if tok.skip_lwsp() <= 0:
                return -1
        if not tok.at(0x3E):
            if self._local_part(bytearray()) <= 0:
                return -1
            if tok.at(0x40) and self._domain() <= 0:
                return -1
        if not tok.at(0x3E):
            return -1
        tok.pos += 1
        return tok.skip_lwsp()

    def _name_addr(self) -> int:
        tok = self.tok
        out = bytearray()
        if tok.parse_phrase(out) <= 0 or not tok.at(0x3C):
            return -1
        self.addr["name"] = bytes(out) or None
        if self._angle_addr() < 0:
            self.addr["domain"] = b"SYNTAX_ERROR"
        return 1 if tok.pos < tok.end else 0

    def _addr_spec(self) -> tuple[int, bool]:
        """``(ret, invalid)`` for a bare ``local@domain`` (or what is left of one)."""
        tok = self.tok
        assert tok.last_comment is not None
        tok.last_comment.clear()
        quoted = tok.at(0x22)
        out = bytearray()
        ret = self._local_part(out)
        invalid = ret <= 0
        ret2 = -2
        if ret != 0 and tok.at(0x40):
            ret2 = self._domain()
            if ret2 <= 0:
                ret = ret2
        if tok.last_comment:
            self.addr["name"] = bytes(tok.last_comment)
        elif ret2 == -2:
            # No "@domain": what follows may be the rest of a display name.
            out.append(0x20)
            mark = len(out)
            tok.parse_phrase(out)
            if len(out) != mark:
                self.addr["mailbox"] = None
                self.addr["name"] = bytes(out)
            elif not quoted:
                self.addr["domain"] = b""
            invalid = True
            ret = -1
        return ret, invalid

    def _mailbox(self) -> int:
        start = self.tok.pos
        ret = self._name_addr()
        if ret < 0:
            self.tok.pos = start
            self.addr = {}
            ret, invalid = self._addr_spec()
            a = self.addr
            if (
                invalid
                and a.get("name") is None
                and a.get("mailbox") is not None
                and a.get("domain") is None
            ):
                a["name"], a["mailbox"] = a["mailbox"], None
        self._add_fixed()
        return ret

    def _group(self) -> int:
        tok = self.tok
        out = bytearray()
        if tok.parse_phrase(out) <= 0 or not tok.at(0x3A):
            return -1
        tok.pos += 1
        ret = tok.skip_lwsp()
        self.addr = {"mailbox": bytes(out)}
        self._add()
        if ret > 0 and not tok.at(0x3B):
            while True:
                self._mailbox()
                if not tok.at(0x2C):
                    break
                tok.pos += 1
                if tok.skip_lwsp() <= 0:
                    ret = -1
                    break
        if ret >= 0:
            if not tok.at(0x3B):
                ret = -1
            else:
                tok.pos += 1
                ret = tok.skip_lwsp()
        self._add()
        return 0 if ret == 0 else 1

    def _address(self) -> int:
        start = self.tok.pos
        saved = len(self.out)
        ret = self._group()
        if ret < 0:
            del self.out[saved:]
            self.tok.pos = start
            self.addr = {}
            ret = self._mailbox()
        return ret

    def parse(self) -> list[Address]:
        tok = self.tok
        if tok.skip_lwsp() <= 0:
            return []
        while True:
            if self._address() == 0:
                break
            if not tok.at(0x2C):
                break
            tok.pos += 1
            ret = tok.skip_lwsp()
            if ret <= 0:
                if ret < 0:
                    self._add_fixed()
                break
        return self.out


def parse_addresses(value: bytes) -> tuple[Address, ...]:
    """Parse an address-list header value; junk yields placeholder addresses."""
    return tuple(_AddressParser(value).parse())


# --- envelope ----------------------------------------------------------------------

_STRING_FIELDS = {
    b"date": "date",
    b"subject": "subject",
    b"in-reply-to": "in_reply_to",
    b"message-id": "message_id",
}
_ADDRESS_FIELDS = {
    b"from": "from_",
    b"sender": "sender",
    b"reply-to": "reply_to",
    b"to": "to",
    b"cc": "cc",
    b"bcc": "bcc",
}


def envelope_of(headers: Iterable[HeaderField]) -> Envelope:
    """Collect the ENVELOPE fields from a message's header fields."""
    strings: dict[str, bytes] = {}
    addresses: dict[str, list[Address]] = {}
    for h in headers:
        lname = h.name.lower()
        attr = _STRING_FIELDS.get(lname)
        if attr is not None:
            strings[attr] = h.value.replace(b"\0", NUL_REPLACEMENT)
            continue
        attr = _ADDRESS_FIELDS.get(lname)
        if attr is not None:
            addresses.setdefault(attr, []).extend(parse_addresses(h.value))
    return Envelope(
        **strings,  # type: ignore[arg-type]
        **{k: tuple(v) for k, v in addresses.items()},  # type: ignore[arg-type]
    )


def _render_addresses(addrs: tuple[Address, ...]) -> bytes:
    if not addrs:
        return b"NIL"
    out = bytearray(b"(")
    for a in addrs:
        out += b"("
        out += b"NIL" if a.name is None else string_for_humans(a.name)
        out += b" " + nstring(a.route) + b" " + nstring(a.mailbox) + b" " + nstring(a.domain)
        out += b")"
    out += b")"
    return bytes(out)


def render_envelope(env: Envelope) -> bytes:
    """The parenthesized ENVELOPE as sent on the wire."""
    from_ = env.from_
    parts = [
        nstring_nolf(env.date),
        b"NIL" if env.subject is None else string_for_humans(env.subject),
        _render_addresses(from_),
        _render_addresses(env.sender or from_),
        _render_addresses(env.reply_to or from_),
        _render_addresses(env.to),
        _render_addresses(env.cc),
        _render_addresses(env.bcc),
        nstring_nolf(env.in_reply_to),
        nstring_nolf(env.message_id),
    ]
    return b"(" + b" ".join(parts) + b")"


def tree_envelope(tree: MimeTree | MimePart) -> bytes:
    """ENVELOPE bytes of a parsed message (or of the message a part holds)."""
    part = tree.root if isinstance(tree, MimeTree) else tree
    return render_envelope(envelope_of(part.headers))

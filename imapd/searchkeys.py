"""SEARCH criteria (RFC 3501 6.4.4 and 9, RFC 7162 MODSEQ) as a small AST.

The grammar has ~40 keys, but many are spellings of the same test; parsing folds them into a
dozen node types so the code that turns a search into SQL has few cases:

* the flag keys become :class:`Flag`, the ``UN*`` keys ``Not(Flag(...))``; ``NEW`` is
  ``And(Flag(\\Recent), Not(Flag(\\Seen)))`` and ``OLD`` is ``Not(Flag(\\Recent))``;
* ``FROM``/``TO``/``CC``/``BCC``/``SUBJECT`` become :class:`Header` like ``HEADER``;
* date keys become :class:`Date`, ``LARGER``/``SMALLER`` :class:`Size`;
* a parenthesised list or several keys in a row become :class:`And`.

Strings are decoded with the command's CHARSET. :func:`render` writes a key back in IMAP
syntax (logs and tests).
"""

from __future__ import annotations

import codecs
import datetime as dt
import enum
from collections.abc import Iterator
from dataclasses import dataclass

from imapd import datetimes
from imapd.lexer import Frame, Lexer, ParseError, is_atom
from imapd.sequence import SequenceSet

__all__ = [
    "All",
    "And",
    "Body",
    "Date",
    "DateField",
    "DateOp",
    "Flag",
    "Header",
    "ModSeq",
    "Not",
    "Or",
    "SearchKey",
    "SeqNumbers",
    "Size",
    "SizeOp",
    "Text",
    "Uid",
    "UnknownCharset",
    "parse",
    "parse_search_keys",
    "render",
    "uses_modseq",
    "walk",
]


class UnknownCharset(ParseError):
    """The SEARCH CHARSET is not one we can decode (answered NO [BADCHARSET])."""


class SearchKey:
    """Base of every search node."""

    __slots__ = ()


@dataclass(frozen=True)
class All(SearchKey):
    """Every message."""


@dataclass(frozen=True)
class Flag(SearchKey):
    """Messages with ``name`` set: a system flag in canonical case (``\\Recent`` included) or
    a keyword as written."""

    name: str


@dataclass(frozen=True)
class Not(SearchKey):
    """Messages that do not match ``key``."""

    key: SearchKey


@dataclass(frozen=True)
class Or(SearchKey):
    """Messages that match ``left`` or ``right``."""

    left: SearchKey
    right: SearchKey


@dataclass(frozen=True)
class And(SearchKey):
    """Messages that match every key (at least two)."""

    keys: tuple[SearchKey, ...]


@dataclass(frozen=True)
class Header(SearchKey):
    """Messages with a header ``name`` (upper-case) containing ``value`` (case-insensitive
    substring). An empty ``value`` matches every message that has the header."""

    name: str
    value: str


@dataclass(frozen=True)
class Body(SearchKey):
    """Messages whose body contains ``value``."""

    value: str


@dataclass(frozen=True)
class Text(SearchKey):
    """Messages whose header or body contains ``value``."""

    value: str


class DateField(enum.Enum):
    """Which date a :class:`Date` compares."""

    INTERNAL = "INTERNAL"
    """The INTERNALDATE (BEFORE, ON, SINCE)."""
    SENT = "SENT"
    """The Date: header (SENTBEFORE, SENTON, SENTSINCE)."""


class DateOp(enum.Enum):
    """How a :class:`Date` compares; dates ignore time and timezone (RFC 3501)."""

    BEFORE = "BEFORE"
    ON = "ON"
    SINCE = "SINCE"


@dataclass(frozen=True)
class Date(SearchKey):
    """Messages whose ``field`` date is before, on, or on-or-after ``value``."""

    field: DateField
    op: DateOp
    value: dt.date


class SizeOp(enum.Enum):
    """How a :class:`Size` compares (both strict)."""

    LARGER = "LARGER"
    SMALLER = "SMALLER"


@dataclass(frozen=True)
class Size(SearchKey):
    """Messages whose RFC822.SIZE is strictly larger or smaller than ``octets``."""

    op: SizeOp
    octets: int


@dataclass(frozen=True)
class Uid(SearchKey):
    """Messages whose UID is in ``ids``."""

    ids: SequenceSet


@dataclass(frozen=True)
class SeqNumbers(SearchKey):
    """Messages whose sequence number is in ``ids``."""

    ids: SequenceSet


@dataclass(frozen=True)
class ModSeq(SearchKey):
    """Messages with a mod-sequence of at least ``modseq`` (RFC 7162).

    ``entry`` (e.g. ``/flags/\\draft``) and ``entry_type`` (``priv``, ``shared``, ``all``)
    are kept for completeness; a server with one mod-sequence per message ignores them.
    """

    modseq: int
    entry: str | None = None
    entry_type: str | None = None


_FLAG_KEYS = {
    "ANSWERED": "\\Answered",
    "DELETED": "\\Deleted",
    "DRAFT": "\\Draft",
    "FLAGGED": "\\Flagged",
    "RECENT": "\\Recent",
    "SEEN": "\\Seen",
}
_UNFLAG_KEYS = {"UN" + key: flag for key, flag in _FLAG_KEYS.items() if key != "RECENT"}
_HEADER_KEYS = frozenset({"BCC", "CC", "FROM", "SUBJECT", "TO"})
_DATE_KEYS = {
    "BEFORE": (DateField.INTERNAL, DateOp.BEFORE),
    "ON": (DateField.INTERNAL, DateOp.ON),
    "SINCE": (DateField.INTERNAL, DateOp.SINCE),
    "SENTBEFORE": (DateField.SENT, DateOp.BEFORE),
    "SENTON": (DateField.SENT, DateOp.ON),
    "SENTSINCE": (DateField.SENT, DateOp.SINCE),
}
_ENTRY_TYPES = frozenset({"priv", "shared", "all"})


class _Reader:
    """Recursive-descent reader for search keys, bounded in nesting depth."""

    def __init__(self, lexer: Lexer, charset: str | None, max_depth: int) -> None:
        self.lexer = lexer
        self.encoding = _encoding(charset)
        self.max_depth = max_depth

    def text(self) -> str:
        raw = self.lexer.astring()
        # Without CHARSET, RFC 3501 says US-ASCII; UTF-8 is its superset and what clients send.
        return raw.decode(self.encoding, "replace")

    def keys(self, depth: int, closing: bool) -> SearchKey:
        """Read ``search-key *(SP search-key)`` up to ``)`` (if ``closing``) or the end."""
        keys = [self.key(depth)]
        while True:
            if closing and self.lexer.accept(b")"):
                break
            if not closing and self.lexer.at_end():
                break
            self.lexer.sp()
            keys.append(self.key(depth))
        return keys[0] if len(keys) == 1 else And(tuple(keys))

    def key(self, depth: int) -> SearchKey:
        if depth > self.max_depth:
            raise ParseError("search criteria are nested too deeply")
        lexer = self.lexer
        if lexer.accept(b"("):
            return self.keys(depth + 1, closing=True)
        if _starts_sequence_set(lexer.peek()):
            return SeqNumbers(lexer.sequence_set())
        word = lexer.word()
        if word == "ALL":
            return All()
        if word in _FLAG_KEYS:
            return Flag(_FLAG_KEYS[word])
        if word in _UNFLAG_KEYS:
            return Not(Flag(_UNFLAG_KEYS[word]))
        if word == "NEW":
            return And((Flag("\\Recent"), Not(Flag("\\Seen"))))
        if word == "OLD":
            return Not(Flag("\\Recent"))
        if word in ("KEYWORD", "UNKEYWORD"):
            lexer.sp()
            keyword = Flag(lexer.atom().decode("ascii"))
            return keyword if word == "KEYWORD" else Not(keyword)
        if word in _HEADER_KEYS:
            lexer.sp()
            return Header(word, self.text())
        if word == "HEADER":
            lexer.sp()
            name = self.text().upper()
            if not name or any(ch <= " " or ch in ":\x7f" for ch in name):
                raise ParseError("invalid header field name")
            lexer.sp()
            return Header(name, self.text())
        if word == "BODY":
            lexer.sp()
            return Body(self.text())
        if word == "TEXT":
            lexer.sp()
            return Text(self.text())
        if word in _DATE_KEYS:
            lexer.sp()
            field, op = _DATE_KEYS[word]
            return Date(field, op, lexer.date())
        if word in ("LARGER", "SMALLER"):
            lexer.sp()
            return Size(SizeOp(word), lexer.number(2**63 - 1))
        if word == "UID":
            lexer.sp()
            return Uid(lexer.sequence_set())
        if word == "NOT":
            lexer.sp()
            return Not(self.key(depth + 1))
        if word == "OR":
            lexer.sp()
            left = self.key(depth + 1)
            lexer.sp()
            return Or(left, self.key(depth + 1))
        if word == "MODSEQ":
            return self.modseq()
        raise ParseError(f"unknown search key {word[:30]}")

    def modseq(self) -> ModSeq:
        lexer = self.lexer
        lexer.sp()
        if 0x30 <= lexer.peek() <= 0x39:
            return ModSeq(lexer.number64())
        raw = lexer.string()
        entry = raw.decode("ascii", "replace")
        if not entry.startswith("/flags/"):
            raise ParseError("MODSEQ entry names start with /flags/")
        lexer.sp()
        entry_type = lexer.atom().decode("ascii").lower()
        if entry_type not in _ENTRY_TYPES:
            raise ParseError("MODSEQ entry type is priv, shared or all")
        lexer.sp()
        return ModSeq(lexer.number64(), entry, entry_type)


def _starts_sequence_set(octet: int) -> bool:
    return 0x30 <= octet <= 0x39 or octet in (0x2A, 0x24)  # digit, '*', '$'


def _encoding(charset: str | None) -> str:
    if charset is None:
        return "utf-8"
    try:
        return codecs.lookup(charset).name
    except LookupError:
        raise UnknownCharset(f"unsupported charset {charset[:40]}") from None


def parse_search_keys(lexer: Lexer, charset: str | None = None, max_depth: int = 64) -> SearchKey:
    """Read ``1*(SP search-key)`` (the leading SP already consumed) to the end of the command.

    :param charset: the SEARCH CHARSET; strings are decoded with it (UTF-8 when None).
    :param max_depth: deepest nesting of parentheses, NOT and OR accepted.
    :raises UnknownCharset: when Python has no codec for ``charset``.
    :raises ParseError: on any syntax error.
    """
    return _Reader(lexer, charset, max_depth).keys(0, closing=False)


def parse(text: bytes, charset: str | None = None, max_depth: int = 64) -> SearchKey:
    """Parse complete search criteria such as ``FLAGGED SINCE 1-Feb-1994 NOT FROM "Smith"``."""
    return parse_search_keys(Lexer(Frame.from_line(text)), charset, max_depth)


def walk(key: SearchKey) -> Iterator[SearchKey]:
    """Every node of ``key``, parents before children."""
    stack = [key]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, Not):
            stack.append(node.key)
        elif isinstance(node, Or):
            stack.extend((node.right, node.left))
        elif isinstance(node, And):
            stack.extend(reversed(node.keys))


def uses_modseq(key: SearchKey) -> bool:
    """Whether ``key`` has a MODSEQ criterion (the SEARCH response then reports MODSEQ)."""
    return any(isinstance(node, ModSeq) for node in walk(key))


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


_FLAG_NAMES = {flag: key for key, flag in _FLAG_KEYS.items()}


def render(key: SearchKey) -> str:
    """``key`` in IMAP syntax. Strings are quoted; callers must send strings holding CR, LF
    or non-ASCII as literals themselves (this is for logs and tests)."""
    match key:
        case All():
            return "ALL"
        case Flag(name):
            return _FLAG_NAMES.get(name) or f"KEYWORD {name}"
        case Not(inner):
            return f"NOT {render(inner)}"
        case Or(left, right):
            return f"OR {render(left)} {render(right)}"
        case And(keys):
            return "(" + " ".join(render(k) for k in keys) + ")"
        case Header(name, value):
            # Not "field", bound to a DateField below: compiled, a name has one type.
            header = name if is_atom(name.encode("ascii", "replace")) else _quote(name)
            return f"HEADER {header} {_quote(value)}"
        case Body(value):
            return f"BODY {_quote(value)}"
        case Text(value):
            return f"TEXT {_quote(value)}"
        case Date(field, op, value):
            prefix = "SENT" if field is DateField.SENT else ""
            return f"{prefix}{op.value} {datetimes.format_date(value)}"
        case Size(op, octets):
            return f"{op.value} {octets}"
        case Uid(ids):
            return f"UID {ids}"
        case SeqNumbers(ids):
            return str(ids)
        case ModSeq(modseq, entry, entry_type):
            if entry is None:
                return f"MODSEQ {modseq}"
            return f"MODSEQ {_quote(entry)} {entry_type} {modseq}"
    raise TypeError(f"not a search key: {key!r}")

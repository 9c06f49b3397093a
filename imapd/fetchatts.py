"""FETCH attributes (RFC 3501 6.4.5 and 9, RFC 3516 BINARY, RFC 7162 MODSEQ).

Parsing yields a tuple of :data:`FetchAtt`: a :class:`FetchItem` for the fixed items, a
:class:`BodySection` for ``BODY[...]``/``BODY.PEEK[...]`` and the ``RFC822*`` forms (which are
body sections under another name), and :class:`BinarySection`/:class:`BinarySize` for BINARY.
Each carries the ``response_name`` the FETCH response must echo, so the session never has to
re-render the request.
"""

from __future__ import annotations

import enum
import functools
import re
from dataclasses import dataclass

from imapd.lexer import Frame, Lexer, ParseError

__all__ = [
    "MACROS",
    "BinarySection",
    "BinarySize",
    "BodySection",
    "FetchAtt",
    "FetchItem",
    "Partial",
    "Section",
    "SectionText",
    "parse",
    "parse_fetch_atts",
    "sets_seen",
]


class FetchItem(enum.Enum):
    """FETCH items answered from metadata; the value is the wire name."""

    FLAGS = "FLAGS"
    INTERNALDATE = "INTERNALDATE"
    RFC822_SIZE = "RFC822.SIZE"
    ENVELOPE = "ENVELOPE"
    BODY = "BODY"
    """The non-extensible BODYSTRUCTURE (``BODY`` without a section)."""
    BODYSTRUCTURE = "BODYSTRUCTURE"
    UID = "UID"
    MODSEQ = "MODSEQ"

    @property
    def response_name(self) -> str:
        """Name of the item in the FETCH response."""
        return self.value


class SectionText(enum.Enum):
    """The text part of a section specification."""

    HEADER = "HEADER"
    HEADER_FIELDS = "HEADER.FIELDS"
    HEADER_FIELDS_NOT = "HEADER.FIELDS.NOT"
    TEXT = "TEXT"
    MIME = "MIME"


@dataclass(frozen=True)
class Section:
    """A body section: ``part`` numbers (``1.2.3``), then an optional text specifier.

    :ivar fields: upper-cased header names, for HEADER.FIELDS and HEADER.FIELDS.NOT only.
    """

    part: tuple[int, ...] = ()
    text: SectionText | None = None
    fields: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        wants_fields = self.text in (SectionText.HEADER_FIELDS, SectionText.HEADER_FIELDS_NOT)
        if wants_fields != bool(self.fields):
            raise ValueError("header fields go with HEADER.FIELDS[.NOT] and nothing else")
        if self.text is SectionText.MIME and not self.part:
            raise ValueError("MIME needs a part number")
        if any(number < 1 for number in self.part):
            raise ValueError("part numbers start at 1")

    def render(self) -> str:
        """The section specification as written between the brackets."""
        items = [".".join(str(number) for number in self.part)] if self.part else []
        if self.text is not None:
            items.append(self.text.value)
        spec = ".".join(items)
        if self.fields:
            spec += " (" + " ".join(_render_field(name) for name in self.fields) + ")"
        return spec


def _render_field(name: str) -> str:
    # Header names are astrings: an atom where possible (the usual case), else quoted.
    if _FIELD_ATOM.fullmatch(name):
        return name
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True)
class Partial:
    """``<origin.count>``: ``count`` octets starting at ``origin`` (``count`` None: to the end)."""

    origin: int
    count: int | None = None


@dataclass(frozen=True)
class BodySection:
    """``BODY[section]<partial>``, ``BODY.PEEK[...]``, or ``RFC822``/``.HEADER``/``.TEXT``.

    :ivar alias: the RFC822 name the client used, which the response must echo instead of
        ``BODY[...]``.
    """

    section: Section = Section()
    peek: bool = False
    partial: Partial | None = None
    alias: str | None = None

    @property
    def sets_seen(self) -> bool:
        """Fetching this sets ``\\Seen`` (in a read-write mailbox)."""
        return not self.peek

    @functools.cached_property
    def response_name(self) -> str:
        """Name of the item in the FETCH response (``BODY.PEEK`` answers as ``BODY``);
        worked out once per attribute, not once per message of a FETCH."""
        if self.alias is not None:
            return self.alias
        name = f"BODY[{self.section.render()}]"
        if self.partial is not None:
            name += f"<{self.partial.origin}>"
        return name


@dataclass(frozen=True)
class BinarySection:
    """``BINARY[part]<partial>`` or ``BINARY.PEEK[...]`` (RFC 3516): the decoded part."""

    part: tuple[int, ...] = ()
    peek: bool = False
    partial: Partial | None = None

    @property
    def sets_seen(self) -> bool:
        """Fetching this sets ``\\Seen`` (in a read-write mailbox)."""
        return not self.peek

    @property
    def response_name(self) -> str:
        """Name of the item in the FETCH response."""
        name = "BINARY[" + ".".join(str(number) for number in self.part) + "]"
        if self.partial is not None:
            name += f"<{self.partial.origin}>"
        return name


@dataclass(frozen=True)
class BinarySize:
    """``BINARY.SIZE[part]`` (RFC 3516): the decoded size of a part."""

    part: tuple[int, ...] = ()

    @property
    def sets_seen(self) -> bool:
        """Never sets ``\\Seen``."""
        return False

    @property
    def response_name(self) -> str:
        """Name of the item in the FETCH response."""
        return "BINARY.SIZE[" + ".".join(str(number) for number in self.part) + "]"


FetchAtt = FetchItem | BodySection | BinarySection | BinarySize

MACROS: dict[str, tuple[FetchAtt, ...]] = {
    "FAST": (FetchItem.FLAGS, FetchItem.INTERNALDATE, FetchItem.RFC822_SIZE),
    "ALL": (FetchItem.FLAGS, FetchItem.INTERNALDATE, FetchItem.RFC822_SIZE, FetchItem.ENVELOPE),
    "FULL": (
        FetchItem.FLAGS,
        FetchItem.INTERNALDATE,
        FetchItem.RFC822_SIZE,
        FetchItem.ENVELOPE,
        FetchItem.BODY,
    ),
}

_SIMPLE: dict[str, FetchAtt] = {
    **{item.value: item for item in FetchItem},
    "RFC822": BodySection(Section(), peek=False, alias="RFC822"),
    "RFC822.HEADER": BodySection(
        Section(text=SectionText.HEADER), peek=True, alias="RFC822.HEADER"
    ),
    "RFC822.TEXT": BodySection(Section(text=SectionText.TEXT), peek=False, alias="RFC822.TEXT"),
}

_NAME = re.compile(rb"[A-Za-z0-9.]+")
_PART = re.compile(rb"[0-9]+(?:\.[0-9]+)*")
_SECTION_WORD = re.compile(rb"[A-Za-z.]+")
_FIELD_ATOM = re.compile(r"[^\x00-\x20\x7f-\U0010ffff(){%*\"\\\]]+")
_MAX_PART = 0xFFFFFFFF


def sets_seen(atts: tuple[FetchAtt, ...]) -> bool:
    """Whether answering ``atts`` sets ``\\Seen`` on the messages."""
    return any(not isinstance(att, FetchItem) and att.sets_seen for att in atts)


def _part_numbers(lexer: Lexer) -> tuple[int, ...]:
    token = lexer.match(_PART)
    if token is None:
        return ()
    numbers = tuple(int(piece) for piece in token.split(b".") if len(piece) <= 10)
    if len(numbers) != token.count(b".") + 1 or any(not 1 <= n <= _MAX_PART for n in numbers):
        raise ParseError("invalid section part number")
    return numbers


def _header_list(lexer: Lexer) -> tuple[str, ...]:
    lexer.sp()
    lexer.expect(b"(")
    fields: list[str] = []
    while True:
        raw = lexer.astring()
        try:
            name = raw.decode("ascii").upper()
        except UnicodeDecodeError:
            raise ParseError("header field names are ASCII") from None
        if not name or any(ch <= " " or ch == ":" or ch == "\x7f" for ch in name):
            raise ParseError("invalid header field name")
        # Repeats are kept: the response echoes the list as requested (RFC 3501 7.4.2).
        fields.append(name)
        if lexer.accept(b")"):
            return tuple(fields)
        lexer.sp()


def _section(lexer: Lexer) -> Section:
    part = _part_numbers(lexer)
    if lexer.peek() == ord("]"):
        return Section(part)
    if part:
        lexer.expect(b".")
    word = lexer.match(_SECTION_WORD)
    if word is None:
        raise ParseError("invalid section")
    try:
        text = SectionText(word.decode("ascii").upper())
    except ValueError:
        raise ParseError(f"invalid section text {word[:30].decode('ascii')!r}") from None
    if text is SectionText.MIME and not part:
        raise ParseError("MIME needs a part number")
    fields: tuple[str, ...] = ()
    if text in (SectionText.HEADER_FIELDS, SectionText.HEADER_FIELDS_NOT):
        fields = _header_list(lexer)
    return Section(part, text, fields)


def _partial(lexer: Lexer) -> Partial | None:
    if not lexer.accept(b"<"):
        return None
    origin = lexer.number(2**63 - 1)
    count = None
    # RFC 3501 requires ".count"; "<origin>" alone (to the end) is accepted as Dovecot does.
    if lexer.accept(b"."):
        count = lexer.nz_number(2**63 - 1)
    lexer.expect(b">")
    return Partial(origin, count)


def _fetch_att(lexer: Lexer) -> FetchAtt:
    token = lexer.match(_NAME)
    if token is None:
        raise ParseError("expected a fetch attribute")
    name = token.decode("ascii").upper()
    if lexer.peek() != ord("["):
        if name in _SIMPLE:
            return _SIMPLE[name]
        raise ParseError(f"unknown fetch attribute {name[:30]}")
    lexer.expect(b"[")
    if name in ("BODY", "BODY.PEEK"):
        section = _section(lexer)
        lexer.expect(b"]")
        return BodySection(section, peek=name == "BODY.PEEK", partial=_partial(lexer))
    if name in ("BINARY", "BINARY.PEEK", "BINARY.SIZE"):
        part = _part_numbers(lexer)
        lexer.expect(b"]")
        if name == "BINARY.SIZE":
            return BinarySize(part)
        return BinarySection(part, peek=name == "BINARY.PEEK", partial=_partial(lexer))
    raise ParseError(f"unknown fetch attribute {name[:30]}")


def parse_fetch_atts(lexer: Lexer) -> tuple[FetchAtt, ...]:
    """Read the FETCH attribute argument: a macro, one attribute, or a parenthesised list.

    Macros are expanded; repeats are dropped, order is kept.
    """
    atts: list[FetchAtt] = []
    if lexer.accept(b"("):
        while True:
            atts.append(_fetch_att(lexer))
            if lexer.accept(b")"):
                break
            lexer.sp()
    else:
        word = lexer.peek_word()
        if word in MACROS:
            lexer.atom()
            return MACROS[word]
        atts.append(_fetch_att(lexer))
    return tuple(dict.fromkeys(atts))


def parse(text: bytes) -> tuple[FetchAtt, ...]:
    """Parse a complete FETCH attribute argument such as ``(UID BODY.PEEK[HEADER])``.

    :raises ParseError: on a syntax error or trailing data.
    """
    lexer = Lexer(Frame.from_line(text))
    atts = parse_fetch_atts(lexer)
    lexer.end()
    return atts

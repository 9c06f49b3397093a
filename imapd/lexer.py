"""Tokens of one framed IMAP command (RFC 3501 section 9): atoms, strings, numbers, flags,
mailbox names, sequence sets and dates.

The parser (:mod:`imapd.parser`) cuts the byte stream into :class:`Frame` objects: the command
text split where literals were announced, plus the literals' octets. A :class:`Lexer` walks one
frame; every grammar module reads through it, so literal handling lives in one place and a
literal can stand wherever the grammar allows a ``string``.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Final

from imapd import datetimes, mutf7
from imapd.errors import ImapdError
from imapd.sequence import SequenceSet, SequenceSetError
from runtime import errors as kinds

__all__ = [
    "SYSTEM_FLAGS",
    "Frame",
    "Lexer",
    "ParseError",
    "is_atom",
    "normalize_flag",
]

MAX_NUMBER64: Final = 2**63 - 1
"""Largest ``mod-sequence-value`` and 63-bit ``number64`` (RFC 7162, RFC 9051)."""

# ATOM-CHAR: CHAR (0x01-0x7f) minus atom-specials: ( ) { SP CTL % * " \ ]
_ATOM_CLASS = rb"[^\x00-\x20\x7f-\xff(){%*\"\\\]]"
_ATOM = re.compile(_ATOM_CLASS + rb"+")
_ASTRING_ATOM = re.compile(rb"(?:" + _ATOM_CLASS + rb"|\])+")
_TAG = re.compile(rb"(?:[^\x00-\x20\x7f-\xff(){%*\"\\+])+")
_LIST_MAILBOX = re.compile(rb"(?:" + _ATOM_CLASS + rb"|[%*\]])+")
# QUOTED-CHAR is 7-bit TEXT-CHAR; 8-bit octets are accepted too because real clients send
# UTF-8 passwords and search strings quoted. NUL, CR and LF never are.
_QUOTED = re.compile(rb'"((?:[^"\\\x00\r\n]|\\["\\])*)"')
_QUOTED_ESCAPE = re.compile(rb'\\(["\\])')
_LITERAL_MARKER = re.compile(rb"(~?)\{([0-9]{1,20})(\+?)\}")
_NUMBER = re.compile(rb"[0-9]+")
_SEQUENCE_SET = re.compile(rb"[0-9:*,$]+")
_DATE_TOKEN = re.compile(rb"[0-9A-Za-z-]+")

SYSTEM_FLAGS: Final = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft", "\\Recent")
_SYSTEM_FLAG_CASE = {flag.upper(): flag for flag in SYSTEM_FLAGS}


class ParseError(ImapdError, kinds.InvalidInput):
    """The client sent bytes that are not valid IMAP; answered with BAD.

    :ivar text: human-readable reason, safe to echo to the client.
    """

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


def is_atom(value: bytes) -> bool:
    """Whether ``value`` is a non-empty run of ATOM-CHARs."""
    return _ATOM.fullmatch(value) is not None


def normalize_flag(flag: str) -> str:
    """Canonical spelling of a flag: system flags are case-insensitive, keywords are kept."""
    return _SYSTEM_FLAG_CASE.get(flag.upper(), flag)


@dataclass(frozen=True)
class Frame:
    """One complete command as framed off the wire.

    :ivar segments: the command text, cut after each literal marker (``{n}``, ``{n+}``,
        ``~{n}``); each segment but the last ends with its marker; line ends are removed.
    :ivar literals: the octets of each literal, ``literals[i]`` following ``segments[i]``.
    """

    segments: tuple[bytes, ...]
    literals: tuple[bytes, ...] = ()

    def __post_init__(self) -> None:
        if len(self.segments) != len(self.literals) + 1:
            raise ValueError("a frame has exactly one more segment than literals")

    @classmethod
    def from_line(cls, line: bytes) -> Frame:
        """A frame of one line without literals (tests and standalone grammar helpers)."""
        return cls((line,))

    @property
    def text_length(self) -> int:
        """Octets of command text, literals excluded."""
        return sum(len(segment) for segment in self.segments)


class Lexer:
    """A cursor over one :class:`Frame`; every read method raises :class:`ParseError`."""

    def __init__(self, frame: Frame, *, utf8_names: bool = False) -> None:
        """:param utf8_names: mailbox names are UTF-8, not modified UTF-7 (IMAP4rev2)."""
        self._decode_name = _decode_utf8_name if utf8_names else _decode_mailbox
        self._segments = frame.segments
        self._literals = frame.literals
        self._index = 0
        self._line = frame.segments[0]
        self._pos = 0

    # -- position ------------------------------------------------------------------------

    def at_end(self) -> bool:
        """Whether the whole command has been read."""
        return self._pos >= len(self._line) and self._index == len(self._segments) - 1

    def peek(self) -> int:
        """The next octet, or -1 at the end of the current segment."""
        return self._line[self._pos] if self._pos < len(self._line) else -1

    def startswith(self, token: bytes) -> bool:
        """Whether the text at the cursor starts with ``token`` (case-sensitive)."""
        return self._line.startswith(token, self._pos)

    def end(self) -> None:
        """Require the end of the command."""
        if not self.at_end():
            raise ParseError("unexpected extra arguments")

    def sp(self) -> None:
        """Read exactly one space."""
        if self.peek() != 0x20:
            raise ParseError("expected a space" if not self.at_end() else "missing arguments")
        self._pos += 1

    def accept(self, token: bytes) -> bool:
        """Read ``token`` if it is next."""
        if self._line.startswith(token, self._pos):
            self._pos += len(token)
            return True
        return False

    def expect(self, token: bytes) -> None:
        """Read ``token`` or fail."""
        if not self.accept(token):
            raise ParseError(f"expected {token.decode('ascii')!r}")

    def match(self, pattern: re.Pattern[bytes]) -> bytes | None:
        """Read what ``pattern`` matches at the cursor, if anything."""
        found = pattern.match(self._line, self._pos)
        if found is None or found.end() == self._pos:
            return None
        self._pos = found.end()
        return found.group()

    # -- atoms and words -------------------------------------------------------------------

    def atom(self) -> bytes:
        """Read an ``atom``."""
        value = self.match(_ATOM)
        if value is None:
            raise ParseError("expected an atom")
        return value

    def word(self) -> str:
        """Read an atom as an upper-case keyword."""
        return self.atom().decode("ascii").upper()

    def peek_word(self) -> str:
        """The upper-case atom at the cursor without reading it ('' if none)."""
        found = _ATOM.match(self._line, self._pos)
        return found.group().decode("ascii").upper() if found else ""

    def tag(self) -> str:
        """Read a command ``tag``."""
        value = self.match(_TAG)
        if value is None:
            raise ParseError("invalid or missing tag")
        return value.decode("ascii")

    # -- numbers -----------------------------------------------------------------------------

    def number(self, maximum: int = 0xFFFFFFFF) -> int:
        """Read a ``number`` no larger than ``maximum`` (32-bit unless told)."""
        digits = self.match(_NUMBER)
        if digits is None:
            raise ParseError("expected a number")
        if len(digits) > 20 or int(digits) > maximum:
            raise ParseError(f"number {digits[:24].decode('ascii')} is too large")
        return int(digits)

    def nz_number(self, maximum: int = 0xFFFFFFFF) -> int:
        """Read a non-zero ``number``."""
        value = self.number(maximum)
        if value == 0:
            raise ParseError("expected a non-zero number")
        return value

    def number64(self) -> int:
        """Read a 63-bit number (``mod-sequence-value``)."""
        return self.number(MAX_NUMBER64)

    # -- strings ---------------------------------------------------------------------------

    def quoted(self) -> bytes:
        """Read a ``quoted`` string, unescaping ``\\"`` and ``\\\\``."""
        found = _QUOTED.match(self._line, self._pos)
        if found is None:
            raise ParseError("invalid quoted string")
        self._pos = found.end()
        return _QUOTED_ESCAPE.sub(rb"\1", found.group(1))

    def literal(self, binary_ok: bool = False) -> tuple[bytes, bool]:
        """Read a literal; returns its octets and whether it was a ``literal8`` (``~{n}``)."""
        found = _LITERAL_MARKER.match(self._line, self._pos)
        if found is None or found.end() != len(self._line) or self._index >= len(self._literals):
            raise ParseError("invalid literal")
        binary = bool(found.group(1))
        if binary and not binary_ok:
            raise ParseError("literal8 is only allowed for APPEND data")
        data = self._literals[self._index]
        if int(found.group(2)) != len(data):
            # The framer guarantees this; a mismatch is our bug, not the client's.
            raise AssertionError("literal length differs from its marker")
        self._index += 1
        self._line = self._segments[self._index]
        self._pos = 0
        return data, binary

    def at_literal(self) -> bool:
        """Whether a literal (``{n}``, ``{n+}`` or ``~{n}``) starts at the cursor."""
        return self.peek() == ord("{") or self.startswith(b"~{")

    def string(self) -> bytes:
        """Read a ``string`` (quoted or literal)."""
        if self.peek() == ord('"'):
            return self.quoted()
        if self.peek() == ord("{"):
            return self.literal()[0]
        raise ParseError("expected a string")

    def astring(self) -> bytes:
        """Read an ``astring`` (atom including ']', quoted or literal)."""
        if self.peek() in (ord('"'), ord("{")):
            return self.string()
        value = self.match(_ASTRING_ATOM)
        if value is None:
            raise ParseError("expected a string")
        return value

    def nstring(self) -> bytes | None:
        """Read an ``nstring``: a string or NIL."""
        if self.peek() not in (ord('"'), ord("{")) and self.peek_word() == "NIL":
            self.atom()
            return None
        return self.string()

    def utf8(self, value: bytes, what: str) -> str:
        """Decode ``value`` as UTF-8, failing with a message naming ``what``."""
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise ParseError(f"{what} is not valid UTF-8") from None

    # -- mailbox names -----------------------------------------------------------------------

    def mailbox(self) -> str:
        """Read a ``mailbox``: modified UTF-7 decoded; any case of INBOX becomes ``INBOX``."""
        name = self._decode_name(self.astring())
        return "INBOX" if name.upper() == "INBOX" and type(name) is str else name

    def list_mailbox(self) -> str:
        """Read a ``list-mailbox`` (a pattern that may hold the wildcards ``%`` and ``*``)."""
        if self.peek() in (ord('"'), ord("{")):
            return self._decode_name(self.string())
        value = self.match(_LIST_MAILBOX)
        if value is None:
            raise ParseError("expected a mailbox pattern")
        return self._decode_name(value)

    # -- flags, sets, dates ----------------------------------------------------------------

    def flag(self) -> str:
        """Read a storable ``flag``: a system flag (canonical case), ``\\atom`` or keyword.

        ``\\Recent`` and ``\\*`` are refused: clients can neither set nor clear them.
        """
        if self.accept(b"\\"):
            name = self.match(_ATOM)
            if name is None:
                raise ParseError("expected a flag name after '\\'")
            flag = normalize_flag("\\" + name.decode("ascii"))
            if flag == "\\Recent":
                raise ParseError("\\Recent cannot be stored")
            return flag
        return self.atom().decode("ascii")

    def flag_list(self) -> tuple[str, ...]:
        """Read ``( [flag *(SP flag)] )``, dropping repeats."""
        self.expect(b"(")
        flags: list[str] = []
        if not self.accept(b")"):
            while True:
                flag = self.flag()
                if flag not in flags:
                    flags.append(flag)
                if self.accept(b")"):
                    break
                self.sp()
        return tuple(flags)

    def sequence_set(self) -> SequenceSet:
        """Read a ``sequence-set`` (or ``$``)."""
        token = self.match(_SEQUENCE_SET)
        if token is None:
            raise ParseError("expected a sequence set")
        try:
            return SequenceSet.parse(token)
        except SequenceSetError as exc:
            raise ParseError(str(exc)) from None

    def date(self) -> dt.date:
        """Read a SEARCH ``date``, bare or quoted."""
        if self.peek() == ord('"'):
            text = self.quoted()
        else:
            token = self.match(_DATE_TOKEN)
            if token is None:
                raise ParseError("expected a date")
            text = token
        try:
            return datetimes.parse_date(text)
        except datetimes.DateError as exc:
            raise ParseError(str(exc)) from None

    def date_time(self) -> dt.datetime:
        """Read a quoted ``date-time``."""
        if self.peek() != ord('"'):
            raise ParseError("expected a quoted date-time")
        try:
            return datetimes.parse_datetime(self.quoted())
        except datetimes.DateError as exc:
            raise ParseError(str(exc)) from None


def _decode_utf8_name(raw: bytes) -> str:
    """The UTF-8 name, or the raw one marked :class:`~imapd.mutf7.Undecodable` (a name no
    mailbox can have, answered NO as an invalid modified UTF-7 one is)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return mutf7.Undecodable(raw.decode("latin-1"))


def _decode_mailbox(raw: bytes) -> str:
    """The decoded name, or the raw one marked :class:`~imapd.mutf7.Undecodable`."""
    try:
        return mutf7.decode(raw)
    except mutf7.MUTF7Error:
        return mutf7.Undecodable(raw.decode("latin-1"))

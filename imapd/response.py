"""Server responses (RFC 3501 section 7 and 9, plus the extensions' responses and codes).

Responses are frozen dataclasses; :func:`render` turns one into a list of byte chunks whose
concatenation is the wire form (``transport.writeSequence(render(r))``). Chunks let a FETCH
body go out as ``{n}\\r\\n`` followed by the caller's own bytes objects, never copied into one
big string.

What the writer guarantees:

* every response ends with CRLF, and CR or LF never appear outside literals;
* human-readable text is 7-bit printable (anything else becomes ``?``), never empty, and
  never begins with ``[`` unless it carries a response code;
* a string goes out quoted when it can be (7-bit, no NUL/CR/LF), else as a literal whose
  length is exact; ``astring`` positions use an atom when safe and never the atom ``NIL``;
  ``None`` is ``NIL``;
* mailbox names are encoded in modified UTF-7 and always quoted;
* flags, capabilities and other atoms are checked, so a bad one raises ValueError (a bug in
  the caller, not something to send).
"""

from __future__ import annotations

import base64
import datetime as dt
import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple, cast

from imapd import datetimes, mutf7
from imapd.sequence import SequenceSet

__all__ = [
    "ALERT",
    "ALREADYEXISTS",
    "AUTHENTICATIONFAILED",
    "AUTHORIZATIONFAILED",
    "CANNOT",
    "CLIENTBUG",
    "CLOSED",
    "CONTACTADMIN",
    "CORRUPTION",
    "EXPIRED",
    "EXPUNGEISSUED",
    "INUSE",
    "LIMIT",
    "NOMODSEQ",
    "NONEXISTENT",
    "NOPERM",
    "NOTIFICATIONOVERFLOW",
    "OVERQUOTA",
    "PARSE",
    "PRIVACYREQUIRED",
    "READ_ONLY",
    "READ_WRITE",
    "SERVERBUG",
    "TOOBIG",
    "TRYCREATE",
    "UIDNOTSTICKY",
    "UNAVAILABLE",
    "AppendUid",
    "BadCharset",
    "BadEvent",
    "BadUrl",
    "CapabilityCode",
    "CapabilityData",
    "Challenge",
    "Code",
    "ContextUpdate",
    "Continuation",
    "CopyUid",
    "ESearchData",
    "Enabled",
    "Exists",
    "Expunge",
    "FetchData",
    "FetchDate",
    "FetchFlags",
    "FetchItem",
    "FetchLiteral",
    "FetchModSeq",
    "FetchNumber",
    "FetchRaw",
    "Flags",
    "HighestModSeq",
    "IdData",
    "ListItem",
    "Modified",
    "NamespaceData",
    "NoUpdate",
    "PartialResult",
    "PermanentFlags",
    "QuotaData",
    "QuotaRootData",
    "Recent",
    "Response",
    "ResponseCode",
    "SearchData",
    "SortData",
    "Status",
    "StatusData",
    "Tagged",
    "ThreadData",
    "ThreadNode",
    "UidNext",
    "UidValidity",
    "Unseen",
    "Untagged",
    "Vanished",
    "astring",
    "mailbox",
    "nstring",
    "render",
    "render_all",
    "string",
    "to_bytes",
]

CRLF = b"\r\n"

_ATOM = re.compile(rb"[^\x00-\x20\x7f-\xff(){%*\"\\\]]+\Z")
_ASTRING_ATOM = re.compile(rb"[^\x00-\x20\x7f-\xff(){%*\"\\]+\Z")
_FLAG = re.compile(r"\\?[^\x00-\x20\x7f-\U0010ffff(){%*\"\\\]]+\Z|\\\*\Z")
_QUOTABLE = re.compile(rb"[^\x00\r\n\x80-\xff]*\Z")
_NOT_TEXT = re.compile(r"[^\x20-\x7e]")
_TAG = re.compile(r"[^\x00-\x20\x7f-\U0010ffff(){%*\"\\+]+\Z")


# -- strings ----------------------------------------------------------------------------------


def string(value: bytes | str) -> bytes:
    """A ``string``: quoted when 7-bit without NUL/CR/LF, else a literal (str is UTF-8)."""
    data = value.encode("utf-8") if isinstance(value, str) else value
    if _QUOTABLE.match(data):
        return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return b"{%d}\r\n" % len(data) + data


def astring(value: bytes | str) -> bytes:
    """An ``astring``: an atom when safe (and not ``NIL``), else :func:`string`."""
    data = value.encode("utf-8") if isinstance(value, str) else value
    if _ASTRING_ATOM.match(data) and data.upper() != b"NIL":
        return data
    return string(data)


def nstring(value: bytes | str | None) -> bytes:
    """An ``nstring``: ``NIL`` for None, else :func:`string`."""
    return b"NIL" if value is None else string(value)


def mailbox(name: str, utf8: bool = False) -> bytes:
    """A mailbox name: modified UTF-7, quoted (a literal only if encoding left CR/LF, never);
    with ``utf8`` (IMAP4rev2 enabled) UTF-8, quoted too, as RFC 9051's ``quoted`` allows."""
    if not utf8:
        return string(mutf7.encode(name).encode("ascii"))
    data = name.encode("utf-8")
    if b"\x00" in data or b"\r" in data or b"\n" in data:
        return string(data)
    return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def _atom(value: str, what: str) -> bytes:
    data = value.encode("ascii", "replace")
    if not _ATOM.match(data):
        raise ValueError(f"{what} {value!r} is not an atom")
    return data


def _flag(value: str) -> bytes:
    if not _FLAG.match(value):
        raise ValueError(f"flag {value!r} is not a valid IMAP flag")
    return value.encode("ascii")


def _flag_list(flags: Iterable[str]) -> bytes:
    return b"(" + b" ".join(_flag(flag) for flag in flags) + b")"


def _text(text: str, default: str) -> bytes:
    cleaned = _NOT_TEXT.sub("?", text).strip() or default
    return cleaned.encode("ascii")


def _number(value: object, what: str, minimum: int = 0) -> bytes:
    # ``object``, not ``int``: compiled (runtime.compiled), an ``int`` parameter would take a
    # bool as 0 or 1 before this check could refuse it.
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{what} must be an integer >= {minimum}, not {value!r}")
    return b"%d" % value


# -- response codes ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Code:
    """A response code without arguments, e.g. ``[TRYCREATE]``."""

    name: str

    def render(self) -> bytes:
        """The code without brackets."""
        return _atom(self.name, "response code")


ALERT = Code("ALERT")
ALREADYEXISTS = Code("ALREADYEXISTS")
AUTHENTICATIONFAILED = Code("AUTHENTICATIONFAILED")
AUTHORIZATIONFAILED = Code("AUTHORIZATIONFAILED")
CANNOT = Code("CANNOT")
CLIENTBUG = Code("CLIENTBUG")
CLOSED = Code("CLOSED")
CONTACTADMIN = Code("CONTACTADMIN")
CORRUPTION = Code("CORRUPTION")
EXPIRED = Code("EXPIRED")
EXPUNGEISSUED = Code("EXPUNGEISSUED")
INUSE = Code("INUSE")
LIMIT = Code("LIMIT")
NOMODSEQ = Code("NOMODSEQ")
NONEXISTENT = Code("NONEXISTENT")
NOTIFICATIONOVERFLOW = Code("NOTIFICATIONOVERFLOW")
NOPERM = Code("NOPERM")
OVERQUOTA = Code("OVERQUOTA")
PARSE = Code("PARSE")
PRIVACYREQUIRED = Code("PRIVACYREQUIRED")
READ_ONLY = Code("READ-ONLY")
READ_WRITE = Code("READ-WRITE")
SERVERBUG = Code("SERVERBUG")
TOOBIG = Code("TOOBIG")
TRYCREATE = Code("TRYCREATE")
UIDNOTSTICKY = Code("UIDNOTSTICKY")
UNAVAILABLE = Code("UNAVAILABLE")


@dataclass(frozen=True)
class CapabilityCode:
    """``[CAPABILITY IMAP4rev1 ...]``."""

    capabilities: tuple[str, ...]

    def render(self) -> bytes:
        """The code without brackets."""
        return b" ".join([b"CAPABILITY", *(_atom(cap, "capability") for cap in self.capabilities)])


@dataclass(frozen=True)
class PermanentFlags:
    """``[PERMANENTFLAGS (...)]``; ``\\*`` may be among the flags."""

    flags: tuple[str, ...]

    def render(self) -> bytes:
        """The code without brackets."""
        return b"PERMANENTFLAGS " + _flag_list(self.flags)


@dataclass(frozen=True)
class UidNext:
    """``[UIDNEXT n]``."""

    value: int

    def render(self) -> bytes:
        """The code without brackets."""
        return b"UIDNEXT " + _number(self.value, "UIDNEXT", 1)


@dataclass(frozen=True)
class UidValidity:
    """``[UIDVALIDITY n]``."""

    value: int

    def render(self) -> bytes:
        """The code without brackets."""
        return b"UIDVALIDITY " + _number(self.value, "UIDVALIDITY", 1)


@dataclass(frozen=True)
class Unseen:
    """``[UNSEEN n]``: sequence number of the first unseen message."""

    value: int

    def render(self) -> bytes:
        """The code without brackets."""
        return b"UNSEEN " + _number(self.value, "UNSEEN", 1)


@dataclass(frozen=True)
class HighestModSeq:
    """``[HIGHESTMODSEQ n]`` (RFC 7162)."""

    value: int

    def render(self) -> bytes:
        """The code without brackets."""
        return b"HIGHESTMODSEQ " + _number(self.value, "HIGHESTMODSEQ", 1)


@dataclass(frozen=True)
class AppendUid:
    """``[APPENDUID uidvalidity uids]`` (RFC 4315)."""

    uidvalidity: int
    uids: SequenceSet

    def render(self) -> bytes:
        """The code without brackets."""
        return b"APPENDUID %s %s" % (
            _number(self.uidvalidity, "UIDVALIDITY", 1),
            _concrete_set(self.uids),
        )


@dataclass(frozen=True)
class CopyUid:
    """``[COPYUID uidvalidity source-uids destination-uids]`` (RFC 4315)."""

    uidvalidity: int
    source: SequenceSet
    destination: SequenceSet

    def render(self) -> bytes:
        """The code without brackets."""
        return b"COPYUID %s %s %s" % (
            _number(self.uidvalidity, "UIDVALIDITY", 1),
            _concrete_set(self.source),
            _concrete_set(self.destination),
        )


@dataclass(frozen=True)
class Modified:
    """``[MODIFIED set]`` (RFC 7162): messages STORE UNCHANGEDSINCE left alone."""

    ids: SequenceSet

    def render(self) -> bytes:
        """The code without brackets."""
        return b"MODIFIED " + _concrete_set(self.ids)


@dataclass(frozen=True)
class BadEvent:
    """``[BADEVENT (event ...)]`` (RFC 5465 4): a NOTIFY asked for an event the server does
    not support; the code lists those it does."""

    events: tuple[str, ...]

    def render(self) -> bytes:
        """The code without brackets."""
        return b"BADEVENT (" + b" ".join(_atom(e, "NOTIFY event") for e in self.events) + b")"


@dataclass(frozen=True)
class BadCharset:
    """``[BADCHARSET (UTF-8 US-ASCII)]``: the charsets SEARCH supports."""

    charsets: tuple[str, ...] = ("US-ASCII", "UTF-8")

    def render(self) -> bytes:
        """The code without brackets."""
        if not self.charsets:
            return b"BADCHARSET"
        return b"BADCHARSET (" + b" ".join(astring(name) for name in self.charsets) + b")"


@dataclass(frozen=True)
class BadUrl:
    """``[BADURL url]`` (RFC 4469): a CATENATE URL that names nothing this user can read."""

    url: str

    def render(self) -> bytes:
        """The code without brackets (the URL's characters outside TEXT-CHAR and ``]``
        as ``?``: it echoes what the client sent)."""
        text = re.sub(r"[^\x20-\x5c\x5e-\x7e]", "?", self.url[:300]) or "?"
        return b"BADURL " + text.encode("ascii")


@dataclass(frozen=True)
class NoUpdate:
    """``[NOUPDATE "tag"]`` (RFC 5267 4.3.1): the search tagged ``tag`` gets no updates."""

    tag: str

    def render(self) -> bytes:
        """The code without brackets."""
        return b"NOUPDATE " + string(self.tag)


ResponseCode = (
    Code
    | BadEvent
    | CapabilityCode
    | PermanentFlags
    | UidNext
    | UidValidity
    | Unseen
    | HighestModSeq
    | AppendUid
    | CopyUid
    | Modified
    | BadCharset
    | BadUrl
    | NoUpdate
)


def _concrete_set(ids: SequenceSet) -> bytes:
    if ids.saved or ids.uses_star:
        raise ValueError("a response needs a sequence set without '*' or '$'")
    return str(ids).encode("ascii")


# -- status responses -------------------------------------------------------------------------


class Status(enum.Enum):
    """Status condition words."""

    OK = "OK"
    NO = "NO"
    BAD = "BAD"
    PREAUTH = "PREAUTH"
    BYE = "BYE"


_DEFAULT_TEXT = {
    Status.OK: "Completed",
    Status.NO: "Failed",
    Status.BAD: "Error",
    Status.PREAUTH: "Logged in",
    Status.BYE: "Logging out",
}


def _condition(status: Status, code: ResponseCode | None, text: str) -> bytes:
    body = _text(text, _DEFAULT_TEXT[status])
    if code is not None:
        return b"%s [%s] %s" % (status.value.encode("ascii"), code.render(), body)
    if body.startswith(b"["):
        body = b"- " + body  # or the client would read it as a response code
    return b"%s %s" % (status.value.encode("ascii"), body)


@dataclass(frozen=True)
class Tagged:
    """The tagged completion of a command: ``tag OK|NO|BAD [code] text``."""

    tag: str
    status: Status
    text: str = ""
    code: ResponseCode | None = None

    def __post_init__(self) -> None:
        if self.status not in (Status.OK, Status.NO, Status.BAD):
            raise ValueError(f"a tagged response cannot be {self.status.value}")
        if not _TAG.match(self.tag):
            raise ValueError(f"invalid tag {self.tag!r}")


@dataclass(frozen=True)
class Untagged:
    """An untagged status response: ``* OK|NO|BAD|PREAUTH|BYE [code] text``."""

    status: Status
    text: str = ""
    code: ResponseCode | None = None


@dataclass(frozen=True)
class Continuation:
    """A continuation request: ``+ text`` (literal acknowledgement, IDLE)."""

    text: str = "Ready"


@dataclass(frozen=True)
class Challenge:
    """A SASL challenge: ``+ base64``; an empty challenge is ``+ `` (RFC 3501 6.2.2)."""

    data: bytes = b""


# -- untagged data ----------------------------------------------------------------------------


@dataclass(frozen=True)
class CapabilityData:
    """``* CAPABILITY ...``."""

    capabilities: tuple[str, ...]


@dataclass(frozen=True)
class Exists:
    """``* n EXISTS``."""

    count: int


@dataclass(frozen=True)
class Recent:
    """``* n RECENT``."""

    count: int


@dataclass(frozen=True)
class Expunge:
    """``* n EXPUNGE``."""

    seq: int


@dataclass(frozen=True)
class Flags:
    """``* FLAGS (...)``: the flags defined in the mailbox."""

    flags: tuple[str, ...]


@dataclass(frozen=True)
class ListItem:
    """``* LIST (attributes) "delimiter" mailbox`` or the same as LSUB.

    :ivar child_info: LIST-EXTENDED ``CHILDINFO`` extended data, e.g. ``("SUBSCRIBED",)``.
    :ivar old_name: ``OLDNAME`` extended data (RFC 5465 5.4): the mailbox was renamed.
    """

    mailbox: str
    attributes: tuple[str, ...] = ()
    delimiter: str | None = "/"
    lsub: bool = False
    child_info: tuple[str, ...] = ()
    old_name: str | None = None


@dataclass(frozen=True)
class StatusData:
    """``* STATUS mailbox (item value ...)``."""

    mailbox: str
    items: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class QuotaData:
    """``* QUOTA root (resource usage limit ...)`` (RFC 9208 5.1)."""

    root: str
    resources: tuple[tuple[str, int, int], ...]


@dataclass(frozen=True)
class QuotaRootData:
    """``* QUOTAROOT mailbox root ...`` (RFC 9208 5.2)."""

    mailbox: str
    roots: tuple[str, ...]


@dataclass(frozen=True)
class SearchData:
    """``* SEARCH n n ...`` with ``(MODSEQ n)`` when a CONDSTORE search found messages."""

    numbers: tuple[int, ...]
    modseq: int | None = None


@dataclass(frozen=True)
class SortData:
    """``* SORT n n ...`` (RFC 5256) with ``(MODSEQ n)`` when a CONDSTORE search found
    messages (RFC 7162 3.1.5)."""

    numbers: tuple[int, ...]
    modseq: int | None = None


class ThreadNode(NamedTuple):
    """One message of a thread (``number`` None for a dummy parent) and its replies.

    A named tuple rather than a frozen dataclass: a THREAD answer has one per message of
    the mailbox, and a tuple is several times cheaper to build."""

    number: int | None
    children: tuple[ThreadNode, ...] = ()


@dataclass(frozen=True)
class ThreadData:
    """``* THREAD (...)(...)`` (RFC 5256): one tree per thread."""

    threads: tuple[ThreadNode, ...]


@dataclass(frozen=True)
class PartialResult:
    """``PARTIAL (low:high set)`` (RFC 5267 4.4): the requested range (``low`` first, as
    Dovecot writes it: ``3:1`` is ``1:3``), and the results in it (None: ``NIL``)."""

    low: int
    high: int
    found: SequenceSet | None


@dataclass(frozen=True)
class ContextUpdate:
    """``ADDTO (pos set ...)`` or ``REMOVEFROM (pos set ...)`` (RFC 5267 4.3.3, 4.3.4):
    ``pairs`` of a context position (0: anywhere, for SEARCH) and results in order."""

    kind: str
    pairs: tuple[tuple[int, SequenceSet], ...]

    def __post_init__(self) -> None:
        if self.kind not in ("ADDTO", "REMOVEFROM") or not self.pairs:
            raise ValueError(f"not a context update: {self.kind!r} {self.pairs!r}")


@dataclass(frozen=True)
class ESearchData:
    """``* ESEARCH (TAG "t") [UID] MIN n MAX n ALL set COUNT n [MODSEQ n]`` (RFC 4731, with
    RFC 7162's MODSEQ), and RFC 5267's ``PARTIAL``, ``ADDTO`` and ``REMOVEFROM``; an item
    that is None (or empty) is left out.  For ESORT, ``all`` holds its ranges in the
    requested order."""

    tag: str
    uid: bool = False
    min: int | None = None
    max: int | None = None
    count: int | None = None
    all: SequenceSet | None = None
    modseq: int | None = None
    partial: PartialResult | None = None
    updates: tuple[ContextUpdate, ...] = ()


@dataclass(frozen=True)
class NamespaceData:
    """``* NAMESPACE personal other shared``; each is None or ``((prefix, delimiter), ...)``."""

    personal: tuple[tuple[str, str | None], ...] | None = (("", "/"),)
    other: tuple[tuple[str, str | None], ...] | None = None
    shared: tuple[tuple[str, str | None], ...] | None = None


@dataclass(frozen=True)
class IdData:
    """``* ID (...)`` or ``* ID NIL``."""

    parameters: tuple[tuple[str, str | None], ...] | None


@dataclass(frozen=True)
class Enabled:
    """``* ENABLED ...`` (RFC 5161)."""

    capabilities: tuple[str, ...]


@dataclass(frozen=True)
class Vanished:
    """``* VANISHED [(EARLIER)] uids`` (RFC 7162 QRESYNC)."""

    uids: SequenceSet
    earlier: bool = False


# -- FETCH ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FetchFlags:
    """``FLAGS (...)``."""

    flags: tuple[str, ...]


@dataclass(frozen=True)
class FetchNumber:
    """``NAME n`` for UID, RFC822.SIZE and BINARY.SIZE[...]."""

    name: str
    value: int


@dataclass(frozen=True)
class FetchDate:
    """``INTERNALDATE "dd-Mon-yyyy hh:mm:ss +zzzz"``."""

    value: dt.datetime


@dataclass(frozen=True)
class FetchModSeq:
    """``MODSEQ (n)`` (RFC 7162)."""

    value: int


@dataclass(frozen=True)
class FetchRaw:
    """``NAME data`` where ``data`` is already IMAP syntax (ENVELOPE, BODYSTRUCTURE, BODY
    from the database); written as is."""

    name: str
    data: bytes


@dataclass(frozen=True)
class FetchLiteral:
    """``NAME {n}`` + octets for BODY[...], RFC822*, BINARY[...].

    :ivar name: the attribute's ``response_name``.
    :ivar data: the octets as one bytes object or a tuple of chunks (written without
        copying); None is ``NIL`` (a section that does not exist).
    :ivar binary: write a ``literal8`` (``~{n}``), as BINARY requires for octets with NUL.
    """

    name: str
    data: bytes | tuple[bytes, ...] | None
    binary: bool = False


FetchItem = FetchFlags | FetchNumber | FetchDate | FetchModSeq | FetchRaw | FetchLiteral


@dataclass(frozen=True)
class FetchData:
    """``* seq FETCH (items)``."""

    seq: int
    items: tuple[FetchItem, ...]


Response = (
    Tagged
    | Untagged
    | Continuation
    | Challenge
    | CapabilityData
    | Exists
    | Recent
    | Expunge
    | Flags
    | ListItem
    | StatusData
    | QuotaData
    | QuotaRootData
    | SearchData
    | ESearchData
    | SortData
    | ThreadData
    | NamespaceData
    | IdData
    | Enabled
    | Vanished
    | FetchData
)


# -- rendering --------------------------------------------------------------------------------


def _namespace(entries: tuple[tuple[str, str | None], ...] | None) -> bytes:
    if entries is None:
        return b"NIL"
    parts = [b"(" + mailbox(prefix) + b" " + nstring(delim) + b")" for prefix, delim in entries]
    return b"(" + b"".join(parts) + b")"


def _fetch_items(seq: int, items: tuple[FetchItem, ...]) -> list[bytes]:
    chunks: list[bytes] = []
    line = [b"* %s FETCH (" % _number(seq, "FETCH sequence number", 1)]
    for index, item in enumerate(items):
        if index:
            line.append(b" ")
        match item:
            case FetchFlags(flags):
                line.append(b"FLAGS " + _flag_list(flags))
            case FetchNumber(name, value):
                line.append(b"%s %s" % (name.encode("ascii"), _number(value, name)))
            case FetchDate(value):
                line.append(b'INTERNALDATE "%s"' % datetimes.format_datetime(value).encode("ascii"))
            case FetchModSeq(value):
                line.append(b"MODSEQ (%s)" % _number(value, "MODSEQ"))
            case FetchRaw(name, data):
                line.append(name.encode("ascii") + b" " + data)
            case FetchLiteral(name, data, binary):
                line.append(name.encode("ascii") + b" ")
                if data is None:
                    line.append(b"NIL")
                    continue
                parts = (data,) if isinstance(data, bytes) else data
                size = sum(len(part) for part in parts)
                line.append(b"%s{%d}\r\n" % (b"~" if binary else b"", size))
                chunks.append(b"".join(line))
                chunks.extend(part for part in parts if part)
                line = []
            case _:
                raise TypeError(f"not a FETCH item: {item!r}")
    line.append(b")\r\n")
    chunks.append(b"".join(line))
    return chunks


def _thread_lists(threads: tuple[ThreadNode, ...]) -> bytes:
    """The ``thread-list`` of each tree, concatenated: a chain of single replies as
    numbers, then one nested list per branch (``(3 6 (4 23)(44 7 96))``); a dummy parent
    is only its branches.

    Branches nest as deep as the thread does, and anyone can mail a user a thread
    thousands of levels deep: a stack of the levels being written, never recursion."""
    out: list[bytes] = []
    levels = [iter(threads)]
    while levels:
        for node in levels[-1]:
            if node.number is not None and not node.children:  # most members are leaves
                out.append(b"(" + _number(node.number, "THREAD member", 1) + b")")
                continue
            numbers: list[bytes] = []
            while node.number is not None:
                numbers.append(_number(node.number, "THREAD member", 1))
                if len(node.children) != 1:
                    break
                node = node.children[0]
            if not node.children:
                out.append(b"(" + b" ".join(numbers) + b")")
                continue
            # Its branches next; the list is closed when they are all written.
            out.append(b"(" + b" ".join(numbers) + b" " if numbers else b"(")
            levels.append(iter(node.children))
            break
        else:
            levels.pop()
            if levels:
                out.append(b")")
    return b"".join(out)


def _line(response: Response, utf8: bool = False) -> bytes:
    match response:
        case Tagged(tag, status, text, code):
            return tag.encode("ascii") + b" " + _condition(status, code, text)
        case Untagged(status, text, code):
            return b"* " + _condition(status, code, text)
        case Continuation(text):
            return b"+ " + _NOT_TEXT.sub("?", text).encode("ascii")
        case Challenge(data):
            return b"+ " + base64.b64encode(data)
        case CapabilityData(capabilities):
            return b" ".join([b"* CAPABILITY", *(_atom(cap, "capability") for cap in capabilities)])
        case Exists(count):
            return b"* %s EXISTS" % _number(count, "EXISTS")
        case Recent(count):
            return b"* %s RECENT" % _number(count, "RECENT")
        case Expunge(seq):
            return b"* %s EXPUNGE" % _number(seq, "EXPUNGE", 1)
        case Flags(flags):
            return b"* FLAGS " + _flag_list(flags)
        case ListItem(name, attributes, delimiter, lsub, child_info, old_name):
            line = b"* %s %s %s %s" % (
                b"LSUB" if lsub else b"LIST",
                _flag_list(attributes),
                nstring(delimiter),
                mailbox(name, utf8),
            )
            if child_info:
                line += b' ("CHILDINFO" (%s))' % b" ".join(string(v) for v in child_info)
            if old_name is not None:
                line += b' ("OLDNAME" (%s))' % mailbox(old_name, utf8)
            return line
        case StatusData(name, items):
            # Each pair as objects: compiled, unpacking a (str, int) would turn a bool (a
            # caller's bug that _number refuses) into 0 or 1 first.
            boxed: tuple[object, ...] = items
            rendered = []
            for pair in boxed:
                item, value = cast(tuple[str, object], pair)
                rendered.append(_atom(item, "STATUS item") + b" " + _number(value, item))
            return b"* STATUS %s (%s)" % (mailbox(name, utf8), b" ".join(rendered))
        case QuotaData(root, resources):
            triples = b" ".join(
                _atom(name, "quota resource") + b" " + _number(usage, name) + b" "
                + _number(limit, name) for name, usage, limit in resources)
            return b"* QUOTA %s (%s)" % (string(root), triples)
        case QuotaRootData(name, roots):
            return b" ".join([b"* QUOTAROOT", mailbox(name, utf8), *(string(r) for r in roots)])
        case SearchData(numbers, modseq):
            line = b" ".join([b"* SEARCH", *(_number(n, "SEARCH result", 1) for n in numbers)])
            if modseq is not None and numbers:
                line += b" (MODSEQ %s)" % _number(modseq, "MODSEQ")
            return line
        case SortData(numbers, modseq):
            line = b" ".join([b"* SORT", *(_number(n, "SORT result", 1) for n in numbers)])
            if modseq is not None and numbers:
                line += b" (MODSEQ %s)" % _number(modseq, "MODSEQ")
            return line
        case ThreadData(threads):
            return b"* THREAD " + _thread_lists(threads) if threads else b"* THREAD"
        case ESearchData(tag, uid, low, high, count, found, modseq, partial, updates):
            parts = [b'* ESEARCH (TAG ' + string(tag) + b")"]
            if uid:
                parts.append(b"UID")
            if low is not None:
                parts.append(b"MIN " + _number(low, "ESEARCH MIN", 1))
            if high is not None:
                parts.append(b"MAX " + _number(high, "ESEARCH MAX", 1))
            # ALL or PARTIAL before COUNT: any order is valid, this is Dovecot's.
            if found is not None:
                parts.append(b"ALL " + _concrete_set(found))
            if partial is not None:
                parts.append(b"PARTIAL (%s:%s %s)" % (
                    _number(partial.low, "PARTIAL", 1), _number(partial.high, "PARTIAL", 1),
                    b"NIL" if partial.found is None else _concrete_set(partial.found)))
            if count is not None:
                parts.append(b"COUNT " + _number(count, "ESEARCH COUNT"))
            for update in updates:
                parts.append(update.kind.encode("ascii") + b" (" + b" ".join(
                    _number(position, "context position") + b" " + _concrete_set(ids)
                    for position, ids in update.pairs) + b")")
            if modseq is not None:
                parts.append(b"MODSEQ " + _number(modseq, "MODSEQ"))
            return b" ".join(parts)
        case NamespaceData(personal, other, shared):
            return b"* NAMESPACE %s %s %s" % (
                _namespace(personal),
                _namespace(other),
                _namespace(shared),
            )
        case IdData(parameters):
            if parameters is None:
                return b"* ID NIL"
            pairs = b" ".join(string(field) + b" " + nstring(value) for field, value in parameters)
            return b"* ID (" + pairs + b")"
        case Enabled(capabilities):
            return b" ".join([b"* ENABLED", *(_atom(cap, "capability") for cap in capabilities)])
        case Vanished(uids, earlier):
            return b"* VANISHED %s%s" % (b"(EARLIER) " if earlier else b"", _concrete_set(uids))
    raise TypeError(f"not a response: {response!r}")


def render(response: Response, *, utf8: bool = False) -> list[bytes]:
    """The wire form of ``response`` as chunks to write in order.

    :param utf8: mailbox names go out as UTF-8 (the session enabled IMAP4rev2).
    """
    if isinstance(response, FetchData):
        return _fetch_items(response.seq, response.items)
    return [_line(response, utf8) + CRLF]


def render_all(responses: Iterable[Response], *, utf8: bool = False) -> list[bytes]:
    """The chunks of several responses, in order."""
    chunks: list[bytes] = []
    for response in responses:
        chunks.extend(render(response, utf8=utf8))
    return chunks


def to_bytes(response: Response) -> bytes:
    """The wire form of ``response`` as one bytes object (small responses, tests)."""
    return b"".join(render(response))

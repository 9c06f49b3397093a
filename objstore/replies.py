"""The memcached text protocol, reply side: frozen replies, their bytes, and a client parser.

The server builds replies and writes :func:`serialize` (or :func:`serialize_into`, which
keeps large values as separate chunks so they are not copied again).  A client — the
director's memcached client — feeds what the server sent to :class:`ReplyParser`, telling it
with :meth:`ReplyParser.expect` what each pipelined request was, and takes frozen replies from
:meth:`ReplyParser.next_reply`.  Nothing here does I/O.

Theory of operation of :class:`ReplyParser`: replies arrive in request order.  Most are one
line; ``VALUE`` blocks (get), ``STAT`` lines (stats) and metadump lines run until ``END``;
``VA`` (meta) carries one data block.  The first token decides the shape, the expectation
only decides what a bare ``END`` is (an empty get, stats or metadump).  A line longer than
``max_line`` or a value longer than ``max_value`` raises :class:`ReplyError` (a
:class:`~runtime.receivebuffer.RemoteProtocolError`): the connection must then be dropped,
the stream cannot be trusted.  Bytes wait in a :class:`~runtime.receivebuffer.ReceiveBuffer`.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote_to_bytes

from objstore.errors import ObjstoreError
from runtime import errors as kinds
from runtime.receivebuffer import (
    NEED_DATA,
    BadBlockEnd,
    NeedData,
    ReceiveBuffer,
    RemoteProtocolError,
)

__all__ = [
    "E_INTERNAL",
    "NEED_DATA",
    "ErrorReply",
    "Expect",
    "MetaDebugReply",
    "MetaReply",
    "MetadumpEntry",
    "MetadumpReply",
    "Number",
    "Reply",
    "ReplyError",
    "ReplyParser",
    "StatsReply",
    "Status",
    "Value",
    "Values",
    "VersionReply",
    "error_reply",
    "format_metadump_line",
    "one_line",
    "serialize",
    "serialize_into",
]

CRLF: Final = b"\r\n"

# Status words (one line, no arguments).
STORED: Final = b"STORED"
NOT_STORED: Final = b"NOT_STORED"
EXISTS: Final = b"EXISTS"
NOT_FOUND: Final = b"NOT_FOUND"
DELETED: Final = b"DELETED"
TOUCHED: Final = b"TOUCHED"
OK: Final = b"OK"
RESET: Final = b"RESET"
END: Final = b"END"

#: Meta reply codes.
META_CODES: Final = frozenset((b"VA", b"HD", b"EN", b"NF", b"NS", b"EX", b"MN"))


@dataclass(frozen=True, slots=True)
class Status:
    """A one-word reply: STORED, NOT_STORED, EXISTS, NOT_FOUND, DELETED, TOUCHED, OK, RESET."""

    word: bytes


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """``ERROR``, ``CLIENT_ERROR <message>`` or ``SERVER_ERROR <message>``."""

    kind: bytes
    message: bytes = b""

    @property
    def line(self) -> bytes:
        return self.kind + b" " + self.message if self.message else self.kind


#: The reply to an error that is a bug (no kind): the details go to the log, not the client.
E_INTERNAL: Final = ErrorReply(b"SERVER_ERROR", b"internal error")


def error_reply(exc: BaseException) -> ErrorReply:
    """memcached's words for ``exc``: the one error map of objstored and directord.

    The client's mistake (:class:`~runtime.errors.InvalidInput`) is ``CLIENT_ERROR``;
    corruption, an unavailable dependency, a limit or a misconfiguration is
    ``SERVER_ERROR`` with the error's message on one line (memcached's own
    ``SERVER_ERROR object too large for cache`` is a limit too); a bug is
    ``SERVER_ERROR internal error``.
    """
    kind = kinds.kind_of(exc)
    if kind is None:
        return E_INTERNAL
    word = b"CLIENT_ERROR" if kind is kinds.InvalidInput else b"SERVER_ERROR"
    return ErrorReply(word, one_line(str(exc)) or kind.__name__.encode())


def one_line(text: str) -> bytes:
    """A message fit for a memcached error line: one line, printable ASCII, bounded."""
    flat = " ".join(text.split())
    return flat.encode("ascii", "replace")[:1000]


@dataclass(frozen=True, slots=True)
class Number:
    """The new value after incr/decr."""

    value: int


@dataclass(frozen=True, slots=True)
class VersionReply:
    version: bytes


@dataclass(frozen=True, slots=True)
class Value:
    """One ``VALUE`` block; ``cas`` is set for gets/gats."""

    key: bytes
    flags: int
    value: bytes
    cas: int | None = None


@dataclass(frozen=True, slots=True)
class Values:
    """A whole get/gets/gat/gats reply: the hits, in request order, then END."""

    items: tuple[Value, ...] = ()


@dataclass(frozen=True, slots=True)
class StatsReply:
    """``STAT name value`` lines then END, in server order."""

    items: tuple[tuple[bytes, bytes], ...] = ()

    def as_dict(self) -> dict[str, str]:
        return {k.decode(): v.decode(errors="replace") for k, v in self.items}


@dataclass(frozen=True, slots=True)
class MetaReply:
    """A meta reply: ``code`` is VA/HD/EN/NF/NS/EX/MN, ``flags`` the returned tokens
    (``b"c42"``, ``b"kfoo"``, ``b"W"``...) in order; ``value`` only for VA."""

    code: bytes
    flags: tuple[bytes, ...] = ()
    value: bytes | None = None

    def flag(self, letter: str) -> bytes | None:
        """The token of a returned flag (``b""`` for a bare flag), or None if absent."""
        code = ord(letter)
        for tok in self.flags:
            if tok[0] == code:
                return tok[1:]
        return None


@dataclass(frozen=True, slots=True)
class MetaDebugReply:
    """``ME <key> exp=.. la=.. cas=.. fetch=.. cls=.. size=..``; EN comes as a MetaReply."""

    key: bytes
    fields: tuple[tuple[bytes, bytes], ...]


@dataclass(frozen=True, slots=True)
class MetadumpEntry:
    """One ``lru_crawler metadump`` line.

    :param key: the key, URI-decoded (or base64-decoded when the line says ``b``).
    :param exp: absolute unix expiry, -1 for never.
    :param la: unix time of the last write or touch.
    :param size: bytes the record occupies (key + header + value).
    """

    key: bytes
    exp: int
    la: int
    cas: int
    fetch: bool
    cls: int
    size: int


@dataclass(frozen=True, slots=True)
class MetadumpReply:
    entries: tuple[MetadumpEntry, ...] = ()


Reply = (
    Status | ErrorReply | Number | VersionReply | Values | StatsReply | MetaReply
    | MetaDebugReply | MetadumpReply
)


# -- serialising (server side) ----------------------------------------------------------

_URI_SAFE: Final = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def _uriencode(key: bytes) -> bytes:
    """memcached's uriencode: keep unreserved characters, %XX the rest."""
    if all(c in _URI_SAFE for c in key):
        return key
    return b"".join(bytes((c,)) if c in _URI_SAFE else b"%%%02X" % c for c in key)


def format_metadump_line(entry: MetadumpEntry) -> bytes:
    """One metadump line as memcached writes it (ends with a bare ``\\n``)."""
    return b"key=%s exp=%d la=%d cas=%d fetch=%s cls=%d size=%d\n" % (
        _uriencode(entry.key), entry.exp, entry.la, entry.cas,
        b"yes" if entry.fetch else b"no", entry.cls, entry.size)


def serialize_into(reply: Reply, out: list[bytes]) -> None:
    """Append the wire bytes of ``reply`` to ``out``; values stay separate chunks."""
    if isinstance(reply, Values):
        for item in reply.items:
            if item.cas is None:
                out.append(b"VALUE %s %d %d\r\n" % (item.key, item.flags, len(item.value)))
            else:
                out.append(b"VALUE %s %d %d %d\r\n" % (item.key, item.flags, len(item.value),
                                                       item.cas))
            out.append(item.value)
            out.append(CRLF)
        out.append(b"END\r\n")
    elif isinstance(reply, Status):
        out.append(reply.word + CRLF)
    elif isinstance(reply, ErrorReply):
        out.append(reply.line + CRLF)
    elif isinstance(reply, Number):
        out.append(b"%d\r\n" % reply.value)
    elif isinstance(reply, MetaReply):
        head = reply.code
        if reply.code == b"VA":
            assert reply.value is not None
            head += b" %d" % len(reply.value)
        if reply.flags:
            head += b" " + b" ".join(reply.flags)
        out.append(head + CRLF)
        if reply.code == b"VA":
            assert reply.value is not None
            out.append(reply.value)
            out.append(CRLF)
    elif isinstance(reply, VersionReply):
        out.append(b"VERSION " + reply.version + CRLF)
    elif isinstance(reply, StatsReply):
        out.append(b"".join(b"STAT %s %s\r\n" % kv for kv in reply.items) + b"END\r\n")
    elif isinstance(reply, MetaDebugReply):
        fields = b" ".join(k + b"=" + v for k, v in reply.fields)
        out.append(b"ME " + reply.key + b" " + fields + CRLF)
    elif isinstance(reply, MetadumpReply):
        out.append(b"".join(format_metadump_line(e) for e in reply.entries) + b"END\r\n")
    else:  # pragma: no cover - the union is closed
        raise TypeError(f"not a reply: {reply!r}")


def serialize(reply: Reply) -> bytes:
    """The wire bytes of one reply."""
    out: list[bytes] = []
    serialize_into(reply, out)
    return b"".join(out)


# -- parsing (client side) --------------------------------------------------------------


class Expect(enum.Enum):
    """What a pipelined request's reply looks like, for :meth:`ReplyParser.expect`."""

    LINE = "line"  # storage, delete, touch, incr/decr, flush_all, verbosity, version
    GET = "get"  # get/gets/gat/gats
    STATS = "stats"
    META = "meta"  # mg/ms/md/ma/mn/me
    METADUMP = "metadump"


class ReplyError(ObjstoreError, RemoteProtocolError):
    """The server sent something that is not a memcached reply; drop the connection."""


def _parse_metadump_line(line: bytes) -> MetadumpEntry:
    fields: dict[bytes, bytes] = {}
    binary = False
    for tok in line.split(b" "):
        name, sep, value = tok.partition(b"=")
        if sep:
            fields[name] = value
        elif tok == b"b":
            binary = True
    try:
        raw = fields[b"key"]
        if binary:
            import base64

            key = base64.b64decode(raw)
        else:
            key = unquote_to_bytes(raw)
        return MetadumpEntry(key=key, exp=int(fields[b"exp"]), la=int(fields[b"la"]),
                             cas=int(fields[b"cas"]), fetch=fields.get(b"fetch") == b"yes",
                             cls=int(fields.get(b"cls", b"1")), size=int(fields[b"size"]))
    except (KeyError, ValueError) as exc:
        raise ReplyError(f"bad metadump line {line[:80]!r}") from exc


class ReplyParser:
    """Incremental parser of memcached replies (the client's side).

    :param max_line: longest reply line accepted.
    :param max_value: largest value block accepted.
    """

    def __init__(self, max_line: int = 64 * 1024, max_value: int = 64 * 1024 * 1024 + 1024) -> None:
        self._buf = ReceiveBuffer()
        self._max_line = max_line
        self._max_value = max_value
        self._expect: deque[Expect] = deque()
        # Multi-line reply being assembled.
        self._values: list[Value] | None = None
        self._stats: list[tuple[bytes, bytes]] | None = None
        self._dump: list[MetadumpEntry] | None = None
        # A data block being waited for: (kind, header fields, length).
        self._block: tuple[str, tuple[object, ...], int] | None = None

    def expect(self, kind: Expect) -> None:
        """Announce the reply shape of the next request sent (in sending order)."""
        self._expect.append(kind)

    @property
    def pending(self) -> int:
        """Announced replies not yet returned."""
        return len(self._expect)

    def feed(self, data: bytes) -> None:
        self._buf += data

    def _line(self) -> bytes | None:
        line = self._buf.maybe_extract_line()
        if line is None:
            try:
                self._buf.need_data(self._max_line, "reply line too long")
            except RemoteProtocolError as exc:
                raise ReplyError(exc.reason) from None
        return line

    def _take_block(self, length: int) -> bytes | None:
        try:
            return self._buf.maybe_extract_exactly(length, CRLF)
        except BadBlockEnd:
            raise ReplyError("value block does not end in CRLF") from None

    def _done(self, reply: Reply) -> Reply:
        if self._expect:
            self._expect.popleft()
        return reply

    def next_reply(self) -> Reply | NeedData:
        """The next complete reply, or :data:`NEED_DATA`.

        :raises ReplyError: the bytes are not a memcached reply.
        """
        while True:
            if self._block is not None:
                kind, fields, length = self._block
                data = self._take_block(length)
                if data is None:
                    return NEED_DATA
                self._block = None
                if kind == "VA":
                    return self._done(MetaReply(b"VA", fields, data))  # type: ignore[arg-type]
                key, flags, cas = fields
                assert self._values is not None
                self._values.append(Value(key, flags, data, cas))  # type: ignore[arg-type]
                continue
            line = self._line()
            if line is None:
                return NEED_DATA
            reply = self._interpret(line)
            if reply is not None:
                return self._done(reply)

    def _interpret(self, line: bytes) -> Reply | None:
        """Handle one line; return a reply when one is complete."""
        expect = self._expect[0] if self._expect else None
        if self._values is not None:
            if line == END:
                items, self._values = tuple(self._values), None
                return Values(items)
            if line.startswith(b"VALUE "):
                self._value_header(line)
                return None
            raise ReplyError(f"unexpected line in get reply: {line[:80]!r}")
        if self._stats is not None:
            if line == END:
                stats, self._stats = tuple(self._stats), None
                return StatsReply(stats)
            if line.startswith(b"STAT "):
                name, _, value = line[5:].partition(b" ")
                self._stats.append((name, value))
                return None
            raise ReplyError(f"unexpected line in stats reply: {line[:80]!r}")
        if self._dump is not None:
            if line == END:
                entries, self._dump = tuple(self._dump), None
                return MetadumpReply(entries)
            self._dump.append(_parse_metadump_line(line))
            return None
        word, _, rest = line.partition(b" ")
        if word == b"VALUE":
            self._values = []
            self._value_header(line)
            return None
        if word == b"STAT":
            self._stats = []
            return self._interpret(line)
        if word.startswith(b"key="):
            self._dump = []
            return self._interpret(line)
        if word == END:
            if expect is Expect.STATS:
                return StatsReply(())
            if expect is Expect.METADUMP:
                return MetadumpReply(())
            return Values(())
        if word in (b"ERROR", b"CLIENT_ERROR", b"SERVER_ERROR"):
            return ErrorReply(word, rest)
        if word in META_CODES:
            flags = tuple(t for t in rest.split(b" ") if t)
            if word == b"VA":
                if not flags or not flags[0].isdigit():
                    raise ReplyError(f"bad VA line {line[:80]!r}")
                length = int(flags[0])
                if length > self._max_value:
                    raise ReplyError(f"value of {length} bytes exceeds max_value")
                self._block = ("VA", flags[1:], length)
                return None
            return MetaReply(word, flags)
        if word == b"ME":
            key, _, tail = rest.partition(b" ")
            fields = tuple(tuple(t.split(b"=", 1)) for t in tail.split(b" ") if b"=" in t)
            return MetaDebugReply(key, fields)  # type: ignore[arg-type]
        if word == b"VERSION":
            return VersionReply(rest)
        if word.isdigit() and not rest:
            return Number(int(word))
        if word and word.replace(b"_", b"").isalpha() and word.isupper() and not rest:
            return Status(word)
        raise ReplyError(f"not a memcached reply: {line[:80]!r}")

    def _value_header(self, line: bytes) -> None:
        parts = line.split(b" ")
        n = len(parts)
        # Spelled out, not all(...): a multi-get reply has one such line per item.
        if not (n == 4 or n == 5) or not parts[2].isdigit() or not parts[3].isdigit() \
                or (n == 5 and not parts[4].isdigit()):
            raise ReplyError(f"bad VALUE line {line[:80]!r}")
        length = int(parts[3])
        if length > self._max_value:
            raise ReplyError(f"value of {length} bytes exceeds max_value")
        cas = int(parts[4]) if len(parts) == 5 else None
        self._block = ("VALUE", (parts[1], int(parts[2]), cas), length)

"""The memcached text protocol, request side: bytes in, frozen commands out.

Theory of operation
-------------------
:class:`CommandParser` is sans-IO (after h11): the server calls :meth:`CommandParser.feed`
with whatever the socket delivered and then :meth:`CommandParser.next_command` until it
returns :data:`NEED_DATA`.  The parser is in one of three states:

``line``
    waiting for a command line ending in ``\\n`` (a ``\\r`` before it is dropped).  A line
    longer than :attr:`Limits.max_line` bytes (:attr:`Limits.max_get_line` for a multi-get),
    complete or not, raises :class:`~runtime.receivebuffer.RemoteProtocolError` ("line too
    long") and the parser stops: memcached closes such connections too, and the server
    answers ``CLIENT_ERROR line too long`` first.
``data``
    a storage command (``set``... ``cas``, ``ms``) announced ``n`` bytes; the parser waits
    for ``n + 2`` bytes and checks that they end in ``\\r\\n`` (else ``CLIENT_ERROR bad data
    chunk``, and exactly ``n + 2`` bytes are consumed, as memcached does).
``swallow``
    the announced value exceeds :attr:`Limits.max_item_size`: the parser has already
    yielded :class:`TooLarge` and now discards ``n + 2`` bytes without buffering them.

Bytes are held in a :class:`~runtime.receivebuffer.ReceiveBuffer`: buffered bytes never
exceed ``max(max_get_line, max_item_size + 2)`` plus one ``feed`` chunk, and the line search
resumes where it stopped, so a buffer is never rescanned.

Error words, tokenisation (split on spaces only, repeated spaces collapse), the arity of each
command and the ``noreply`` rules follow memcached 1.6 (checked against memcached 1.6.18);
where memcached is lax (keys with control characters, flags above 2**32-1) we refuse with
``CLIENT_ERROR bad command line format`` as protocol.txt requires.

:func:`encode_command` is the inverse of the parser, for clients and tests.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Final, Literal

from objstore.replies import serialize
from runtime.receivebuffer import (
    NEED_DATA,
    BadBlockEnd,
    NeedData,
    ReceiveBuffer,
    RemoteProtocolError,
)
from runtime.slots import slot_setter

__all__ = [
    "MAX_KEY_LENGTH",
    "NEED_DATA",
    "Arith",
    "Command",
    "CommandParser",
    "Delete",
    "FlushAll",
    "Get",
    "Limits",
    "MetaArith",
    "MetaDebug",
    "MetaDelete",
    "MetaFlags",
    "MetaGet",
    "MetaNoop",
    "MetaSet",
    "Metadump",
    "NeedData",
    "ProtocolError",
    "Quit",
    "RemoteProtocolError",
    "Stats",
    "Store",
    "TooLarge",
    "Touch",
    "Verbosity",
    "Version",
    "encode_command",
    "is_valid_key",
    "serialize",
]

#: memcached's KEY_MAX_LENGTH.
MAX_KEY_LENGTH: Final = 250
#: Longest opaque token memcached echoes (longer ones are refused).
MAX_OPAQUE_LENGTH: Final = 32
#: memcached's REALTIME_MAXDELTA: relative expiry times are at most 30 days.
REALTIME_MAXDELTA: Final = 60 * 60 * 24 * 30

_U32: Final = 2**32 - 1
_U64: Final = 2**64 - 1
_I32_MIN: Final = -(2**31)
_I32_MAX: Final = 2**31 - 1
_INT_MAX_MINUS_2: Final = 2**31 - 3

# Exact wording of memcached's replies to malformed requests.
E_ERROR: Final = b"ERROR"
E_BAD_FORMAT: Final = b"CLIENT_ERROR bad command line format"
E_BAD_CHUNK: Final = b"CLIENT_ERROR bad data chunk"
E_LINE_TOO_LONG: Final = b"CLIENT_ERROR line too long"
E_BAD_DELTA: Final = b"CLIENT_ERROR invalid numeric delta argument"
E_BAD_EXPTIME: Final = b"CLIENT_ERROR invalid exptime argument"
E_DELETE_USAGE: Final = b"CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]"
E_INVALID_FLAG: Final = b"CLIENT_ERROR invalid flag"
E_INVALID_OR_DUP_FLAG: Final = b"CLIENT_ERROR invalid or duplicate flag"
E_DUP_FLAG: Final = b"CLIENT_ERROR duplicate flag"
E_BAD_TOKEN: Final = b"CLIENT_ERROR bad token in command line format"
E_OPAQUE_TOO_LONG: Final = b"CLIENT_ERROR opaque token too long"
E_DECODING_KEY: Final = b"CLIENT_ERROR error decoding key"
E_MS_MODE: Final = b"CLIENT_ERROR invalid mode for ms M token"
E_MA_MODE: Final = b"CLIENT_ERROR invalid mode for ma M token"


#: The reason of the RemoteProtocolError for an overlong line (the reply is E_LINE_TOO_LONG).
LINE_TOO_LONG: Final = "line too long"


@dataclass(frozen=True, slots=True)
class Limits:
    """Named limits the parser enforces.

    :param max_key: longest key in bytes (memcached: 250).
    :param max_line: longest command line, without its end; longer is fatal
        (:class:`~runtime.receivebuffer.RemoteProtocolError`).
    :param max_item_size: largest value accepted; larger is ``SERVER_ERROR object too large``.
    :param max_get_line: longest line of a get/gets/gat/gats: multi-gets of many keys are
        legitimate (memcached lets them grow without bound; we stop here).
    """

    max_key: int = MAX_KEY_LENGTH
    max_line: int = 8192
    max_item_size: int = 1024 * 1024
    max_get_line: int = 256 * 1024


# -- commands ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Get:
    """get/gets/gat/gats: ``touch`` is the new exptime for gat/gats, else None."""

    keys: tuple[bytes, ...]
    with_cas: bool = False
    touch: int | None = None

    @property
    def name(self) -> bytes:
        if self.touch is None:
            return b"gets" if self.with_cas else b"get"
        return b"gats" if self.with_cas else b"gat"


StoreName = Literal[b"set", b"add", b"replace", b"append", b"prepend", b"cas"]


@dataclass(frozen=True, slots=True, init=False)
class Store:
    """set/add/replace/append/prepend/cas with its value block."""

    name: bytes
    key: bytes
    flags: int
    exptime: int
    value: bytes
    cas_unique: int = 0
    noreply: bool = False

    def __init__(self, name: bytes, key: bytes, flags: int, exptime: int, value: bytes,
                 cas_unique: int = 0, noreply: bool = False) -> None:
        # One per set: see runtime.slots.
        _set_name(self, name)
        _set_key(self, key)
        _set_flags(self, flags)
        _set_exptime(self, exptime)
        _set_value(self, value)
        _set_cas_unique(self, cas_unique)
        _set_noreply(self, noreply)


_set_name: Final = slot_setter(Store, "name")
_set_key: Final = slot_setter(Store, "key")
_set_flags: Final = slot_setter(Store, "flags")
_set_exptime: Final = slot_setter(Store, "exptime")
_set_value: Final = slot_setter(Store, "value")
_set_cas_unique: Final = slot_setter(Store, "cas_unique")
_set_noreply: Final = slot_setter(Store, "noreply")


@dataclass(frozen=True, slots=True)
class Delete:
    key: bytes
    noreply: bool = False


@dataclass(frozen=True, slots=True)
class Arith:
    """incr (``incr=True``) or decr by ``delta`` (unsigned 64-bit)."""

    key: bytes
    delta: int
    incr: bool = True
    noreply: bool = False


@dataclass(frozen=True, slots=True)
class Touch:
    key: bytes
    exptime: int
    noreply: bool = False


@dataclass(frozen=True, slots=True)
class Version:
    pass


@dataclass(frozen=True, slots=True)
class Verbosity:
    level: int
    noreply: bool = False


@dataclass(frozen=True, slots=True)
class Quit:
    pass


@dataclass(frozen=True, slots=True)
class FlushAll:
    """flush_all [delay]: ``delay`` as sent (0 = now; memcached's exptime rules apply)."""

    delay: int = 0
    noreply: bool = False


@dataclass(frozen=True, slots=True)
class Stats:
    """stats [group ...]: ``args`` holds the words after ``stats``."""

    args: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class Slabs:
    """slabs automove|reassign ...: ``args`` holds the words after ``slabs``."""

    args: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class Metadump:
    """``lru_crawler metadump <which>``; only ``all`` (or slab class 1) is meaningful."""

    which: bytes = b"all"


@dataclass(frozen=True, slots=True)
class MetaFlags:
    """The flags of a meta command, decoded once.

    ``returns`` keeps the request order of the flags that are echoed in the reply
    (``b c f h k l O s t``), because memcached answers in the order asked.
    """

    returns: bytes = b""
    base64: bool = False
    quiet: bool = False
    value: bool = False
    opaque: bytes | None = None
    ttl: int | None = None  # T
    vivify: int | None = None  # N
    invalidate: bool = False  # I
    mode: bytes | None = None  # M
    compare_cas: int | None = None  # C
    explicit_cas: int | None = None  # E
    client_flags: int | None = None  # F
    delta: int | None = None  # D
    initial: int | None = None  # J
    recache: int | None = None  # R
    no_bump: bool = False  # u
    remove_value: bool = False  # x


@dataclass(frozen=True, slots=True)
class MetaGet:
    key: bytes
    flags: MetaFlags = field(default_factory=MetaFlags)


@dataclass(frozen=True, slots=True)
class MetaSet:
    key: bytes
    value: bytes
    flags: MetaFlags = field(default_factory=MetaFlags)


@dataclass(frozen=True, slots=True)
class MetaDelete:
    key: bytes
    flags: MetaFlags = field(default_factory=MetaFlags)


@dataclass(frozen=True, slots=True)
class MetaArith:
    key: bytes
    flags: MetaFlags = field(default_factory=MetaFlags)


@dataclass(frozen=True, slots=True)
class MetaDebug:
    key: bytes
    base64: bool = False


@dataclass(frozen=True, slots=True)
class MetaNoop:
    pass


@dataclass(frozen=True, slots=True)
class ProtocolError:
    """The request was malformed; ``message`` is memcached's reply line, without CRLF.

    ``fatal`` errors end the connection after the reply: the parser raises
    :class:`~runtime.receivebuffer.RemoteProtocolError` when the stream cannot be resynced,
    and the server answers with a fatal ProtocolError in its place, in request order.
    ``noreply`` is set when the request asked for silence, which memcached honours even for
    most errors.
    """

    message: bytes
    fatal: bool = False
    noreply: bool = False


@dataclass(frozen=True, slots=True)
class TooLarge:
    """A storage command announced more than ``max_item_size`` bytes.

    The value was discarded unread.  memcached replies ``SERVER_ERROR object too large for
    cache`` and, for ``set``, also unlinks the old value so no stale data survives.
    """

    name: bytes
    key: bytes
    noreply: bool = False


Command = (
    Get | Store | Delete | Arith | Touch | Version | Verbosity | Quit | FlushAll | Stats
    | Slabs | Metadump | MetaGet | MetaSet | MetaDelete | MetaArith | MetaDebug | MetaNoop
    | ProtocolError | TooLarge
)


# -- helpers ---------------------------------------------------------------------------


def is_valid_key(key: bytes, max_key: int = MAX_KEY_LENGTH) -> bool:
    """A text-protocol key: 1..max_key bytes, no space or control character."""
    if not 0 < len(key) <= max_key:
        return False
    # bytes.translate with deletechars is a fast C loop over the key.
    return not key.translate(None, _KEY_ALLOWED_DELETE)


_KEY_ALLOWED_DELETE: Final = bytes(range(0x21, 0x7F)) + bytes(range(0x80, 0x100))


def _is_get(line: bytes) -> bool:
    """Only a get may pass max_line (up to max_get_line): multi-gets of many keys."""
    return line.lstrip(b" ").startswith((b"get ", b"gets ", b"gat ", b"gats "))


def _uint(token: bytes, limit: int) -> int | None:
    """Parse an unsigned decimal like memcached's safe_strtoul (``+`` and zeros allowed)."""
    digits = token[1:] if token[:1] == b"+" else token
    if not digits or not digits.isdigit() or len(digits) > 20:
        return None
    value = int(digits)
    return value if value <= limit else None


def _int(token: bytes, low: int, high: int) -> int | None:
    """Parse a signed decimal within [low, high]."""
    if token[:1] == b"-":
        value = _uint(token[1:], -low)
        return None if value is None else -value
    value = _uint(token, high)
    return value


class _Refuse(Exception):
    """Internal: abort parsing the current line with this reply."""

    def __init__(self, message: bytes, noreply: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.noreply = noreply


def _key(token: bytes, limits: Limits) -> bytes:
    if not is_valid_key(token, limits.max_key):
        raise _Refuse(E_BAD_FORMAT)
    return token


# Per meta command: flags that are echoed, flags that carry a number and how big it may be.
_META_RETURN_FLAGS: Final = {
    b"mg": frozenset(b"bcfhklOst"),
    b"ms": frozenset(b"bcklOs"),
    b"md": frozenset(b"bckO"),  # memcached accepts c on md and returns nothing for it
    b"ma": frozenset(b"bcklOst"),
}
_META_VALUE_FLAGS: Final = {
    b"mg": frozenset(b"vquE"),
    b"ms": frozenset(b"qI"),
    b"md": frozenset(b"qIx"),
    b"ma": frozenset(b"qv"),
}
_META_NUMERIC_FLAGS: Final = {
    b"mg": frozenset(b"TNRE"),
    b"ms": frozenset(b"TFCEN"),
    b"md": frozenset(b"TCE"),
    b"ma": frozenset(b"TNJDCE"),
}
_NUMERIC_LIMITS: Final = {
    ord("T"): (_I32_MIN, _I32_MAX),
    ord("N"): (_I32_MIN, _I32_MAX),
    ord("R"): (0, _I32_MAX),
    ord("F"): (0, _U32),
    ord("C"): (0, _U64),
    ord("E"): (0, _U64),
    ord("D"): (0, _U64),
    ord("J"): (0, _U64),
}
_NUMERIC_FIELD: Final = {
    ord("T"): "ttl",
    ord("N"): "vivify",
    ord("R"): "recache",
    ord("F"): "client_flags",
    ord("C"): "compare_cas",
    ord("E"): "explicit_cas",
    ord("D"): "delta",
    ord("J"): "initial",
}
_MS_MODES: Final = frozenset((b"E", b"A", b"P", b"R", b"S"))
_MA_MODES: Final = {b"I": b"I", b"i": b"I", b"+": b"I", b"D": b"D", b"d": b"D", b"-": b"D"}


def _meta_flags(cmd: bytes, tokens: list[bytes]) -> MetaFlags:
    """Decode meta flags; errors in memcached's per-command wording (a flag given twice
    is refused, as memcached refuses it)."""
    invalid = E_INVALID_OR_DUP_FLAG if cmd in (b"md", b"ma") else E_INVALID_FLAG
    duplicate = E_INVALID_OR_DUP_FLAG if cmd in (b"md", b"ma") else E_DUP_FLAG
    bad_number = E_INVALID_OR_DUP_FLAG if cmd == b"ma" else E_BAD_TOKEN
    returns = bytearray()
    kwargs: dict[str, object] = {}
    return_flags = _META_RETURN_FLAGS[cmd]
    value_flags = _META_VALUE_FLAGS[cmd]
    numeric_flags = _META_NUMERIC_FLAGS[cmd]
    seen = 0  # one bit per flag letter (all are ASCII letters)
    for tok in tokens:
        flag = tok[0]
        arg = tok[1:]
        bit = 1 << (flag & 0x7F)
        if seen & bit:
            raise _Refuse(duplicate)
        seen |= bit
        if flag in return_flags:
            if flag == ord("O"):
                if len(arg) > MAX_OPAQUE_LENGTH:
                    raise _Refuse(E_OPAQUE_TOO_LONG)
                kwargs["opaque"] = arg
            if flag == ord("b"):
                kwargs["base64"] = True
            returns.append(flag)
        elif flag in value_flags:
            if flag == ord("v"):
                kwargs["value"] = True
            elif flag == ord("q"):
                kwargs["quiet"] = True
            elif flag == ord("I"):
                kwargs["invalidate"] = True
            elif flag == ord("u"):
                kwargs["no_bump"] = True
            elif flag == ord("x"):
                kwargs["remove_value"] = True
            elif flag == ord("E") and _uint(arg, _U64) is None:
                # mg accepts E (newer memcached) but it has no effect on a read.
                raise _Refuse(bad_number)
        elif flag in numeric_flags:
            low, high = _NUMERIC_LIMITS[flag]
            number = _int(arg, low, high)
            if number is None:
                raise _Refuse(bad_number)
            kwargs[_NUMERIC_FIELD[flag]] = number
        elif flag == ord("M") and cmd in (b"ms", b"ma"):
            if cmd == b"ms":
                if arg not in _MS_MODES:
                    raise _Refuse(E_MS_MODE)
                kwargs["mode"] = arg
            else:
                mode = _MA_MODES.get(arg)
                if mode is None:
                    raise _Refuse(E_MA_MODE)
                kwargs["mode"] = mode
        else:
            raise _Refuse(invalid)
    kwargs["returns"] = bytes(returns)
    return MetaFlags(**kwargs)  # type: ignore[arg-type]


def _meta_key(token: bytes, flags: MetaFlags, limits: Limits) -> bytes:
    if len(token) > limits.max_key:
        raise _Refuse(E_BAD_FORMAT)
    if flags.base64:
        try:
            key = base64.b64decode(token, validate=True)
        except (binascii.Error, ValueError):
            raise _Refuse(E_DECODING_KEY) from None
        if not key or len(key) > limits.max_key:
            raise _Refuse(E_DECODING_KEY)
        return key
    return _key(token, limits)


# -- the parser --------------------------------------------------------------------------

_STORE_NAMES: Final = frozenset((b"set", b"add", b"replace", b"append", b"prepend", b"cas"))
_GET_NAMES: Final = {b"get": (False, False), b"gets": (True, False), b"gat": (False, True),
                     b"gats": (True, True)}


class CommandParser:
    """Incremental parser of the memcached text protocol (requests).

    :param limits: the named limits to enforce.
    """

    __slots__ = ("_buf", "_closed", "_limits", "_pending", "_swallow")

    def __init__(self, limits: Limits | None = None) -> None:
        self._limits = limits or Limits()
        self._buf = ReceiveBuffer()
        self._swallow = 0  # bytes still to discard after TooLarge
        # A storage command line already parsed, waiting for its data block:
        # (name, key, flags, exptime, length, cas, noreply, meta flags or None)
        self._pending: tuple[bytes, bytes, int, int, int, int, bool, MetaFlags | None] | None = None
        self._closed = False

    @property
    def limits(self) -> Limits:
        return self._limits

    def set_limits(self, limits: Limits) -> None:
        """Enforce ``limits`` from the next command on (a connection that authenticated
        leaves the small limits of an unauthenticated one, :mod:`objstore.auth`)."""
        self._limits = limits

    @property
    def buffered(self) -> int:
        """Bytes held but not yet parsed (for tests of the memory bound)."""
        return len(self._buf)

    @property
    def closed(self) -> bool:
        """True after ``quit`` or a line too long; further input is ignored."""
        return self._closed or self._buf.failed

    def feed(self, data: bytes) -> None:
        """Add bytes received from the peer."""
        if self._closed or not data:
            return
        if self._swallow:
            n = min(self._swallow, len(data))
            self._swallow -= n
            if n == len(data):
                return
            data = data[n:]
        self._buf += data

    def next_command(self) -> Command | NeedData:
        """Return the next complete command, or :data:`NEED_DATA`.

        :raises RemoteProtocolError: a line is longer than the limits allow (memcached's
            ``CLIENT_ERROR line too long``); the parser stays failed.
        """
        if self._closed:
            return NEED_DATA
        buf = self._buf
        if self._swallow:
            # feed() may have buffered bytes in the same call that announced the swallow.
            self._swallow -= buf.discard_at_most(self._swallow)
            if self._swallow:
                return NEED_DATA
        if self._pending is not None:
            return self._data_block()
        line = buf.maybe_extract_line()
        if line is None:
            if buf.peek(1) == b"\x80":
                return self._binary()
            limits = self._limits
            limit = limits.max_line
            if len(buf) > limit and _is_get(buf.peek(128)):
                limit = limits.max_get_line
            return buf.need_data(limit, LINE_TOO_LONG)
        if len(line) > self._limits.max_line and (
                len(line) > self._limits.max_get_line or not _is_get(line[:128])):
            raise buf.fail(LINE_TOO_LONG)
        cmd = self._parse_line(line)
        if cmd is None:  # a storage command: its data block follows
            return self._data_block()
        return cmd

    def _binary(self) -> ProtocolError:
        """The binary protocol's magic byte: not spoken here, and the stream cannot be read
        as text any more: ERROR, then the connection closes."""
        self._closed = True
        self._buf.clear()
        return ProtocolError(E_ERROR, fatal=True)

    def _data_block(self) -> Command | NeedData:
        assert self._pending is not None
        name, key, flags, exptime, length, cas, noreply, meta = self._pending
        try:
            value = self._buf.maybe_extract_exactly(length, b"\r\n")
        except BadBlockEnd:
            # memcached consumed exactly n + 2 bytes too.  A meta set always reports
            # errors; classic commands honour noreply.
            self._pending = None
            return ProtocolError(E_BAD_CHUNK, noreply=noreply and meta is None)
        if value is None:
            return NEED_DATA
        self._pending = None
        if meta is not None:
            return MetaSet(key, value, meta)
        return Store(name, key, flags, exptime, value, cas, noreply)

    def _too_large(self, name: bytes, key: bytes, length: int, noreply: bool) -> TooLarge:
        # Discard the value and its CRLF as it arrives instead of buffering it.
        self._swallow_now(length + 2)
        return TooLarge(name, key, noreply)

    def _parse_line(self, line: bytes) -> Command | None:
        tokens = [t for t in line.split(b" ") if t]
        if not tokens:
            return ProtocolError(E_ERROR)
        name = tokens[0]
        try:
            if name in _GET_NAMES:
                return self._get(name, tokens)
            if name in _STORE_NAMES:
                return self._store(name, tokens)
            if len(name) == 2 and name[0] == 0x6D:  # "m?": meta commands
                return self._meta(name, tokens)
            handler = _SIMPLE.get(name)
            if handler is None:
                if name[0] == 0x80:
                    return self._binary()
                if len(tokens) > 1 and tokens[-1].startswith(b"HTTP/"):
                    # An HTTP request sent to a memcached port (a cross-protocol attack
                    # or a lost browser): memcached closes without a word, so do we.
                    self._closed = True
                    return ProtocolError(b"", fatal=True, noreply=True)
                return ProtocolError(E_ERROR)
            return handler(self, tokens)
        except _Refuse as exc:
            return ProtocolError(exc.message, noreply=exc.noreply)

    # Each method below receives the tokens including the command name.

    def _get(self, name: bytes, tokens: list[bytes]) -> Command:
        with_cas, touch = _GET_NAMES[name]
        if len(tokens) < 2:
            return ProtocolError(E_ERROR)
        exptime: int | None = None
        first = 1
        if touch:
            exptime = _int(tokens[1], _I32_MIN, _I32_MAX)
            if exptime is None:
                return ProtocolError(E_BAD_EXPTIME)
            first = 2
        keys = tuple(tokens[first:])
        max_key = self._limits.max_key
        for key in keys:
            if not is_valid_key(key, max_key):
                return ProtocolError(E_BAD_FORMAT)
        return Get(keys, with_cas, exptime)

    def _store(self, name: bytes, tokens: list[bytes]) -> Command | None:
        is_cas = name == b"cas"
        base = 6 if is_cas else 5
        n = len(tokens)
        if n not in (base, base + 1):
            return ProtocolError(E_ERROR)
        noreply = n == base + 1 and tokens[-1] == b"noreply"
        key = tokens[1]
        flags = _uint(tokens[2], _U32)
        exptime = _int(tokens[3], _I32_MIN, _I32_MAX)
        length = _int(tokens[4], _I32_MIN, _I32_MAX)
        cas = _uint(tokens[5], _U64) if is_cas else 0
        if (flags is None or exptime is None or length is None or cas is None
                or not is_valid_key(key, self._limits.max_key)):
            return ProtocolError(E_BAD_FORMAT, noreply=noreply)
        if length < 0 or length > _INT_MAX_MINUS_2:
            return ProtocolError(E_BAD_FORMAT, noreply=noreply)
        if length > self._limits.max_item_size:
            return self._too_large(name, key, length, noreply)
        self._pending = (name, key, flags, exptime, length, cas, noreply, None)
        return None

    def _meta(self, name: bytes, tokens: list[bytes]) -> Command | None:
        if name == b"mn":
            return MetaNoop()
        if name == b"me":
            if len(tokens) < 2:
                return ProtocolError(E_BAD_FORMAT)
            b64 = b"b" in tokens[2:]
            flags = MetaFlags(base64=b64)
            return MetaDebug(_meta_key(tokens[1], flags, self._limits), b64)
        if name not in _META_RETURN_FLAGS:
            return ProtocolError(E_ERROR)
        if len(tokens) < 2:
            return ProtocolError(E_ERROR)
        if name == b"ms":
            if len(tokens) < 3:
                return ProtocolError(E_BAD_FORMAT)
            length = _int(tokens[2], _I32_MIN, _I32_MAX)
            if length is None or length < 0 or length > _INT_MAX_MINUS_2:
                return ProtocolError(E_BAD_FORMAT)
            try:
                flags = _meta_flags(name, tokens[3:])
                key = _meta_key(tokens[1], flags, self._limits)
            except _Refuse:
                # The data block still follows; memcached swallows it after the error.
                if length > self._limits.max_item_size:
                    self._too_large(name, b"", length, False)
                else:
                    self._swallow_now(length + 2)
                raise
            if length > self._limits.max_item_size:
                return self._too_large(name, key, length, False)
            self._pending = (name, key, 0, 0, length, 0, False, flags)
            return None
        flags = _meta_flags(name, tokens[2:])
        key = _meta_key(tokens[1], flags, self._limits)
        if name == b"mg":
            return MetaGet(key, flags)
        if name == b"md":
            return MetaDelete(key, flags)
        return MetaArith(key, flags)

    def _swallow_now(self, count: int) -> None:
        self._swallow = count - self._buf.discard_at_most(count)

    def _delete(self, tokens: list[bytes]) -> Command:
        n = len(tokens)
        if not 2 <= n <= 4:
            return ProtocolError(E_ERROR)
        noreply = tokens[-1] == b"noreply"
        if n - noreply > 2 and tokens[2] != b"0":
            # memcached still accepts the obsolete "delete <key> 0".
            return ProtocolError(E_DELETE_USAGE, noreply=noreply)
        if n - noreply > 3:
            return ProtocolError(E_DELETE_USAGE, noreply=noreply)
        return Delete(_key(tokens[1], self._limits), noreply)

    def _arith(self, tokens: list[bytes]) -> Command:
        n = len(tokens)
        if n not in (3, 4):
            return ProtocolError(E_ERROR)
        noreply = n == 4 and tokens[3] == b"noreply"
        key = _key(tokens[1], self._limits)
        delta = _uint(tokens[2], _U64)
        if delta is None:
            return ProtocolError(E_BAD_DELTA, noreply=noreply)
        return Arith(key, delta, tokens[0] == b"incr", noreply)

    def _touch(self, tokens: list[bytes]) -> Command:
        n = len(tokens)
        if n not in (3, 4):
            return ProtocolError(E_ERROR)
        noreply = n == 4 and tokens[3] == b"noreply"
        key = _key(tokens[1], self._limits)
        exptime = _int(tokens[2], _I32_MIN, _I32_MAX)
        if exptime is None:
            return ProtocolError(E_BAD_EXPTIME, noreply=noreply)
        return Touch(key, exptime, noreply)

    def _version(self, tokens: list[bytes]) -> Command:
        return Version()

    def _quit(self, tokens: list[bytes]) -> Command:
        self._closed = True
        return Quit()

    def _verbosity(self, tokens: list[bytes]) -> Command:
        n = len(tokens)
        if n not in (2, 3):
            return ProtocolError(E_ERROR)
        noreply = tokens[-1] == b"noreply"
        level = _uint(tokens[1], _U32)
        if level is None:
            return ProtocolError(E_BAD_FORMAT, noreply=noreply)
        return Verbosity(level, noreply)

    def _flush_all(self, tokens: list[bytes]) -> Command:
        n = len(tokens)
        if n > 3:
            return ProtocolError(E_ERROR)
        noreply = tokens[-1] == b"noreply"
        delay = 0
        if n - noreply >= 2:
            parsed = _int(tokens[1], _I32_MIN, _I32_MAX)
            if parsed is None:
                return ProtocolError(E_BAD_EXPTIME, noreply=noreply)
            delay = parsed
        return FlushAll(delay, noreply)

    def _stats(self, tokens: list[bytes]) -> Command:
        return Stats(tuple(tokens[1:]))

    def _slabs(self, tokens: list[bytes]) -> Command:
        if len(tokens) < 2:
            return ProtocolError(E_ERROR)
        return Slabs(tuple(tokens[1:]))

    def _lru_crawler(self, tokens: list[bytes]) -> Command:
        if len(tokens) >= 3 and tokens[1] == b"metadump":
            return Metadump(tokens[2])
        return ProtocolError(E_ERROR)


_SIMPLE = {
    b"delete": CommandParser._delete,
    b"incr": CommandParser._arith,
    b"decr": CommandParser._arith,
    b"touch": CommandParser._touch,
    b"version": CommandParser._version,
    b"quit": CommandParser._quit,
    b"verbosity": CommandParser._verbosity,
    b"flush_all": CommandParser._flush_all,
    b"stats": CommandParser._stats,
    b"slabs": CommandParser._slabs,
    b"lru_crawler": CommandParser._lru_crawler,
}


# -- the other direction: commands to bytes (clients, tests) -----------------------------


def _meta_flag_tokens(flags: MetaFlags) -> list[bytes]:
    out: list[bytes] = []
    for flag in flags.returns:
        if flag == ord("O"):
            out.append(b"O" + (flags.opaque or b""))
        else:
            out.append(bytes((flag,)))
    for attr, letter in (("value", b"v"), ("quiet", b"q"), ("invalidate", b"I"),
                         ("no_bump", b"u"), ("remove_value", b"x")):
        if getattr(flags, attr):
            out.append(letter)
    for code, attr in _NUMERIC_FIELD.items():
        number = getattr(flags, attr)
        if number is not None:
            out.append(bytes((code,)) + str(number).encode())
    if flags.mode is not None:
        out.append(b"M" + flags.mode)
    return out


def _wire_key(key: bytes, flags: MetaFlags) -> bytes:
    return base64.b64encode(key) if flags.base64 else key


def encode_command(cmd: Command) -> bytes:
    """Serialise a command as a client sends it (the inverse of :class:`CommandParser`).

    :raises TypeError: for :class:`ProtocolError`/:class:`TooLarge`, which are parser
        outcomes, not requests.
    """
    nr = b" noreply"
    if isinstance(cmd, Get):
        head = cmd.name if cmd.touch is None else cmd.name + b" " + str(cmd.touch).encode()
        return head + b" " + b" ".join(cmd.keys) + b"\r\n"
    if isinstance(cmd, Store):
        parts = [cmd.name, cmd.key, str(cmd.flags).encode(), str(cmd.exptime).encode(),
                 str(len(cmd.value)).encode()]
        if cmd.name == b"cas":
            parts.append(str(cmd.cas_unique).encode())
        line = b" ".join(parts) + (nr if cmd.noreply else b"")
        return line + b"\r\n" + cmd.value + b"\r\n"
    if isinstance(cmd, Delete):
        return b"delete " + cmd.key + (nr if cmd.noreply else b"") + b"\r\n"
    if isinstance(cmd, Arith):
        word = b"incr " if cmd.incr else b"decr "
        return (word + cmd.key + b" " + str(cmd.delta).encode()
                + (nr if cmd.noreply else b"") + b"\r\n")
    if isinstance(cmd, Touch):
        return (b"touch " + cmd.key + b" " + str(cmd.exptime).encode()
                + (nr if cmd.noreply else b"") + b"\r\n")
    if isinstance(cmd, Version):
        return b"version\r\n"
    if isinstance(cmd, Verbosity):
        return b"verbosity " + str(cmd.level).encode() + (nr if cmd.noreply else b"") + b"\r\n"
    if isinstance(cmd, Quit):
        return b"quit\r\n"
    if isinstance(cmd, FlushAll):
        return b"flush_all " + str(cmd.delay).encode() + (nr if cmd.noreply else b"") + b"\r\n"
    if isinstance(cmd, Stats):
        return b" ".join((b"stats", *cmd.args)) + b"\r\n"
    if isinstance(cmd, Slabs):
        return b" ".join((b"slabs", *cmd.args)) + b"\r\n"
    if isinstance(cmd, Metadump):
        return b"lru_crawler metadump " + cmd.which + b"\r\n"
    if isinstance(cmd, MetaNoop):
        return b"mn\r\n"
    if isinstance(cmd, MetaDebug):
        key = base64.b64encode(cmd.key) if cmd.base64 else cmd.key
        return b"me " + key + (b" b" if cmd.base64 else b"") + b"\r\n"
    if isinstance(cmd, MetaGet | MetaDelete | MetaArith):
        word = {MetaGet: b"mg", MetaDelete: b"md", MetaArith: b"ma"}[type(cmd)]
        return b" ".join((word, _wire_key(cmd.key, cmd.flags),
                          *_meta_flag_tokens(cmd.flags))) + b"\r\n"
    if isinstance(cmd, MetaSet):
        return (b" ".join((b"ms", _wire_key(cmd.key, cmd.flags), str(len(cmd.value)).encode(),
                           *_meta_flag_tokens(cmd.flags))) + b"\r\n" + cmd.value + b"\r\n")
    raise TypeError(f"{type(cmd).__name__} is a parser outcome, not a request")

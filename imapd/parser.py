"""The sans-IO IMAP command parser: bytes in with :meth:`Parser.feed`, events out with
:meth:`Parser.next_event`.

Theory of operation
-------------------
IMAP commands are lines, except that a line ending in a literal marker (``{n}``, ``{n+}`` or
``~{n}``) is followed by ``n`` raw octets and then by more of the same command. The parser
*frames* the stream into whole commands and hands each to :func:`imapd.grammar.parse_command`.

States (see :class:`ParserState`):

``COMMAND``
    Looking for the end of a command line. A line without a marker completes the command:
    the grammar runs and the event is the :class:`~imapd.commands.Command` or a
    :class:`BadCommand`. A line with a marker starts a literal; a synchronizing one first
    yields :class:`ContinuationNeeded` and moves to ``AWAIT_DECISION``.
``AWAIT_DECISION``
    The server must call :meth:`Parser.accept_literal` (then send ``+ ...``) or
    :meth:`Parser.reject_literal` (then send a tagged NO/BAD; the client will not send the
    literal, and its next line is a new command). Until then :data:`NEED_DATA` is returned.
``LITERAL``
    Collecting a literal's octets; then back to ``COMMAND`` for the rest of the command.
``SKIP_LITERAL`` / ``SKIP_LINE``
    Discarding the rest of a command that has already been answered (line too long,
    non-synchronizing literal too large): octets are counted, not stored, and non-synchronizing
    literals announced by the discarded text are skipped too, so the next command is found
    at its real start.
``IDLE`` / ``AUTHENTICATE``
    Entered by :meth:`Parser.start_idle` and :meth:`Parser.start_authenticate`: the next line
    is raw (``DONE``, or a base64 SASL response / ``*``) and yields :class:`IdleDone` or
    :class:`AuthResponse`; both return to ``COMMAND``.
``FATAL``
    More than :attr:`Limits.max_buffer` octets were buffered without completing an event
    (the rule of :class:`~runtime.receivebuffer.ReceiveBuffer`), or a refused literal was too
    large to skip: :meth:`Parser.next_event` raises
    :class:`~runtime.receivebuffer.RemoteProtocolError` from then on; the server says BYE
    and closes.

Every octet is examined a bounded number of times: bytes wait in a
:class:`~runtime.receivebuffer.ReceiveBuffer`, whose search for a line end resumes where the
last one stopped; literal octets are moved once into their own buffer, and consumed input
is dropped in amortised O(1). Feeding a 10 MB literal one byte or 4 KiB at a time is linear.
"""

from __future__ import annotations

import base64
import binascii
import enum
import re
from dataclasses import dataclass
from typing import Protocol

from imapd.commands import Command
from imapd.grammar import COMMAND_NAMES, UID_COMMAND_NAMES, CommandError, parse_command
from imapd.lexer import Frame
from imapd.response import TOOBIG, BadCharset, ResponseCode, Status, Tagged, Untagged
from runtime.receivebuffer import NEED_DATA, NeedData, ReceiveBuffer, RemoteProtocolError

__all__ = [
    "NEED_DATA",
    "AuthResponse",
    "BadCommand",
    "ContinuationNeeded",
    "Event",
    "IdleDone",
    "InputFilter",
    "Limits",
    "NeedData",
    "Parser",
    "ParserState",
    "RemoteProtocolError",
]

KiB = 1024
MiB = 1024 * KiB


@dataclass(frozen=True)
class Limits:
    """The parser's named limits; each is enforced by :class:`Parser`.

    :ivar max_line: octets of command text in one command, literals excluded (all its lines
        together); also the longest IDLE or AUTHENTICATE line.
    :ivar max_literal: the largest literal outside APPEND (passwords, search strings, names).
    :ivar max_append_literal: the largest literal of an APPEND (one message).
    :ivar max_command_literals: all literal octets of one command together (MULTIAPPEND).
    :ivar max_discard: the largest refused non-synchronizing literal the parser reads and
        throws away; beyond it the connection is given up (RemoteProtocolError).
    :ivar max_buffer: octets buffered without completing an event; beyond it,
        RemoteProtocolError.  The adapter also gives up when it holds more than this
        unconsumed, and keeps below it by pausing the transport at :attr:`pause_buffer`.
    :ivar pause_buffer: octets buffered at which :attr:`Parser.should_pause` turns true.
    :ivar max_search_depth: deepest nesting of SEARCH criteria (parentheses, NOT, OR).
    :ivar max_prelogin_literal: the largest literal of any command before
        :meth:`Parser.end_prelogin` (RFC 7888 LITERAL-'s bound): a client that has not
        logged in has no use for more, and a larger non-synchronizing one is answered BAD
        and the connection given up instead of reading (or skipping) its octets.
    """

    max_line: int = 64 * KiB
    max_literal: int = 64 * KiB
    max_append_literal: int = 64 * MiB
    max_command_literals: int = 64 * MiB + 64 * KiB
    max_discard: int = 256 * MiB
    max_buffer: int = 1 * MiB
    pause_buffer: int = 256 * KiB
    max_search_depth: int = 64
    max_prelogin_literal: int = 4 * KiB

    def __post_init__(self) -> None:
        for name in (
            "max_line",
            "max_literal",
            "max_append_literal",
            "max_command_literals",
            "max_buffer",
            "pause_buffer",
            "max_search_depth",
            "max_prelogin_literal",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"Limits.{name} must be positive")
        if self.max_discard < 0:
            raise ValueError("Limits.max_discard must not be negative")
        if self.max_buffer <= self.max_line:
            raise ValueError("Limits.max_buffer must exceed max_line, or long lines turn fatal")
        if self.pause_buffer > self.max_buffer:
            raise ValueError("Limits.pause_buffer must not exceed max_buffer")


# -- events -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ContinuationNeeded:
    """A synchronizing literal of ``size`` octets was announced by command ``tag``.

    The server calls :meth:`Parser.accept_literal` and sends ``+ Ready``, or
    :meth:`Parser.reject_literal` and sends a tagged NO/BAD.

    :ivar command: the command word(s) read so far, upper-case (``APPEND``, ``UID SEARCH``);
        empty if unreadable.
    """

    tag: str | None
    command: str
    size: int


@dataclass(frozen=True)
class BadCommand:
    """The client sent something that is not a valid command; the rest of it is dropped.

    :ivar tag: the command's tag, or None when it could not be read (answer untagged).
    :ivar status: BAD for syntax and limits; NO where an RFC says so (unknown SEARCH charset,
        APPEND literal too large).
    :ivar code: the response code to send, if any (TOOBIG, BADCHARSET).
    :ivar clears_saved: a ``SEARCH RETURN (SAVE)`` failed: the session empties ``$``.
    """

    tag: str | None
    text: str
    code: ResponseCode | None = None
    status: Status = Status.BAD
    clears_saved: bool = False

    def response(self) -> Tagged | Untagged:
        """The reply the server sends for this event."""
        if self.tag is None:
            return Untagged(Status.BAD, self.text, self.code)
        return Tagged(self.tag, self.status, self.text, self.code)


@dataclass(frozen=True)
class IdleDone:
    """The line that ends IDLE arrived; ``ok`` is False if it was not ``DONE`` (answer BAD)."""

    tag: str
    ok: bool


@dataclass(frozen=True)
class AuthResponse:
    """A SASL client response during AUTHENTICATE; ``data`` is None if the client sent ``*``
    to cancel (answer BAD)."""

    tag: str
    data: bytes | None


Event = Command | NeedData | ContinuationNeeded | BadCommand | IdleDone | AuthResponse


class ParserState(enum.Enum):
    """Where the parser is in the stream (see the module docstring)."""

    COMMAND = "COMMAND"
    AWAIT_DECISION = "AWAIT_DECISION"
    LITERAL = "LITERAL"
    SKIP_LITERAL = "SKIP_LITERAL"
    SKIP_LINE = "SKIP_LINE"
    IDLE = "IDLE"
    AUTHENTICATE = "AUTHENTICATE"
    FATAL = "FATAL"


_MARKER_AT_END = re.compile(rb"(~?)\{([0-9]{1,20})(\+?)\}\Z")
_MARKER_TAIL = 32  # longer than any marker we act on: "~{" + 20 digits + "+}"
_HEAD = re.compile(rb"([^\x00-\x20\x7f-\xff(){%*\"\\+]+) ([A-Za-z]+)(?: ([A-Za-z]+))?")
#: The reason given when more than max_buffer octets wait without completing an event.
TOO_MUCH_DATA = "Too much pipelined data"


@dataclass(frozen=True)
class _Marker:
    size: int
    sync: bool
    binary: bool


def _marker(line: bytes) -> _Marker | None:
    found = _MARKER_AT_END.search(line, max(0, len(line) - _MARKER_TAIL))
    if found is None:
        return None
    return _Marker(int(found.group(2)), sync=not found.group(3), binary=bool(found.group(1)))


def _known_command(words: str) -> bool:
    if words.startswith("UID "):
        return words[4:] in UID_COMMAND_NAMES
    return words in COMMAND_NAMES


def _head(first_line: bytes) -> tuple[str | None, str]:
    """The tag and command word(s) of a (possibly partial) first line."""
    found = _HEAD.match(first_line)
    if found is None:
        space = first_line.find(b" ")
        raw_tag = first_line[: space if space >= 0 else len(first_line)]
        valid = _HEAD.match(raw_tag + b" X") is not None and raw_tag != b"*"
        return (raw_tag.decode("ascii") if valid else None), ""
    tag = found.group(1).decode("ascii")
    words = found.group(2).decode("ascii").upper()
    if words == "UID" and found.group(3):
        words += " " + found.group(3).decode("ascii").upper()
    return (None if tag == "*" else tag), words


class InputFilter(Protocol):
    """What :meth:`Parser.start_filter` puts between the client's bytes and the parser: a
    transformation of the stream (COMPRESS=DEFLATE's :class:`imapd.deflate.Inflater`)."""

    def feed(self, data: bytes) -> None:
        """Add octets received from the client."""

    def read(self, limit: int) -> bytes:
        """At most ``limit`` octets for the parser; empty when none are ready.

        :raises RemoteProtocolError: the stream is invalid.
        """
        ...

    @property
    def pending(self) -> int:
        """Octets fed and not read yet."""
        ...

    @property
    def ready(self) -> bool:
        """:meth:`read` may return octets (input is pending, or output is held back)."""
        ...


#: The most octets the parser takes from an :class:`InputFilter` at once.
FILTER_CHUNK = 64 * KiB


class Parser:
    """Turns the client's byte stream into IMAP events; see the module docstring."""

    def __init__(self, limits: Limits | None = None, *, prelogin: bool = False) -> None:
        """:param prelogin: the client has not logged in yet: literals are bound by
        :attr:`Limits.max_prelogin_literal` until :meth:`end_prelogin`."""
        self.limits = limits or Limits()
        self._buf = ReceiveBuffer()
        self._state = ParserState.COMMAND
        # The command being framed.
        self._segments: list[bytes] = []
        self._literals: list[bytes] = []
        self._text_length = 0
        self._literal_total = 0
        self._tag: str | None = None
        self._command = ""
        # The literal being read or skipped.
        self._literal = bytearray()
        self._remaining = 0
        self._pending: _Marker | None = None
        self._utf8_names = False
        # Skipping: the last octets of the discarded line, to spot a literal marker.
        self._skip_tail = b""
        # IDLE / AUTHENTICATE.
        self._mode_tag = ""
        self._prelogin = prelogin
        self._filter: InputFilter | None = None

    # -- input ------------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Add bytes received from the client. Never raises for any input."""
        if self._state is ParserState.FATAL or not data:
            return
        if self._filter is not None:
            self._filter.feed(data)  # read when next_event needs it
            return
        self._feed_plain(data)

    def _feed_plain(self, data: bytes) -> None:
        if self._state is ParserState.LITERAL and not self._buf:
            # Fast path: literal octets go straight to the literal, not via the buffer.
            take = min(self._remaining, len(data))
            self._literal += memoryview(data)[:take]
            self._remaining -= take
            data = data[take:]
            if not data:
                return
        self._buf += data

    @property
    def buffered_bytes(self) -> int:
        """Octets fed but not yet consumed (literal octets already collected excluded);
        with a filter, its pending input too."""
        if self._filter is not None:
            return len(self._buf) + self._filter.pending
        return len(self._buf)

    @property
    def should_pause(self) -> bool:
        """The adapter should stop reading (``pauseProducing``) until events are consumed."""
        return self.buffered_bytes >= self.limits.pause_buffer

    @property
    def state(self) -> ParserState:
        """The current state (for the adapter's sanity checks and tests)."""
        return self._state

    # -- decisions and modes --------------------------------------------------------------------

    def accept_literal(self) -> None:
        """Accept the synchronizing literal announced by the last :class:`ContinuationNeeded`.

        :raises RuntimeError: if no literal is awaiting a decision.
        """
        if self._state is not ParserState.AWAIT_DECISION or self._pending is None:
            raise RuntimeError("no synchronizing literal is awaiting a decision")
        self._begin_literal(self._pending.size)
        self._pending = None

    def reject_literal(self) -> None:
        """Refuse the synchronizing literal; the partial command is dropped.

        :raises RuntimeError: if no literal is awaiting a decision.
        """
        if self._state is not ParserState.AWAIT_DECISION:
            raise RuntimeError("no synchronizing literal is awaiting a decision")
        self._pending = None
        self._reset_command()
        self._state = ParserState.COMMAND

    def end_prelogin(self) -> None:
        """The client has logged in: literals up to the full limits from now on."""
        self._prelogin = False

    def use_utf8_names(self) -> None:
        """Mailbox names in the commands framed from now on are UTF-8 (IMAP4rev2)."""
        self._utf8_names = True

    def start_idle(self, tag: str) -> None:
        """Expect the line ending IDLE (call after answering IDLE with ``+ idling``)."""
        self._enter_raw_mode(ParserState.IDLE, tag)

    def start_authenticate(self, tag: str) -> None:
        """Expect one SASL response line (call after sending a :class:`Challenge`)."""
        self._enter_raw_mode(ParserState.AUTHENTICATE, tag)

    def start_filter(self, stream: InputFilter) -> None:
        """Read everything from now on through ``stream`` (call right after the command
        event that asks for it, e.g. COMPRESS): octets already buffered after that command
        were sent through it too, so they move into it.

        :raises RuntimeError: in the middle of a command, or a filter is set already.
        """
        if self._filter is not None:
            raise RuntimeError("the input is filtered already")
        if self._state is ParserState.FATAL:
            return
        if self._state is not ParserState.COMMAND or self._segments:
            raise RuntimeError("cannot filter the input in the middle of a command")
        rest = self._buf.maybe_extract_at_most(len(self._buf))
        if rest:
            stream.feed(rest)
        self._filter = stream

    def _enter_raw_mode(self, state: ParserState, tag: str) -> None:
        if self._state is ParserState.FATAL:
            return
        if self._state is not ParserState.COMMAND or self._segments:
            raise RuntimeError(f"cannot enter {state.value} in the middle of a command")
        self._state = state
        self._mode_tag = tag

    # -- output ---------------------------------------------------------------------------------

    def next_event(self) -> Event:
        """The next event, or :data:`NEED_DATA`.

        With a filter (:meth:`start_filter`), its output is taken :data:`FILTER_CHUNK`
        octets at a time and only while no event is complete and less than
        :attr:`Limits.pause_buffer` waits here, so every limit holds as without it.

        :raises RemoteProtocolError: the client broke a limit the connection cannot survive
            (see ``FATAL`` in the module docstring), or the filter found its input invalid;
            raised again on every later call.
        """
        event = self._next_event()
        stream = self._filter
        if stream is None:
            return event
        while (event is NEED_DATA and stream.ready and self._state is not ParserState.FATAL
               and len(self._buf) < self.limits.pause_buffer):
            try:
                data = stream.read(FILTER_CHUNK)
            except RemoteProtocolError as exc:
                self._die(exc.reason)
                raise
            if not data:
                break
            self._feed_plain(data)
            event = self._next_event()
        return event

    def _next_event(self) -> Event:
        while True:
            state = self._state
            if state is ParserState.FATAL or state is ParserState.AWAIT_DECISION:
                return self._need_data()
            if state is ParserState.LITERAL:
                if not self._read_literal():
                    return self._need_data()
                continue
            if state is ParserState.SKIP_LITERAL:
                if not self._skip_literal():
                    return self._need_data()
                continue
            if state is ParserState.SKIP_LINE:
                if not self._skip_line():
                    return self._need_data()
                continue
            line = self._buf.maybe_extract_line()
            if line is None:
                overflow = self._line_overflow()
                if overflow is not None:
                    return overflow
                return self._need_data()
            event = self._on_line(line)
            if event is not None:
                return event

    def _need_data(self) -> NeedData:
        """NEED_DATA, unless too much waits without completing an event (or we failed)."""
        try:
            return self._buf.need_data(self.limits.max_buffer, TOO_MUCH_DATA)
        except RemoteProtocolError as exc:
            self._die(exc.reason)
            raise

    # -- lines --------------------------------------------------------------------------------

    def _line_overflow(self) -> Event | None:
        """If the incomplete line is already too long, answer it and start skipping."""
        pending = len(self._buf)
        if self._text_length + pending <= self.limits.max_line:
            return None
        state = self._state
        head = self._buf.peek(256) if not self._segments else b""
        tag, _ = _head(self._segments[0] if self._segments else head)
        self._start_skip_line()
        if state is ParserState.IDLE:
            return IdleDone(self._mode_tag, ok=False)
        if state is ParserState.AUTHENTICATE:
            return BadCommand(self._mode_tag, "SASL response line too long", TOOBIG)
        return BadCommand(tag, "Command line too long", TOOBIG)

    def _on_line(self, line: bytes) -> Event | None:
        if self._state is ParserState.IDLE:
            self._state = ParserState.COMMAND
            return IdleDone(self._mode_tag, ok=line.upper() == b"DONE")
        if self._state is ParserState.AUTHENTICATE:
            self._state = ParserState.COMMAND
            if len(line) > self.limits.max_line:
                return BadCommand(self._mode_tag, "SASL response line too long", TOOBIG)
            return self._auth_line(line)
        if not self._segments and not line:
            return None  # stray empty line between commands: ignore, as most servers do
        self._text_length += len(line)
        if self._text_length > self.limits.max_line:
            tag, _ = _head(self._segments[0] if self._segments else line)
            marker = _marker(line)
            self._reset_command()
            if marker is not None and not marker.sync:
                return self._skip_nonsync(tag, marker, "Command line too long")
            return BadCommand(tag, "Command line too long", TOOBIG)
        self._segments.append(line)
        marker = _marker(line)
        if marker is None:
            return self._complete()
        if len(self._segments) == 1:
            self._tag, self._command = _head(line)
        return self._on_marker(marker)

    def _auth_line(self, line: bytes) -> Event:
        if line == b"*":
            return AuthResponse(self._mode_tag, None)
        try:
            return AuthResponse(self._mode_tag, base64.b64decode(line, validate=True))
        except binascii.Error:
            return BadCommand(self._mode_tag, "Invalid base64 in SASL response")

    def _complete(self) -> Event:
        frame = Frame(tuple(self._segments), tuple(self._literals))
        self._reset_command()
        try:
            return parse_command(frame, self.limits.max_search_depth,
                                 utf8_names=self._utf8_names)
        except CommandError as exc:
            if exc.bad_charset:
                return BadCommand(exc.tag, exc.text, BadCharset(), Status.NO, exc.clears_saved)
            return BadCommand(exc.tag, exc.text, clears_saved=exc.clears_saved)
        except RecursionError:
            # max_search_depth keeps SEARCH shallow; this guards any other nesting.
            return BadCommand(_frame_tag(frame), "Command nested too deeply")

    # -- literals ---------------------------------------------------------------------------

    def _literal_limit(self) -> int:
        limit = (
            self.limits.max_append_literal if self._command == "APPEND" else self.limits.max_literal
        )
        if self._prelogin:
            limit = min(limit, self.limits.max_prelogin_literal)
        return min(limit, self.limits.max_command_literals - self._literal_total)

    def _max_discard(self) -> int:
        """The largest refused non-synchronizing literal read and thrown away: none before
        login (the connection is given up instead)."""
        return 0 if self._prelogin else self.limits.max_discard

    def _on_marker(self, marker: _Marker) -> Event | None:
        tag, command = self._tag, self._command
        refusal: tuple[str, ResponseCode | None, Status] | None = None
        if tag is None:
            refusal = ("Invalid or missing tag", None, Status.BAD)
        elif not _known_command(command):
            refusal = (f"Unknown command {command[:30]}".rstrip(), None, Status.BAD)
        elif marker.size > self._literal_limit():
            # RFC 7889 wants NO [TOOBIG] for an APPEND over the limit; RFC 7888 BAD otherwise.
            status = Status.NO if command == "APPEND" and marker.sync else Status.BAD
            refusal = ("Literal too large", TOOBIG, status)
        if refusal is not None:
            # Refused before any octet of the literal: the rest of the command is dropped.
            self._reset_command()
            text, code, status = refusal
            if not marker.sync:
                return self._skip_nonsync(tag, marker, text, code)
            return BadCommand(tag, text, code, status)
        if marker.sync:
            self._pending = marker
            self._state = ParserState.AWAIT_DECISION
            return ContinuationNeeded(tag, self._command, marker.size)
        self._begin_literal(marker.size)
        return None

    def _skip_nonsync(
        self, tag: str | None, marker: _Marker, text: str, code: ResponseCode | None = TOOBIG
    ) -> Event:
        """Answer a command whose non-synchronizing literal is already on its way, and skip it."""
        if marker.size > self._max_discard():
            self._die("Literal too large to skip")
        else:
            self._remaining = marker.size
            self._state = ParserState.SKIP_LITERAL
        return BadCommand(tag, text, code)

    def _begin_literal(self, size: int) -> None:
        self._literal = bytearray()
        self._remaining = size
        self._literal_total += size
        self._state = ParserState.LITERAL

    def _read_literal(self) -> bool:
        """Move available literal octets out of the buffer; True once the literal is whole."""
        self._remaining -= self._buf.move_at_most(self._remaining, self._literal)
        if self._remaining:
            return False
        self._literals.append(bytes(self._literal))
        self._literal = bytearray()
        self._state = ParserState.COMMAND
        return True

    # -- skipping -------------------------------------------------------------------------------

    def _start_skip_line(self) -> None:
        self._reset_command()
        self._skip_tail = b""
        self._state = ParserState.SKIP_LINE

    def _skip_literal(self) -> bool:
        self._remaining -= self._buf.discard_at_most(self._remaining)
        if self._remaining:
            return False
        self._skip_tail = b""
        self._state = ParserState.SKIP_LINE
        return True

    def _skip_line(self) -> bool:
        """Discard up to the end of the current line; follow a non-synchronizing literal."""
        buf = self._buf
        line = buf.maybe_extract_line()
        if line is None:
            # Keep only the last octets, where a literal marker would be.
            buf.discard_at_most(len(buf) - _MARKER_TAIL)
            self._skip_tail = (self._skip_tail + (buf.maybe_extract_at_most(_MARKER_TAIL) or b""))[
                -_MARKER_TAIL:
            ]
            return False
        tail = (self._skip_tail + line[-_MARKER_TAIL:])[-_MARKER_TAIL:]
        self._skip_tail = b""
        marker = _marker(tail.rstrip(b"\r"))
        if marker is not None and not marker.sync:
            if marker.size > self._max_discard():
                self._die("Literal too large to skip")
                return True
            self._remaining = marker.size
            self._state = ParserState.SKIP_LITERAL
            return True
        # A synchronizing literal is never sent: the client waits for "+" and gets our answer.
        self._state = ParserState.COMMAND
        return True

    # -- bookkeeping ----------------------------------------------------------------------------

    def _reset_command(self) -> None:
        self._segments = []
        self._literals = []
        self._text_length = 0
        self._literal_total = 0
        self._tag = None
        self._command = ""

    def _die(self, text: str) -> None:
        """Give up: the next :meth:`next_event` raises RemoteProtocolError(text), forever."""
        self._state = ParserState.FATAL
        self._buf.fail(text)
        self._literal = bytearray()
        self._reset_command()


def _frame_tag(frame: Frame) -> str | None:
    """The tag of a frame, if readable."""
    return _head(frame.segments[0])[0]

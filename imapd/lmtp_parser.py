"""Sans-IO LMTP (RFC 2033) command and DATA reader.

Theory of operation: bytes go in with :meth:`LMTPParser.feed` and wait in a
:class:`~runtime.receivebuffer.ReceiveBuffer`; :meth:`LMTPParser.next_event` returns a
:class:`Command`, a :class:`MessageData`, a :class:`LineTooLong`, :data:`NEED_DATA` or
:data:`PAUSED`.  The reader is in one of three modes.  In *command* mode it cuts lines.
After the server answered ``354`` to DATA it calls :meth:`start_data`, and the reader
collects the message until the lone ``.`` line, undoing dot-stuffing (RFC 5321 4.5.2) and
keeping every other byte as sent; a message longer than ``max_message`` is read to its end
but not kept (the event says ``too_big``), so the session can answer 552 and carry on.
After the message it is *paused* (h11's PAUSED): :data:`PAUSED` comes back, whatever was
pipelined behind the message, until the server answered the delivery and calls
:meth:`resume`; the adapter stops reading meanwhile, so those bytes stay in the socket.

Limits: a command line longer than ``max_line`` (without its line end) is consumed to its
end and reported as :class:`LineTooLong` (the session answers 500), so buffered bytes never
exceed ``max_line`` plus one read in command mode; message bytes are moved out of the buffer
as they arrive, and the message is bounded by ``max_message``.  What piles up behind a
command or a paused message is the adapter's to bound (:mod:`imapd.adapter`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from runtime.receivebuffer import NEED_DATA, NeedData, ReceiveBuffer

__all__ = [
    "MAX_LINE",
    "NEED_DATA",
    "PAUSED",
    "Command",
    "Event",
    "LMTPParser",
    "LineTooLong",
    "MessageData",
    "NeedData",
    "Paused",
]

#: RFC 5321 allows 512 octets per command line; clients with long addresses and
#: ESMTP parameters send more, so be generous but bounded.
MAX_LINE: Final = 4096


class Paused:
    """Type of :data:`PAUSED`: a message was read and its delivery is not answered yet."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "PAUSED"


#: What :meth:`LMTPParser.next_event` returns between a message and :meth:`~LMTPParser.resume`.
PAUSED: Final = Paused()


@dataclass(frozen=True)
class Command:
    """One command line: ``verb`` upper-cased, ``argument`` as sent (stripped)."""

    verb: str
    argument: str


@dataclass(frozen=True)
class MessageData:
    """The message after DATA, dot-stuffing undone; empty when ``too_big``."""

    data: bytes
    size: int
    too_big: bool = False


@dataclass(frozen=True)
class LineTooLong:
    """A command line exceeded ``max_line`` (it was discarded)."""


Event = Command | MessageData | LineTooLong | NeedData | Paused


class LMTPParser:
    """Incremental reader of an LMTP client's bytes (linear in the bytes fed)."""

    def __init__(self, *, max_line: int = MAX_LINE, max_message: int = 64 * 1024 * 1024) -> None:
        self.max_line = max_line
        self.max_message = max_message
        self._buf = ReceiveBuffer()
        self._discarding = False
        self._data_mode = False
        self._paused = False
        self._bol = True
        self._message = bytearray()
        self._size = 0

    @property
    def in_data(self) -> bool:
        return self._data_mode

    @property
    def paused(self) -> bool:
        """True between a message and :meth:`resume`."""
        return self._paused

    @property
    def buffered_bytes(self) -> int:
        """Octets fed and not yet consumed (message octets already collected excluded)."""
        return len(self._buf)

    def feed(self, data: bytes) -> None:
        self._buf += data

    def start_data(self) -> None:
        """Switch to reading a message (call after replying 354).

        :raises RuntimeError: already reading or holding a message (our own misuse).
        """
        if self._data_mode or self._paused:
            raise RuntimeError("already reading DATA")
        self._data_mode = True
        self._bol = True
        self._message = bytearray()
        self._size = 0

    def resume(self) -> None:
        """The delivery was answered: go on with the commands pipelined behind the message.

        :raises RuntimeError: not paused (our own misuse).
        """
        if not self._paused:
            raise RuntimeError("not paused after a message")
        self._paused = False

    def next_event(self) -> Event:
        if self._paused:
            return PAUSED
        if self._data_mode:
            return self._next_data()
        buf = self._buf
        line = buf.maybe_extract_line()
        if line is None:
            if len(buf) > self.max_line:
                # Keep nothing of an endless line; report it once it ends.
                self._discarding = True
                buf.clear()
            return NEED_DATA
        if self._discarding or len(line) > self.max_line:
            self._discarding = False
            return LineTooLong()
        verb, _, argument = line.decode("utf-8", errors="replace").strip().partition(" ")
        return Command(verb.upper(), argument.strip())

    def _keep(self, count: int) -> None:
        """Move the next ``count`` message octets out of the buffer (or drop them once the
        message is too big to keep)."""
        self._size += count
        if self._size <= self.max_message:
            self._buf.move_at_most(count, self._message)
        else:
            self._buf.discard_at_most(count)
            if self._message:
                self._message = bytearray()

    def _next_data(self) -> Event:
        buf = self._buf
        while buf:
            if self._bol:
                head = buf.peek(3)
                if head[:1] == b".":
                    if head == b".\r\n" or head[:2] == b".\n":
                        buf.discard_at_most(len(head) if head == b".\r\n" else 2)
                        return self._end_of_message()
                    if head in (b".", b".\r"):
                        return NEED_DATA  # cannot tell the terminator from stuffing yet
                    buf.discard_at_most(1)  # undo dot-stuffing
                    self._bol = False
                    continue
            # Every line up to the next one that starts with a dot is kept as it is:
            # one move for all of them, not a Python step per line.
            dot = buf.find(b"\n.")
            if dot < 0:
                self._bol = buf.endswith(b"\n")
                self._keep(len(buf))
            else:
                self._bol = True
                self._keep(dot + 1)
        return NEED_DATA

    def _end_of_message(self) -> MessageData:
        self._data_mode = False
        self._paused = True
        too_big = self._size > self.max_message
        data = b"" if too_big else bytes(self._message)
        self._message = bytearray()
        return MessageData(data, self._size, too_big)

"""Sans-IO LMTP (RFC 2033) command and DATA reader.

Theory of operation: bytes go in with :meth:`LMTPParser.feed`; :meth:`next_event`
returns a :class:`Command`, a :class:`MessageData`, a :class:`LineTooLong`, or
:data:`NEED_DATA`.  The reader is in one of two modes.  In *command* mode it cuts
lines.  After the server answered ``354`` to DATA it calls :meth:`start_data`,
and the reader collects the message until the lone ``.`` line, undoing
dot-stuffing (RFC 5321 4.5.2) and keeping every other byte as sent; a message
longer than ``max_message`` is read to its end but not kept (the event says
``too_big``), so the session can answer 552 and carry on.

Limits: a command line longer than ``max_line`` is consumed to its end and
reported as :class:`LineTooLong` (the session answers 500); buffered bytes never
exceed ``max_line`` plus one read in command mode, and the message bound in data
mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData()

#: RFC 5321 allows 512 octets per command line; clients with long addresses and
#: ESMTP parameters send more, so be generous but bounded.
MAX_LINE: Final = 4096


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


Event = Command | MessageData | LineTooLong | _NeedData


class LMTPParser:
    """Incremental reader of an LMTP client's bytes (linear in the bytes fed)."""

    def __init__(self, *, max_line: int = MAX_LINE, max_message: int = 64 * 1024 * 1024) -> None:
        self.max_line = max_line
        self.max_message = max_message
        self._buf = bytearray()
        self._pos = 0
        self._discarding = False
        self._data_mode = False
        self._bol = True
        self._message = bytearray()
        self._size = 0

    @property
    def in_data(self) -> bool:
        return self._data_mode

    def feed(self, data: bytes) -> None:
        if self._pos:
            # Compact once per read, not once per line: lines are cut by offsets.
            del self._buf[:self._pos]
            self._pos = 0
        self._buf += data

    def start_data(self) -> None:
        """Switch to reading a message (call after replying 354)."""
        if self._data_mode:
            raise RuntimeError("already reading DATA")
        self._data_mode = True
        self._bol = True
        self._message = bytearray()
        self._size = 0

    def next_event(self) -> Event:
        if self._data_mode:
            return self._next_data()
        buf = self._buf
        nl = buf.find(b"\n", self._pos)
        if nl < 0:
            if len(buf) - self._pos > self.max_line:
                # Keep nothing of an endless line; report it once it ends.
                self._discarding = True
                del buf[:]
                self._pos = 0
            return NEED_DATA
        line = bytes(buf[self._pos:nl + 1])
        self._pos = nl + 1
        if self._discarding or len(line) > self.max_line:
            self._discarding = False
            return LineTooLong()
        text = line.rstrip(b"\r\n").decode("utf-8", errors="replace").strip()
        verb, _, argument = text.partition(" ")
        return Command(verb.upper(), argument.strip())

    def _keep(self, chunk: bytes | bytearray) -> None:
        self._size += len(chunk)
        if self._size <= self.max_message:
            self._message += chunk
        elif self._message:
            self._message = bytearray()

    def _next_data(self) -> Event:
        buf = self._buf
        while self._pos < len(buf):
            pos = self._pos
            if self._bol and buf[pos] == 0x2E:  # "."
                rest = bytes(buf[pos:pos + 3])
                if rest in (b".\r\n",) or rest[:2] == b".\n":
                    self._pos = pos + (3 if rest == b".\r\n" else 2)
                    self._data_mode = False
                    too_big = self._size > self.max_message
                    data = b"" if too_big else bytes(self._message)
                    self._message = bytearray()
                    return MessageData(data, self._size, too_big)
                if rest in (b".", b".\r"):
                    return NEED_DATA  # cannot tell the terminator from stuffing yet
                pos += 1  # undo dot-stuffing
                self._pos = pos
            # Every line up to the next one that starts with a dot is kept as it is:
            # one slice for all of them, not a Python step per line.
            dot = buf.find(b"\n.", pos)
            if dot < 0:
                self._keep(buf[pos:])
                self._pos = len(buf)
                self._bol = buf[-1] == 0x0A
            else:
                self._keep(buf[pos:dot + 1])
                self._pos = dot + 1
                self._bol = True
        return NEED_DATA

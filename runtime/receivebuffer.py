"""The receive buffer every sans-IO parser reads from, its NEED_DATA and its error.

Theory of operation
-------------------
A parser (memcached requests and replies, IMAP, POP3, LMTP) appends what the socket
delivered with ``buffer += data`` and takes events out of it in its ``next_event``.  The
buffer, after h11's ``ReceiveBuffer``, offers what those parsers need and keeps the cost of
every byte bounded:

* :meth:`ReceiveBuffer.maybe_extract_line` finds the next ``\\n`` and resumes where the last
  search stopped, so a line arriving one byte at a time is scanned once, not once per read;
* :meth:`~ReceiveBuffer.maybe_extract_at_most`, :meth:`~ReceiveBuffer.maybe_extract_exactly`,
  :meth:`~ReceiveBuffer.move_at_most` and :meth:`~ReceiveBuffer.discard_at_most` take blocks
  (literals, values, message data) with one copy or none;
* consumed bytes are not deleted one event at a time: a start offset moves, and the
  consumed prefix is dropped when the buffer empties or once it is at least half the
  buffer and 64 KiB, so compaction costs amortised O(1) per byte.

The one limit rule (h11's ``max_incomplete_event_size``): a parser that cannot complete an
event returns ``buffer.need_data(limit, reason)``, which is :data:`NEED_DATA`, or raises
:class:`RemoteProtocolError` when more than ``limit`` bytes are buffered without completing
one.  After that the buffer is broken: it drops what it held, ignores what is fed, and
``need_data`` raises again, so a parser keeps failing without a state of its own.  The
adapter maps the error to its protocol's last words (memcached ``CLIENT_ERROR``, IMAP
``* BYE``, POP3 ``-ERR``, LMTP ``500``/``421``) and closes the connection.
"""

from __future__ import annotations

from typing import ClassVar, Final

from runtime import errors as kinds

__all__ = ["NEED_DATA", "BadBlockEnd", "NeedData", "ReceiveBuffer", "RemoteProtocolError"]

#: Drop the consumed prefix once it is this long and at least half the buffer.
COMPACT_AT: Final = 64 * 1024
#: Blocks up to this size are copied out through a slice, larger ones through a view.
_SMALL: Final = 2048


class NeedData:
    """Type of :data:`NEED_DATA`: no event until more bytes are fed (a singleton)."""

    __slots__ = ()
    _instance: ClassVar[NeedData | None] = None

    def __new__(cls) -> NeedData:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NEED_DATA"

    def __reduce__(self) -> str:
        return "NEED_DATA"


#: What ``next_event`` returns when the buffered bytes hold no complete event.
NEED_DATA: Final = NeedData()


class RemoteProtocolError(kinds.InvalidInput):
    """The peer broke the protocol or one of its limits; the connection cannot go on.

    :ivar reason: what went wrong, in words fit for the peer (``line too long``).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class BadBlockEnd(ValueError):
    """A block was not followed by the bytes that must end it (a value's CRLF)."""


class ReceiveBuffer:
    """Bytes received and not yet consumed; see the module docstring."""

    __slots__ = ("_data", "_error", "_scan", "_start")

    def __init__(self) -> None:
        self._data = bytearray()
        self._start = 0  # first unconsumed byte
        self._scan = 0  # where the search for the next "\n" resumes
        self._error: str | None = None

    def __iadd__(self, data: bytes | bytearray | memoryview) -> ReceiveBuffer:
        if self._error is None:
            self._data += data
        return self

    def __len__(self) -> int:
        return len(self._data) - self._start

    def __bool__(self) -> bool:
        return len(self._data) > self._start

    def __bytes__(self) -> bytes:
        return bytes(self._data[self._start:])

    def __repr__(self) -> str:
        return f"<ReceiveBuffer {len(self)} bytes>"

    # -- taking bytes out --------------------------------------------------------------------

    def maybe_extract_line(self) -> bytes | None:
        """The next line without its ``\\n`` (and one ``\\r`` before it), or None if no
        line end was received yet."""
        data = self._data
        newline = data.find(b"\n", self._scan)
        if newline < 0:
            self._scan = len(data)
            return None
        start = self._start
        end = newline - 1 if newline > start and data[newline - 1] == 0x0D else newline
        line = bytes(data[start:end])
        # _consume(newline + 1), inlined: this runs once per command.
        newline += 1
        if newline >= len(data):
            data.clear()
            self._start = self._scan = 0
        elif newline < COMPACT_AT or newline * 2 < len(data):
            self._start = self._scan = newline
        else:
            del data[:newline]
            self._start = self._scan = 0
        return line

    def maybe_extract_exactly(self, count: int, end: bytes = b"") -> bytes | None:
        """The next ``count`` bytes, once ``count + len(end)`` are buffered; None (nothing
        taken) before.  ``end`` (a value's CRLF) is consumed after them.

        :raises BadBlockEnd: the bytes after the block are not ``end``; the block and as
            many bytes as ``end`` has were consumed all the same.
        """
        data = self._data
        start = self._start
        stop = start + count
        if len(data) < stop + len(end):
            return None
        # A large block is copied once through a view (released as soon as bytes()
        # returns); a small one through a slice: two small copies beat making a view.
        out = bytes(memoryview(data)[start:stop]) if count > _SMALL else bytes(data[start:stop])
        if end and not data.startswith(end, stop):
            self._consume(stop + len(end))
            raise BadBlockEnd(f"block not followed by {end!r}")
        self._consume(stop + len(end))
        return out

    def maybe_extract_at_most(self, count: int) -> bytes | None:
        """Up to ``count`` bytes, or None if the buffer is empty."""
        count = min(count, len(self._data) - self._start)
        if count <= 0:
            return None
        return self.maybe_extract_exactly(count)

    def move_at_most(self, count: int, out: bytearray) -> int:
        """Append up to ``count`` bytes to ``out`` (one copy); how many were moved."""
        start = self._start
        count = min(count, len(self._data) - start)
        if count > 0:
            with memoryview(self._data) as view, view[start:start + count] as part:
                out += part
            self._consume(start + count)
        return max(count, 0)

    def discard_at_most(self, count: int) -> int:
        """Drop up to ``count`` bytes; how many were dropped."""
        count = min(count, len(self._data) - self._start)
        if count > 0:
            self._consume(self._start + count)
        return max(count, 0)

    def clear(self) -> None:
        """Drop everything buffered (and release its memory)."""
        self._data.clear()
        self._start = self._scan = 0

    def _consume(self, end: int) -> None:
        data = self._data
        if end >= len(data):
            data.clear()
            self._start = self._scan = 0
        elif end >= COMPACT_AT and end * 2 >= len(data):
            del data[:end]
            self._scan = max(self._scan - end, 0)
            self._start = 0
        else:
            self._start = end
            if self._scan < end:
                self._scan = end

    # -- looking without taking ---------------------------------------------------------------

    def peek(self, count: int) -> bytes:
        """The first ``count`` bytes (fewer if fewer are buffered), left in place."""
        start = self._start
        return bytes(self._data[start:start + count])

    def find(self, sub: bytes) -> int:
        """Where ``sub`` first starts, counted from the first unconsumed byte; -1 if absent."""
        found = self._data.find(sub, self._start)
        return found - self._start if found >= 0 else -1

    def endswith(self, suffix: bytes) -> bool:
        """True when the buffered bytes end with ``suffix``."""
        return len(self) >= len(suffix) and self._data.endswith(suffix)

    # -- the limit rule ----------------------------------------------------------------------

    def need_data(self, limit: int, reason: str) -> NeedData:
        """:data:`NEED_DATA` for a parser that found no complete event.

        :raises RemoteProtocolError: more than ``limit`` bytes wait without completing an
            event (``reason`` says which limit), or the buffer failed before.
        """
        if self._error is not None:
            raise RemoteProtocolError(self._error)
        if len(self._data) - self._start > limit:
            raise self.fail(reason)
        return NEED_DATA

    def fail(self, reason: str) -> RemoteProtocolError:
        """The peer broke a limit: drop everything, ignore what comes, and make every later
        :meth:`need_data` raise :class:`RemoteProtocolError` with ``reason``.

        :returns: the error, for a parser that raises it at once (``raise buf.fail(...)``).
        """
        if self._error is None:
            self._error = reason
        self.clear()
        return RemoteProtocolError(self._error)

    @property
    def failed(self) -> bool:
        """True once :meth:`fail` was called (or :meth:`need_data` raised)."""
        return self._error is not None

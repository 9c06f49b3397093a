"""The sans-IO side of POP3 (RFC 1939, RFC 2449 CAPA, RFC 2595 STLS, RFC 5034 AUTH):
command lines in, reply bytes out.

POP3 is one line per command (``USER alice``), so the parser only frames lines (read from a
:class:`~runtime.receivebuffer.ReceiveBuffer`) and splits keyword and arguments; it
enforces a line limit (RFC 2449 allows 255 octets, clients send longer SASL lines, so the
default is larger: a longer line is answered and skipped) and the buffer's bound on input
that completes no line (:class:`~runtime.receivebuffer.RemoteProtocolError`), and has one
raw mode for the line that answers an AUTH challenge.  Replies are a status line or a status
line followed by dot-stuffed data (:func:`multiline`), returned as chunks so a message
body is written as it was read, without one more copy.
"""

from __future__ import annotations

from dataclasses import dataclass

from runtime.receivebuffer import NEED_DATA, NeedData, ReceiveBuffer, RemoteProtocolError

__all__ = [
    "NEED_DATA",
    "AuthLine",
    "BadLine",
    "NeedData",
    "Pop3Command",
    "Pop3Parser",
    "RemoteProtocolError",
    "dot_stuff",
    "err",
    "multiline",
    "ok",
]

#: Longest command line accepted (octets, without CRLF).
MAX_LINE = 2048
#: Octets buffered without completing a line; the adapter also bounds unconsumed input by it.
MAX_BUFFER = 256 * 1024
#: Arguments a command may carry.
MAX_ARGS = 4


@dataclass(frozen=True)
class Pop3Command:
    """A command: ``name`` upper-cased, ``args`` as sent (ASCII/UTF-8 text)."""

    name: str
    args: tuple[str, ...] = ()

    def __repr__(self) -> str:
        shown = ("<hidden>",) if self.name in ("PASS", "AUTH") and self.args else self.args
        return f"Pop3Command({self.name!r}, {shown!r})"


@dataclass(frozen=True)
class BadLine:
    """A line that is not a command (too long, empty, control characters)."""

    text: str


@dataclass(frozen=True)
class AuthLine:
    """The client's answer to an AUTH challenge (raw, still base64)."""

    data: bytes


Event = Pop3Command | BadLine | AuthLine | NeedData


class Pop3Parser:
    """Lines to :data:`Event` values; ``feed`` stores, ``next_event`` does the work."""

    def __init__(self, *, max_line: int = MAX_LINE, max_buffer: int = MAX_BUFFER) -> None:
        self.max_line = max_line
        self.max_buffer = max_buffer
        self._buf = ReceiveBuffer()
        self._skipping = False
        self._auth = False

    def feed(self, data: bytes) -> None:
        self._buf += data

    def expect_auth_line(self) -> None:
        """The next line answers an AUTH challenge."""
        self._auth = True

    @property
    def buffered_bytes(self) -> int:
        return len(self._buf)

    def next_event(self) -> Event:
        """The next event, or :data:`NEED_DATA`.

        :raises RemoteProtocolError: more than ``max_buffer`` octets complete no line;
            raised again on every later call.
        """
        buf = self._buf
        while True:
            line = buf.maybe_extract_line()
            if line is None:
                if len(buf) > self.max_line and not self._skipping:
                    self._skipping = True
                    self._auth = False
                    return BadLine("Line too long")
                if self._skipping:
                    buf.clear()
                return buf.need_data(self.max_buffer, "Too much pipelined data")
            line = line.rstrip(b"\r")
            if self._skipping:
                self._skipping = False
                continue
            if len(line) > self.max_line:
                self._auth = False
                return BadLine("Line too long")
            if self._auth:
                self._auth = False
                return AuthLine(line)
            return _command(line)


def _command(line: bytes) -> Pop3Command | BadLine:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return BadLine("Commands must be UTF-8")
    if any((ch < " " and ch != "\t") or ch == "\x7f" for ch in text):
        return BadLine("Control characters in command")
    if text.upper().startswith("PASS "):
        # RFC 1939 7: the password is the rest of the line, spaces included.
        return Pop3Command("PASS", (text[5:],))
    words = text.split()
    if not words:
        return BadLine("Empty command")
    if len(words) > MAX_ARGS + 1 or len(words[0]) > 8:
        return BadLine("Not a POP3 command")
    return Pop3Command(words[0].upper(), tuple(words[1:]))


def _text(text: str) -> bytes:
    return text.encode("ascii", "replace").replace(b"\r", b"?").replace(b"\n", b"?")


def ok(text: str = "") -> bytes:
    return b"+OK " + _text(text) + b"\r\n" if text else b"+OK\r\n"


def err(text: str, code: str | None = None) -> bytes:
    """``-ERR [CODE] text`` (RFC 2449 extended response codes such as AUTH, SYS/TEMP)."""
    prefix = f"[{code}] " if code else ""
    return b"-ERR " + _text(prefix + text) + b"\r\n"


def dot_stuff(data: bytes) -> bytes:
    """``data`` (CRLF lines) as multi-line response data: lines starting with ``.`` get
    another, and the data ends with CRLF."""
    stuffed = data.replace(b"\r\n.", b"\r\n..")
    if stuffed.startswith(b"."):
        stuffed = b"." + stuffed
    if stuffed and not stuffed.endswith(b"\r\n"):
        stuffed += b"\r\n"
    return stuffed


def multiline(status: str, data: bytes) -> list[bytes]:
    """``+OK status``, the dot-stuffed ``data`` and the terminating ``.``, as chunks."""
    return [ok(status), dot_stuff(data), b".\r\n"]

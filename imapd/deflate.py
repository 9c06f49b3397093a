"""COMPRESS=DEFLATE (RFC 4978): raw DEFLATE both ways, with zlib-ng.

Theory of operation
-------------------
Once the tagged OK of ``COMPRESS DEFLATE`` is written, everything the server writes goes
through one :class:`Deflater` and everything it reads through one :class:`Inflater`; both
are sans-IO (bytes in, bytes out) and live for the rest of the connection.  Compression
sits right under IMAP, so on a TLS connection it runs inside TLS (TLS encrypts compressed
bytes, as RFC 4978 section 7 wants).

Writing: :meth:`Deflater.compress` compresses one burst of responses and ends it with a
*sync flush* (``Z_SYNC_FLUSH``), so the client can inflate every byte of it at once and
never waits for a response the compressor still holds (RFC 4978 section 4).  A sync flush
keeps the 32 KiB history, unlike ``Z_FULL_FLUSH``, which would reset it after every
response and lose most of the gain on the many small ones IMAP sends.

Reading: the parser pulls inflated bytes, at most ``limit`` at a time
(:meth:`Inflater.read`), and only when it needs more to complete an event; compressed input
waits meanwhile (:attr:`Inflater.pending`, counted in the parser's buffered bytes, so the
adapter's pause and limit apply to it).  A decompression bomb therefore meets the same line,
literal and buffer limits as uncompressed input, one bounded chunk at a time, and never
turns into memory.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Final, cast

from zlib_ng import zlib_ng

from runtime.receivebuffer import RemoteProtocolError

__all__ = ["DEFAULT_LEVEL", "INVALID_DATA", "Deflater", "Inflater"]

#: zlib-ng level 2: on the corpus as FETCH responses, within 3% of the size zlib's level 6
#: gives (Dovecot's default) at 2.6 times its speed; zlib-ng's level 1 is another
#: algorithm, faster again but a third larger (BENCHMARKS.md, ops/bench/compress_bench.py).
DEFAULT_LEVEL: Final = 2

#: The BYE text when the client's compressed stream is not valid raw DEFLATE.
INVALID_DATA: Final = "Invalid compressed data"

# RFC 4978 section 4: raw DEFLATE, no zlib header; -15 inflates any window the peer used.
_WBITS: Final = -15
_ZLIB_ERROR = cast(type[Exception], zlib_ng.error)


class Deflater:
    """The server's side of the compressed stream (one per connection)."""

    def __init__(self, level: int = DEFAULT_LEVEL) -> None:
        self._compressor = zlib_ng.compressobj(level, zlib_ng.DEFLATED, _WBITS)

    def compress(self, chunks: Iterable[bytes]) -> bytes:
        """One burst of output, compressed and sync-flushed: the client can inflate all of
        it with what it has received."""
        compress = self._compressor.compress
        out = [compress(chunk) for chunk in chunks]
        out.append(self._compressor.flush(zlib_ng.Z_SYNC_FLUSH))
        return b"".join(out)


class Inflater:
    """The client's side of the compressed stream, inflated on demand (one per
    connection)."""

    def __init__(self) -> None:
        self._decompressor = zlib_ng.decompressobj(_WBITS)
        self._input: deque[bytes] = deque()
        self._tail = b""
        self._pending = 0
        # The last read stopped at its limit: zlib may hold output with no input left.
        self._more = False
        self._ended = False

    def feed(self, data: bytes) -> None:
        """Add compressed octets received from the client."""
        if data and not self._ended:
            self._input.append(data)
            self._pending += len(data)

    @property
    def pending(self) -> int:
        """Compressed octets fed and not inflated yet."""
        return self._pending

    @property
    def ready(self) -> bool:
        """:meth:`read` may return octets."""
        return not self._ended and (self._pending > 0 or self._more)

    def read(self, limit: int) -> bytes:
        """At most ``limit`` inflated octets; empty when all the input so far is inflated.

        :raises RemoteProtocolError: the input is not raw DEFLATE.
        """
        while not self._ended:
            if self._tail:
                source = self._tail
            elif self._input:
                source = self._input.popleft()
            elif self._more:
                source = b""
            else:
                return b""
            try:
                out = self._decompressor.decompress(source, limit)
            except _ZLIB_ERROR:
                self._end()
                raise RemoteProtocolError(INVALID_DATA) from None
            self._tail = self._decompressor.unconsumed_tail
            self._more = len(out) >= limit
            self._pending -= len(source) - len(self._tail)
            if self._decompressor.eof:
                # The client finished its stream (Z_FINISH): nothing after it is IMAP.
                self._end()
            if out or not source:
                return out
        return b""

    def _end(self) -> None:
        self._ended = True
        self._input.clear()
        self._tail = b""
        self._pending = 0

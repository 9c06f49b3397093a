"""Writing replies straight to a TCP socket when Twisted has nothing queued for it.

Twisted's TCP transport queues every write and sends it on a later reactor turn, which
costs two ``epoll_ctl`` calls and a loop turn per reply.  When its buffers are empty a
gathered write (``sendmsg``, i.e. ``writev``) made now sends the same bytes in the same
order, sooner; whatever the kernel does not take goes to ``transport.writeSequence`` as
before, so order still holds.  objstored's protocol and imapd's IMAP adapter both do this.
"""

from __future__ import annotations

from typing import Any, Final

__all__ = ["IOV_MAX", "drop_prefix", "nothing_queued", "send_now"]

#: Buffers per ``sendmsg`` (Linux's UIO_MAXIOV).
IOV_MAX: Final = 1024


def nothing_queued(transport: Any) -> bool:
    """``transport`` (Twisted's TCP connection) is open and holds no unsent bytes, so a
    direct write cannot overtake anything."""
    return bool(transport.connected and not transport.disconnecting
                and not transport.dataBuffer and not transport._tempDataBuffer)


def send_now(sock: Any, chunks: list[bytes]) -> list[bytes]:
    """Send ``chunks`` with one non-blocking ``sendmsg``; the chunks it did not take.

    All of them come back when there are more than :data:`IOV_MAX` or the send fails
    (EAGAIN, or a failure Twisted's own write will then notice and report).
    """
    if len(chunks) > IOV_MAX:
        return chunks
    try:
        sent = sock.sendmsg(chunks)
    except OSError:
        return chunks
    return drop_prefix(chunks, sent) if sent else chunks


def drop_prefix(chunks: list[bytes], count: int) -> list[bytes]:
    """The chunks left after the first ``count`` bytes were sent."""
    for i, chunk in enumerate(chunks):
        if count < len(chunk):
            rest = chunks[i:]
            if count:
                rest[0] = chunk[count:]
            return rest
        count -= len(chunk)
    return []

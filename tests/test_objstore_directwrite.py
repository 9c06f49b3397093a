"""The direct socket write objstored and imapd use when Twisted has nothing queued: what a
gathered send leaves over, and when it must not be tried."""

from __future__ import annotations

import socket

from twisted.internet.testing import StringTransport

from runtime.directwrite import IOV_MAX, drop_prefix, nothing_queued, send_now


def test_drop_prefix_cuts_inside_and_between_chunks() -> None:
    """drop_prefix keeps the unsent tail of a partly sent chunk and every later chunk."""
    chunks = [b"abc", b"", b"defg", b"h"]
    assert drop_prefix(chunks, 0) == chunks
    assert drop_prefix(chunks, 2) == [b"c", b"", b"defg", b"h"]
    assert drop_prefix(chunks, 3) == [b"defg", b"h"]
    assert drop_prefix(chunks, 5) == [b"fg", b"h"]
    assert drop_prefix(chunks, 8) == []


def test_send_now_sends_everything_a_socket_takes() -> None:
    """send_now writes the chunks in order and returns nothing when the kernel took all."""
    a, b = socket.socketpair()
    with a, b:
        a.setblocking(False)
        assert send_now(a, [b"one ", b"two ", b"three"]) == []
        assert b.recv(100) == b"one two three"


def test_send_now_returns_what_a_full_socket_refused() -> None:
    """With the socket buffer full send_now returns the unsent chunks (EAGAIN), whole."""
    a, b = socket.socketpair()
    with a, b:
        a.setblocking(False)
        big = [b"x" * 65536] * 64
        left = send_now(a, big)
        assert left and sum(map(len, left)) < sum(map(len, big))
        again = send_now(a, left)
        assert again == left


def test_send_now_leaves_too_many_buffers_to_twisted() -> None:
    """More than IOV_MAX chunks are not sent at all (sendmsg would refuse them)."""
    a, b = socket.socketpair()
    with a, b:
        chunks = [b"y"] * (IOV_MAX + 1)
        assert send_now(a, chunks) is chunks
        b.setblocking(False)
        try:
            got = b.recv(10)
        except BlockingIOError:
            got = b""
        assert got == b""


def test_nothing_queued_only_for_an_open_empty_transport() -> None:
    """nothing_queued is true only while the transport is connected, not closing, and
    both of Twisted's write buffers are empty."""

    class Tcp(StringTransport):
        def __init__(self) -> None:
            super().__init__()
            self.dataBuffer = b""
            self._tempDataBuffer: list[bytes] = []

    t = Tcp()
    t.connected = True
    assert nothing_queued(t)
    t._tempDataBuffer = [b"queued"]
    assert not nothing_queued(t)
    t._tempDataBuffer = []
    t.dataBuffer = b"queued"
    assert not nothing_queued(t)
    t.dataBuffer = b""
    t.disconnecting = True
    assert not nothing_queued(t)
    t.disconnecting = False
    t.connected = False
    assert not nothing_queued(t)

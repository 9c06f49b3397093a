"""The Twisted adapter on StringTransport and task.Clock: ordering of pipelined commands,
literals, IDLE, limits and back-pressure, garbage, STARTTLS, timeouts, disconnects.

The session here is a scripted twin (the real one is tested over PostgreSQL in
test_imapd_session.py); what is under test is only how bytes, events and responses move.
"""

from __future__ import annotations

import asyncio
import socket
import zlib
from collections.abc import Callable, Coroutine
from typing import Any, cast

from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.python import failure

from imapd import commands as c
from imapd.backend import Backend
from imapd.parser import AuthResponse, ContinuationNeeded, IdleDone
from imapd.response import (
    Continuation,
    FetchData,
    FetchLiteral,
    Response,
    Status,
    Tagged,
    Untagged,
)
from imapd.server import IMAPFactory, IMAPServerProtocol, limits_for
from ops.config import ImapdConfig


class TlsTransport(StringTransport):
    """StringTransport that records startTLS."""

    tls_context: object = None

    def startTLS(self, context: object) -> None:
        self.tls_context = context


class TwinSession:
    """A scripted stand-in for :class:`imapd.session.Session`."""

    def __init__(self, conn: IMAPServerProtocol) -> None:
        self.conn = conn
        self.events: list[Any] = []
        self.gates: dict[str, asyncio.Event] = {}
        self.closed = False
        self.bads = 0
        self.lost = False
        self.user: str | None = None

    def greeting(self) -> Response:
        return Untagged(Status.OK, "twin ready")

    def literal_refusal(self, event: ContinuationNeeded) -> Response | None:
        if event.command == "APPEND":
            return Tagged(event.tag or "*", Status.NO, "no appends here")
        return None

    def bad_command(self, *, clears_saved: bool = False) -> bool:
        self.bads += 1
        return self.bads >= 3

    async def dispatch(self, event: Any) -> None:
        self.events.append(event)
        if isinstance(event, IdleDone):
            self.conn.send([Tagged(event.tag, Status.OK, "idle over")])
            return
        if isinstance(event, AuthResponse):
            self.conn.send([Tagged(event.tag, Status.OK, f"sasl {event.data!r}")])
            return
        tag = event.tag
        if tag in self.gates:
            await self.gates[tag].wait()
        if isinstance(event, c.Idle):
            self.conn.send([Continuation("idling")])
            self.conn.start_idle(tag)
            return
        if isinstance(event, c.StartTLS):
            self.conn.send([Tagged(tag, Status.OK, "go")])
            self.conn.start_tls()
            return
        if isinstance(event, c.Compress):
            self.conn.send([Tagged(tag, Status.OK, "deflating")])
            self.conn.start_compress()
            return
        if isinstance(event, c.Logout):
            self.conn.send([Untagged(Status.BYE, "bye"), Tagged(tag, Status.OK, "out")])
            self.conn.close()
            return
        if isinstance(event, c.Fetch):
            for n in range(1, 4):
                self.conn.send([FetchData(n, (FetchLiteral("BODY[]", b"x" * 100),))])
                await self.conn.drain()
        if isinstance(event, c.Check):
            raise RuntimeError("twin crash")
        if isinstance(event, c.Login):
            self.user = event.username
        self.conn.send([Tagged(tag, Status.OK, f"{event.NAME} done")])

    def connection_lost(self) -> None:
        self.lost = True

    async def close(self) -> None:
        self.closed = True


class TwinFactory(IMAPFactory):
    def __init__(self, config: ImapdConfig, clock: task.Clock) -> None:
        backend = Backend(cast(Any, None), cast(Any, None), cast(Any, None),
                          cast(Any, None), config, clock)
        super().__init__(backend, tls=object(), clock=clock)
        self.sessions: list[TwinSession] = []

    def new_session(self, conn: IMAPServerProtocol) -> Any:
        session = TwinSession(conn)
        self.sessions.append(session)
        return session


class Harness:
    def __init__(self, **config: Any) -> None:
        self.clock = task.Clock()
        self.factory = TwinFactory(ImapdConfig(**config), self.clock)
        self.proto = self.factory.buildProtocol(None)
        self.transport = TlsTransport()
        self.proto.makeConnection(self.transport)
        self.session = self.factory.sessions[-1]
        self.seen = len(self.transport.value())

    def output(self) -> bytes:
        """What was written since the last call."""
        data = self.transport.value()
        new, self.seen = data[self.seen:], len(data)
        return new

    async def feed(self, data: bytes) -> bytes:
        self.proto.dataReceived(data)
        await settle()
        return self.output()


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def run(body: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(body())


def test_greeting_is_the_sessions() -> None:
    """On connect the adapter writes the session's greeting and nothing else."""

    async def body() -> None:
        h = Harness()
        assert h.transport.value() == b"* OK twin ready\r\n"

    run(body)


def test_pipelined_commands_are_answered_in_order_one_at_a_time() -> None:
    """Three pipelined commands reach the session one after another: while the first is
    running the others wait unparsed, and the answers come out in order."""

    async def body() -> None:
        h = Harness()
        h.output()
        gate = h.session.gates["a"] = asyncio.Event()
        assert await h.feed(b"a NOOP\r\nb CAPABILITY\r\nc NOOP\r\n") == b""
        assert [e.tag for e in h.session.events] == ["a"]
        gate.set()
        await settle()
        assert h.output() == (b"a OK NOOP done\r\nb OK CAPABILITY done\r\n"
                              b"c OK NOOP done\r\n")

    run(body)


def test_a_command_split_across_packets_and_bytes() -> None:
    """A command arriving one byte at a time is dispatched once, when complete."""

    async def body() -> None:
        h = Harness()
        h.output()
        for octet in b"x1 NOOP\r\n":
            h.proto.dataReceived(bytes([octet]))
        await settle()
        assert h.output() == b"x1 OK NOOP done\r\n"
        assert len(h.session.events) == 1

    run(body)


def test_synchronizing_literal_gets_a_continuation() -> None:
    """A {n} literal is acknowledged with '+' and becomes part of the command; a refused
    APPEND literal gets the session's NO and the next line is a new command."""

    async def body() -> None:
        h = Harness()
        h.output()
        assert await h.feed(b"a LOGIN {5}\r\n") == b"+ Ready for literal data\r\n"
        assert await h.feed(b"alice {6}\r\n") == b"+ Ready for literal data\r\n"
        assert await h.feed(b"secret\r\n") == b"a OK LOGIN done\r\n"
        login = h.session.events[-1]
        assert (login.username, login.password) == ("alice", "secret")
        assert await h.feed(b"b APPEND INBOX {30}\r\n") == b"b NO no appends here\r\n"
        assert await h.feed(b"c NOOP\r\n") == b"c OK NOOP done\r\n"

    run(body)


def test_idle_takes_done_and_lets_the_session_write_meanwhile() -> None:
    """IDLE puts the parser in raw-line mode: the session may write while idling, DONE is
    handed over as IdleDone, and later commands run normally."""

    async def body() -> None:
        h = Harness()
        h.output()
        assert await h.feed(b"i IDLE\r\n") == b"+ idling\r\n"
        h.proto.send([Untagged(Status.OK, "something happened")])
        assert h.output() == b"* OK something happened\r\n"
        assert await h.feed(b"DONE\r\nj NOOP\r\n") == b"i OK idle over\r\nj OK NOOP done\r\n"
        assert isinstance(h.session.events[1], IdleDone) and h.session.events[1].ok

    run(body)


def test_garbage_gets_bad_and_repeated_garbage_disconnects() -> None:
    """Lines the parser cannot read are answered BAD without reaching the session; when
    the session says enough, the adapter sends BYE and closes."""

    async def body() -> None:
        h = Harness()
        h.output()
        assert await h.feed(b"\x00\xff\r\n") == b"* BAD Invalid or missing tag\r\n"
        assert (await h.feed(b"t FROB\r\n")).startswith(b"t BAD Unknown command")
        assert h.session.events == []
        reply = await h.feed(b"t2 FETCH\r\n")
        assert reply.endswith(b"* BYE Too many invalid commands\r\n")
        assert h.transport.disconnecting

    run(body)


def test_line_and_literal_limits() -> None:
    """A command line above max_line is BAD [TOOBIG] and skipped; a non-APPEND literal
    above the literal limit is refused before any octet is sent."""

    async def body() -> None:
        h = Harness(max_line=1024)
        h.output()
        reply = await h.feed(b"a NOOP " + b"x" * 2000 + b"\r\nb NOOP\r\n")
        assert reply == b"a BAD [TOOBIG] Command line too long\r\nb OK NOOP done\r\n"
        reply = await h.feed(b"c LOGIN {100000}\r\n")
        assert reply == b"c BAD [TOOBIG] Literal too large\r\n"
        assert limits_for(ImapdConfig(max_message_size=1000)).max_append_literal == 1000

    run(body)


def test_reading_pauses_when_pipelined_input_piles_up() -> None:
    """While a command runs and the client keeps pipelining, the adapter pauses the
    transport once the parser holds pause_buffer octets, and resumes after draining."""

    async def body() -> None:
        h = Harness()
        gate = h.session.gates["a"] = asyncio.Event()
        password = b"p" * 1000
        pending = b"".join(b"n%d LOGIN user %s\r\n" % (i, password) for i in range(400))
        await h.feed(b"a NOOP\r\n" + pending)
        assert h.transport.producerState == "paused"
        gate.set()
        for _ in range(200):
            if h.transport.producerState == "producing":
                break
            await settle()
        assert h.transport.producerState == "producing"
        for _ in range(200):
            await settle()
        assert h.output().count(b" OK LOGIN done") == 400


def test_a_slow_reader_makes_the_session_wait() -> None:
    """When the transport pauses the adapter (its write buffer is full), drain() blocks the
    session until the transport resumes it."""

    async def body() -> None:
        h = Harness()
        h.output()
        h.proto.pauseProducing()
        first = await h.feed(b"f FETCH 1:3 BODY[]\r\n")
        assert first.count(b"FETCH") == 1
        h.proto.resumeProducing()
        await settle()
        h.proto.resumeProducing()
        await settle()
        rest = h.output()
        assert rest.count(b"FETCH (") == 2 and rest.endswith(b"f OK FETCH done\r\n")

    run(body)


def test_disconnect_mid_command_drops_output_and_closes_the_session_after() -> None:
    """If the client goes away while a command runs, the session is told (to stop a
    SEARCH), the command finishes, nothing more is written, pipelined commands are not
    run, and the session is closed afterwards."""

    async def body() -> None:
        h = Harness()
        h.output()
        gate = h.session.gates["a"] = asyncio.Event()
        await h.feed(b"a NOOP\r\nb NOOP\r\n")
        h.proto.connectionLost(failure.Failure(ConnectionError("gone")))
        assert not h.session.closed and h.session.lost  # told, to stop a SEARCH
        gate.set()
        await settle()
        assert h.output() == b""
        assert [e.tag for e in h.session.events] == ["a"]
        assert h.session.closed

    run(body)


def test_idle_timeout_uses_the_injected_clock() -> None:
    """A connection silent for idle_timeout gets BYE and is closed; input resets it."""

    async def body() -> None:
        h = Harness(idle_timeout=60.0, prelogin_timeout=0)
        h.output()
        h.clock.advance(59)
        await h.feed(b"a NOOP\r\n")
        h.clock.advance(59)
        assert not h.transport.disconnecting
        h.clock.advance(2)
        assert h.output() == b"* BYE Autologout; idle for too long\r\n"
        assert h.transport.disconnecting

    run(body)


def test_starttls_discards_pipelined_plaintext() -> None:
    """After STARTTLS's OK the adapter starts TLS with the factory's context; a command
    the client pipelined behind STARTTLS in plaintext is never run."""

    async def body() -> None:
        h = Harness()
        h.output()
        assert not h.proto.secure
        reply = await h.feed(b"s STARTTLS\r\nevil LOGIN a b\r\n")
        assert reply == b"s OK go\r\n"
        assert h.transport.tls_context is h.factory.tls and h.proto.secure
        assert [type(e) for e in h.session.events] == [c.StartTLS]
        assert await h.feed(b"t NOOP\r\n") == b"t OK NOOP done\r\n"

    run(body)


def _client_deflate() -> Any:
    return zlib.compressobj(6, zlib.DEFLATED, -15)


def test_compress_deflates_every_answer_after_its_ok() -> None:
    """COMPRESS's OK goes out plain; then the adapter inflates what the client sends (a
    command pipelined right behind COMPRESS included) and every answer is raw DEFLATE,
    each burst inflatable at once."""

    async def body() -> None:
        h = Harness()
        h.output()
        sender, reader = _client_deflate(), zlib.decompressobj(-15)
        first = sender.compress(b"b NOOP\r\n") + sender.flush(zlib.Z_SYNC_FLUSH)
        reply = await h.feed(b"a COMPRESS DEFLATE\r\n" + first)
        head, rest = reply.split(b"\r\n", 1)
        assert head == b"a OK deflating"
        assert reader.decompress(rest) == b"b OK NOOP done\r\n"
        for octet in sender.compress(b"c LOGOUT\r\n") + sender.flush(zlib.Z_SYNC_FLUSH):
            h.proto.dataReceived(bytes([octet]))
        await settle()
        assert reader.decompress(h.output()) == b"* BYE bye\r\nc OK out\r\n"
        assert [type(e) for e in h.session.events] == [c.Compress, c.Noop, c.Logout]

    run(body)


def test_the_direct_socket_write_carries_compressed_bytes_too() -> None:
    """With a socket to write to directly (nothing queued in Twisted), answers after
    COMPRESS reach the socket deflated, never as plain text."""

    async def body() -> None:
        h = Harness()
        h.output()
        ours, theirs = socket.socketpair()
        with ours, theirs:
            h.proto._direct_socket = ours
            transport = cast(Any, h.transport)
            transport.dataBuffer, transport._tempDataBuffer = b"", []
            transport.disconnecting = False
            assert await h.feed(b"a NOOP\r\n") == b""  # it took the direct way
            assert theirs.recv(100) == b"a OK NOOP done\r\n"
            assert await h.feed(b"z COMPRESS DEFLATE\r\n") == b""
            assert theirs.recv(100) == b"z OK deflating\r\n"
            sender, reader = _client_deflate(), zlib.decompressobj(-15)
            wire = sender.compress(b"b NOOP\r\n") + sender.flush(zlib.Z_SYNC_FLUSH)
            assert await h.feed(wire) == b""
            compressed = theirs.recv(100)
            assert b"NOOP" not in compressed
            assert reader.decompress(compressed) == b"b OK NOOP done\r\n"

    run(body)


def test_a_decompression_bomb_meets_the_line_limit() -> None:
    """A compressed line that inflates far beyond max_line is answered BAD [TOOBIG] and
    skipped, as plain input would be; the command after it runs."""

    async def body() -> None:
        h = Harness()
        h.output()
        await h.feed(b"a COMPRESS DEFLATE\r\n")
        sender, reader = _client_deflate(), zlib.decompressobj(-15)
        bomb = sender.compress(b"b LOGIN {5}\r\n" + b"x" * (20 * 1024 * 1024) + b"\r\nc NOOP\r\n")
        bomb += sender.flush(zlib.Z_SYNC_FLUSH)
        assert len(bomb) < 100 * 1024
        h.proto.dataReceived(bomb)
        await settle()
        # The twin accepts the literal; then the rest is one line far over every limit.
        out = reader.decompress(h.output())
        assert out.startswith(b"+ Ready for literal data\r\nb BAD [TOOBIG]")
        assert out.endswith(b"\r\nc OK NOOP done\r\n")

    run(body)


def test_logout_closes_and_a_crash_says_bye() -> None:
    """LOGOUT's BYE and OK are written before the close; a session that raises gets the
    client a BYE and a closed connection instead of a hang."""

    async def body() -> None:
        h = Harness()
        h.output()
        assert await h.feed(b"z LOGOUT\r\n") == b"* BYE bye\r\nz OK out\r\n"
        # Unregistered, or TLS would never send close_notify and clients would hang.
        assert h.transport.disconnecting and h.transport.producer is None
        h2 = Harness()
        h2.output()
        assert await h2.feed(b"k CHECK\r\n") == b"* BYE Internal server error\r\n"
        assert h2.transport.disconnecting

    run(body)


def test_connection_limit() -> None:
    """Past max_connections a new connection gets BYE and is closed at once; closing one
    makes room again."""

    async def body() -> None:
        clock = task.Clock()
        factory = TwinFactory(ImapdConfig(max_connections=1), clock)
        first = factory.buildProtocol(None)
        t1 = StringTransport()
        first.makeConnection(t1)
        second = factory.buildProtocol(None)
        t2 = StringTransport()
        second.makeConnection(t2)
        assert t2.value() == b"* BYE Too many connections, try again later\r\n"
        assert t2.disconnecting
        first.connectionLost(failure.Failure(ConnectionError("done")))
        third = factory.buildProtocol(None)
        t3 = StringTransport()
        third.makeConnection(t3)
        assert t3.value() == b"* OK twin ready\r\n"

    run(body)


def test_too_much_pipelined_data_is_fatal() -> None:
    """More unconsumed input than the parser's buffer limit ends the connection with BYE."""

    async def body() -> None:
        h = Harness()
        h.output()
        gate = h.session.gates["a"] = asyncio.Event()
        await h.feed(b"a NOOP\r\n")
        await h.feed(b"b NOOP\r\n" * 200_000)
        gate.set()
        await settle()
        assert h.output().endswith(b"* BYE Too much pipelined data\r\n")
        assert h.transport.disconnecting

    run(body)



def test_before_login_literals_are_small_and_a_big_one_is_not_read() -> None:
    """Before login a literal above a few KiB is refused: a synchronizing one before any
    octet is sent, a non-synchronizing one with BAD [TOOBIG] and BYE, without reading
    it; after LOGIN the full limits apply, also to what was pipelined behind LOGIN."""

    async def body() -> None:
        h = Harness()
        h.output()
        assert await h.feed(b"a LOGIN {5000}\r\n") == b"a BAD [TOOBIG] Literal too large\r\n"
        assert await h.feed(b"b LOGIN {5+}\r\nalice secret\r\n") == b"b OK LOGIN done\r\n"
        reply = await h.feed(b"c SELECT {5000+}\r\n" + b"x" * 5000 + b"\r\n")
        assert reply == b"c OK SELECT done\r\n"
        late = Harness()
        late.output()
        reply = await late.feed(b"a APPEND INBOX {60000000+}\r\n" + b"x" * 10_000)
        assert reply == (b"a BAD [TOOBIG] Literal too large\r\n"
                         b"* BYE Literal too large to skip\r\n")
        assert late.transport.disconnecting
        assert late.proto.parser.buffered_bytes == 0
        pipelined = Harness()
        pipelined.output()
        reply = await pipelined.feed(b"a LOGIN alice secret\r\nb SELECT {6000+}\r\n"
                                     + b"y" * 6000 + b"\r\n")
        assert reply == b"a OK LOGIN done\r\nb OK SELECT done\r\n"

    run(body)


def test_a_client_that_does_not_log_in_is_cut_off_however_busy() -> None:
    """prelogin_timeout counts from the greeting and input does not postpone it; logging
    in cancels it and the idle timeout alone remains."""

    async def body() -> None:
        h = Harness(prelogin_timeout=60.0)
        h.output()
        for _ in range(59):
            await h.feed(b"a NOOP\r\n")
            h.clock.advance(1)
        assert not h.transport.disconnecting
        h.clock.advance(1)
        assert h.output().endswith(b"* BYE Log in sooner next time\r\n")
        assert h.transport.disconnecting
        quick = Harness(prelogin_timeout=60.0, idle_timeout=1800.0)
        quick.output()
        assert await quick.feed(b"a LOGIN alice secret\r\n") == b"a OK LOGIN done\r\n"
        quick.clock.advance(600)
        assert not quick.transport.disconnecting

    run(body)


def test_connection_limit_per_address() -> None:
    """Past max_connections_per_address connections from one host, the next from it gets
    BYE while another host still gets in; closing one makes room again."""

    async def body() -> None:
        factory = TwinFactory(ImapdConfig(max_connections_per_address=2), task.Clock())

        def connect(host: str) -> tuple[IMAPServerProtocol, StringTransport]:
            proto = factory.buildProtocol(None)
            transport = StringTransport(peerAddress=IPv4Address("TCP", host, 4000))
            proto.makeConnection(transport)
            return proto, transport

        first, _ = connect("192.0.2.1")
        connect("192.0.2.1")
        _, refused = connect("192.0.2.1")
        assert refused.value() == b"* BYE Too many connections, try again later\r\n"
        assert connect("192.0.2.2")[1].value() == b"* OK twin ready\r\n"
        first.connectionLost(failure.Failure(ConnectionError("done")))
        assert connect("192.0.2.1")[1].value() == b"* OK twin ready\r\n"
        assert factory.per_address == {"192.0.2.1": 2, "192.0.2.2": 1}

    run(body)


class _CountingSocket:
    """A socket that counts its sendmsg calls."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.calls = 0

    def sendmsg(self, chunks: list[bytes]) -> int:
        self.calls += 1
        return self.sock.sendmsg(chunks)


def test_a_commands_responses_leave_in_one_write_with_its_tagged_one() -> None:
    """What a command sends while it runs (three untagged FETCH, each followed by a drain
    that need not wait) is written with its tagged response in one sendmsg, the same
    bytes in the same order; a slow reader still gets the untagged data before the
    command ends (test_a_slow_reader_makes_the_session_wait)."""

    async def body() -> None:
        h = Harness()
        h.output()
        ours, theirs = socket.socketpair()
        with ours, theirs:
            counting = _CountingSocket(ours)
            h.proto._direct_socket = counting
            transport = cast(Any, h.transport)
            transport.dataBuffer, transport._tempDataBuffer = b"", []
            transport.disconnecting = False
            assert await h.feed(b"f FETCH 1:3 BODY[]\r\n") == b""
            assert counting.calls == 1
            got = theirs.recv(10_000)
            body = b"x" * 100
            assert got == b"".join(b"* %d FETCH (BODY[] {100}\r\n%s)\r\n" % (n, body)
                                   for n in range(1, 4)) + b"f OK FETCH done\r\n"

    run(body)

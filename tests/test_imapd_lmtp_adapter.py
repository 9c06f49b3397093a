"""The LMTP adapter (imapd/lmtp.LMTPProtocol) on StringTransport and task.Clock: replies in
order, reading paused while a delivery runs, the pipelining limit, the idle timeout, unread
replies, shutdown, the connection limit.

The session is a scripted twin (the real one is tested over the storage stack in
test_imapd_lmtp.py and over the wire in test_imapd_lmtp_wire.py); what is under test is how
bytes, events and replies move.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, cast

from twisted.internet import task
from twisted.internet.testing import StringTransport
from twisted.python import failure

from imapd.config import ImapdConfig
from imapd.lmtp import MAX_BUFFER, PAUSE_BUFFER, LMTPFactory, LMTPProtocol, LMTPSession
from imapd.lmtp_parser import Command, MessageData


class TwinSession:
    """A scripted stand-in for :class:`imapd.lmtp.LMTPSession`."""

    def __init__(self) -> None:
        self.commands: list[Command] = []
        self.messages: list[MessageData] = []
        self.delivery_gate: asyncio.Event | None = None
        self.closed = False

    def greeting(self) -> list[str]:
        return ["220 lmtp.test ready"]

    async def handle(self, cmd: Command) -> tuple[list[str], bool]:
        self.commands.append(cmd)
        if cmd.verb == "DATA":
            return ["354 go ahead"], True
        if cmd.verb == "QUIT":
            return ["221 2.0.0 bye"], False
        if cmd.verb == "CRASH":
            raise RuntimeError("twin crash")
        return [f"250 {cmd.verb} ok"], False

    async def data(self, message: MessageData) -> list[str]:
        self.messages.append(message)
        if self.delivery_gate is not None:
            await self.delivery_gate.wait()
        return ["250 2.0.0 <a@x> delivered", "250 2.0.0 <b@x> delivered"]

    async def close(self) -> None:
        self.closed = True


class TwinProtocol(LMTPProtocol):
    def _new_session(self) -> LMTPSession:
        session = TwinSession()
        cast(TwinFactory, self.factory).sessions.append(session)
        return cast(LMTPSession, session)


class TwinFactory(LMTPFactory):
    def __init__(self, config: ImapdConfig, clock: task.Clock) -> None:
        super().__init__(cast(Any, None), config, lambda: "lmtp.test", clock=clock)
        self.sessions: list[TwinSession] = []

    def buildProtocol(self, addr: Any) -> LMTPProtocol:  # type: ignore[override]
        return TwinProtocol(self)


class Harness:
    def __init__(self, **config: Any) -> None:
        self.clock = task.Clock()
        self.factory = TwinFactory(ImapdConfig(**config), self.clock)
        self.proto, self.transport = self.connect()
        self.session = self.factory.sessions[-1]
        self.seen = 0

    def connect(self) -> tuple[LMTPProtocol, StringTransport]:
        proto = self.factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        return proto, transport

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


TRANSACTION = b"LHLO mx\r\nMAIL FROM:<s@x>\r\nRCPT TO:<a@x>\r\nRCPT TO:<b@x>\r\nDATA\r\n"
MESSAGE = b"Subject: hi\r\n\r\n..dot\r\n.\r\n"


def test_pipelined_commands_and_a_message_are_answered_in_order() -> None:
    """The greeting, then one reply per pipelined command in order, the message read after
    354 with its dot-stuffing undone, and one reply per recipient, each counted by the
    command it answers."""

    async def body() -> None:
        h = Harness()
        assert h.output() == b"220 lmtp.test ready\r\n"
        out = await h.feed(TRANSACTION + MESSAGE)
        assert out == (b"250 LHLO ok\r\n250 MAIL ok\r\n250 RCPT ok\r\n250 RCPT ok\r\n"
                       b"354 go ahead\r\n250 2.0.0 <a@x> delivered\r\n"
                       b"250 2.0.0 <b@x> delivered\r\n")
        assert h.session.messages == [MessageData(b"Subject: hi\r\n\r\n.dot\r\n", 21)]
        replies = h.factory.metrics.lmtp_replies
        assert replies["DATA", "250"] == 2 and replies["RCPT", "250"] == 2
        assert replies["CONNECT", "220"] == 1
        assert await h.feed(b"QUIT\r\n") == b"221 2.0.0 bye\r\n"
        assert h.transport.disconnecting and h.transport.producer is None

    run(body)


def test_reading_pauses_while_a_delivery_runs() -> None:
    """Bytes pipelined behind a message wait, unparsed, until the delivery is answered; past
    PAUSE_BUFFER the transport is paused, and it resumes once they are consumed."""

    async def body() -> None:
        h = Harness()
        await h.feed(TRANSACTION)
        gate = h.session.delivery_gate = asyncio.Event()
        h.output()
        noops = b"NOOP\r\n" * (PAUSE_BUFFER // 6 + 100)
        assert await h.feed(MESSAGE + noops) == b""
        assert h.proto.parser.paused
        assert h.proto.parser.buffered_bytes == len(noops)
        assert h.transport.producerState == "paused"
        assert [c.verb for c in h.session.commands].count("NOOP") == 0
        gate.set()
        await settle()
        out = h.output()
        assert out.startswith(b"250 2.0.0 <a@x> delivered\r\n250 2.0.0 <b@x> delivered\r\n"
                              b"250 NOOP ok\r\n")
        for _ in range(100):
            if h.transport.producerState == "producing":
                break
            await settle()
        assert h.transport.producerState == "producing"
        for _ in range(10_000):
            out += h.output()
            if out.count(b"250 NOOP ok\r\n") == len(noops) // 6:
                break
            await settle()
        assert out.count(b"250 NOOP ok\r\n") == len(noops) // 6

    run(body)


def test_too_much_pipelined_data_is_refused_after_the_delivery() -> None:
    """A transport that delivers more than MAX_BUFFER unconsumed octets all the same gets
    the delivery's replies, then 500 5.5.6 and 421, and is closed; nothing more is kept."""

    async def body() -> None:
        h = Harness()
        await h.feed(TRANSACTION)
        gate = h.session.delivery_gate = asyncio.Event()
        h.output()
        h.proto.dataReceived(MESSAGE)
        h.proto.dataReceived(b"NOOP\r\n" * (MAX_BUFFER // 6 + 1))
        h.proto.dataReceived(b"NOOP\r\n" * 1000)
        assert h.proto.parser.buffered_bytes <= MAX_BUFFER + 6
        gate.set()
        await settle()
        assert h.output() == (b"250 2.0.0 <a@x> delivered\r\n250 2.0.0 <b@x> delivered\r\n"
                              b"500 5.5.6 Too much pipelined data\r\n"
                              b"421 4.4.2 lmtp.test closing connection\r\n")
        assert h.transport.disconnecting
        assert "NOOP" not in [c.verb for c in h.session.commands]

    run(body)


def test_idle_timeout_uses_the_injected_clock() -> None:
    """A connection silent for idle_timeout gets 421 4.4.2 and is closed; input resets it;
    a client that does not read the goodbye within one more period is aborted."""

    async def body() -> None:
        h = Harness(idle_timeout=60.0)
        h.output()
        h.clock.advance(59)
        assert await h.feed(b"NOOP\r\n") == b"250 NOOP ok\r\n"
        h.clock.advance(59)
        assert not h.transport.disconnecting
        h.clock.advance(2)
        assert h.output() == b"421 4.4.2 lmtp.test Idle for too long, closing connection\r\n"
        assert h.transport.disconnecting and not h.transport.disconnected
        h.clock.advance(60)
        assert h.transport.disconnected

    run(body)


def test_no_command_starts_while_replies_are_unread() -> None:
    """When the transport pauses the adapter (the client does not read its replies), the
    next command waits until the transport resumes it."""

    async def body() -> None:
        h = Harness()
        h.output()
        h.proto.pauseProducing()
        assert await h.feed(b"NOOP\r\nRSET\r\n") == b""
        assert h.session.commands == []
        h.proto.resumeProducing()
        await settle()
        assert h.output() == b"250 NOOP ok\r\n250 RSET ok\r\n"

    run(body)


def test_long_line_and_session_errors_are_answered_and_survived() -> None:
    """A command line over the limit gets 500 5.5.2 and a session crash the LMTP map's
    451 4.3.0 for a bug; the connection goes on."""

    async def body() -> None:
        h = Harness()
        h.output()
        out = await h.feed(b"X" * 5000 + b"\r\nCRASH\r\nNOOP\r\n")
        assert out == b"500 5.5.2 Line too long\r\n451 4.3.0 internal error\r\n250 NOOP ok\r\n"
        assert not h.transport.disconnecting

    run(body)


def test_shutdown_waits_for_the_delivery() -> None:
    """shutdown() during a delivery lets its replies out first, then says 421 and closes;
    an idle connection is closed at once."""

    async def body() -> None:
        h = Harness()
        await h.feed(TRANSACTION)
        gate = h.session.delivery_gate = asyncio.Event()
        h.output()
        await h.feed(MESSAGE)
        _idle, idle_transport = h.connect()
        h.factory.shutdown()
        assert idle_transport.value().endswith(b"421 4.3.2 lmtp.test shutting down\r\n")
        assert h.output() == b""
        gate.set()
        await settle()
        assert h.output() == (b"250 2.0.0 <a@x> delivered\r\n250 2.0.0 <b@x> delivered\r\n"
                              b"421 4.3.2 lmtp.test shutting down\r\n")
        assert h.transport.disconnecting

    run(body)


def test_connection_limit_and_count() -> None:
    """Past max_connections a client gets 421 and is closed; a closed connection frees its
    place and its session is closed."""

    async def body() -> None:
        h = Harness(max_connections=1)
        assert h.factory.open_connections == 1
        _second, transport = h.connect()
        assert transport.value() == b"421 4.3.2 lmtp.test too many connections, try again later\r\n"
        assert transport.disconnecting and h.factory.open_connections == 1
        h.proto.connectionLost(failure.Failure(ConnectionError("gone")))
        await settle()
        assert h.factory.open_connections == 0 and h.session.closed
        _third, transport = h.connect()
        assert transport.value() == b"220 lmtp.test ready\r\n"

    run(body)

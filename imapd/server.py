"""The Twisted side of the IMAP server: a thin adapter between a transport and a session.

Theory of operation
-------------------
Bytes go into :class:`~imapd.parser.Parser`; the adapter takes one event at a time and
hands it to :meth:`Session.dispatch <imapd.session.Session.dispatch>` (a coroutine on the
asyncio loop Twisted runs on), and only when that finished does it look at the next event.
Pipelined commands therefore wait, unparsed, in the parser's buffer and are answered
strictly in order; when too many pile up (``parser.should_pause``) the adapter stops
reading from the socket until they are consumed.

Back-pressure the other way: the adapter is the transport's push producer, so a client
that reads slowly pauses it, and :meth:`IMAPServerProtocol.drain` makes a long FETCH wait
between batches instead of buffering the whole answer in memory.

Everything about the connection lives here and nowhere else: the idle timeout (on the
injected clock), STARTTLS (``transport.startTLS``, after which a fresh parser discards any
plaintext the client pipelined), the connection limit, and failing nothing silently when
the client disconnects in the middle of a command (the command completes; its output is
dropped; the session is closed after it).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from twisted.internet import defer, interfaces, tcp
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.policies import TimeoutMixin
from twisted.python import failure
from zope.interface import implementer

from imapd.backend import Backend
from imapd.commands import Command
from imapd.parser import (
    AuthResponse,
    BadCommand,
    ContinuationNeeded,
    Fatal,
    IdleDone,
    Limits,
    NeedData,
    Parser,
)
from imapd.response import Continuation, Status, Untagged, render_all
from imapd.session import Session
from ops.config import ImapdConfig

__all__ = ["IMAPFactory", "IMAPServerProtocol", "limits_for", "no_delay"]

log = logging.getLogger(__name__)

KiB = 1024


def limits_for(config: ImapdConfig) -> Limits:
    """The parser limits the configuration asks for."""
    append = min(config.max_literal, config.max_message_size)
    return Limits(
        max_line=config.max_line,
        max_literal=min(64 * KiB, config.max_literal),
        max_append_literal=append,
        max_command_literals=append + 64 * KiB,
        max_discard=max(256 * 1024 * KiB, append),
        max_buffer=max(1024 * KiB, 2 * config.max_line),
        pause_buffer=max(256 * KiB, config.max_line),
    )


def no_delay(transport: Any) -> None:
    """Switch Nagle's algorithm off on the TCP socket under ``transport`` (TLS included).

    A command's untagged data and its tagged answer often leave in separate writes (a
    query runs in between); with Nagle the second waits for the client's delayed ACK,
    40 ms on Linux, on every such command.
    """
    for _ in range(3):
        set_no_delay = getattr(transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)
            return
        transport = getattr(transport, "transport", None)
        if transport is None:
            return


@implementer(interfaces.IPushProducer)
class IMAPServerProtocol(Protocol, TimeoutMixin):
    """One IMAP connection; implements :class:`imapd.connection.Connection`."""

    factory: IMAPFactory
    transport: Any

    def __init__(self, factory: IMAPFactory, *, secure: bool = False) -> None:
        self.factory = factory
        self.parser = Parser(factory.limits)
        self.session: Session | None = None
        self._secure = secure
        self._busy = False
        self._pumping = False
        self._gone = False
        self._closing = False
        self._reading_paused = False
        self._output_paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._counted = False
        self._peer = "-"
        self._direct_socket: Any = None

    # -- Connection (what the session uses) -------------------------------------------------

    @property
    def secure(self) -> bool:
        return self._secure

    @property
    def tls_available(self) -> bool:
        return self.factory.tls is not None

    @property
    def peer(self) -> str:
        return self._peer

    def send(self, responses: Any) -> None:
        if self._gone or not responses:
            return
        out = render_all(responses)
        transport = self.transport
        sock = self._direct_socket
        if (sock is not None and not getattr(transport, "TLS", False) and transport.connected
                and not transport.disconnecting and not transport.dataBuffer
                and not transport._tempDataBuffer):
            # Nothing queued in Twisted: send now with one gathered write instead of
            # queueing, which costs two epoll_ctl calls and a loop turn per response.
            if len(out) > IOV_MAX:
                out = [b"".join(out)]
            try:
                sent = sock.sendmsg(out)
            except OSError:
                sent = 0  # EAGAIN, or a failure Twisted's own write will report
            if sent:
                out = _drop_prefix(out, sent)
                if not out:
                    return
        transport.writeSequence(out)

    async def drain(self) -> None:
        if not self._output_paused or self._gone:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._drain_waiters.append(waiter)
        await waiter

    def start_idle(self, tag: str) -> None:
        self.parser.start_idle(tag)

    def start_authenticate(self, tag: str) -> None:
        self.parser.start_authenticate(tag)

    def start_tls(self) -> None:
        if self.factory.tls is None or self._gone:
            return
        self.transport.startTLS(self.factory.tls)
        # RFC 3501 6.2.1 / RFC 2595 3.1: nothing sent before the handshake may be acted on.
        self.parser = Parser(self.factory.limits)
        self._secure = True

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self.setTimeout(None)
        # TLS sends close_notify only once no producer is registered (Twisted's
        # TLSMemoryBIOProtocol); clients waiting for EOF would hang otherwise.
        self.transport.unregisterProducer()
        self.transport.loseConnection()

    # -- connection lifecycle ------------------------------------------------------------------

    def callLater(self, period: Any, func: Any) -> Any:
        """TimeoutMixin's scheduler: the factory's injected clock."""
        return self.factory.clock.callLater(period, func)

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        self._peer = f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}"
        factory = self.factory
        if factory.open_connections >= factory.max_connections:
            self.transport.write(b"* BYE Too many connections, try again later\r\n")
            self._closing = True
            self.transport.loseConnection()
            return
        self._counted = True
        factory.open_connections += 1
        factory.protocols.add(self)
        no_delay(self.transport)
        # Only Twisted's own TCP connection may be bypassed.  A TLS wrapper (IMAPS) passes
        # attribute lookups through to the TCP transport under it, so duck typing would
        # find a socket there and send plaintext; test transports have none.
        if isinstance(self.transport, tcp.Connection):
            self._direct_socket = self.transport.socket
        self.transport.registerProducer(self, True)
        self.session = factory.new_session(self)
        if factory.config.idle_timeout > 0:
            self.setTimeout(factory.config.idle_timeout)
        self.send([self.session.greeting()])

    def connectionLost(self, reason: failure.Failure | None = None) -> None:
        self._gone = True
        self.setTimeout(None)
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._drain_waiters.clear()
        if self._counted:
            self._counted = False
            self.factory.open_connections -= 1
            self.factory.protocols.discard(self)
        if not self._busy:
            self._close_session()

    def _close_session(self) -> None:
        session, self.session = self.session, None
        if session is not None:
            self.factory.run(session.close())

    def timeoutConnection(self) -> None:
        self.send([Untagged(Status.BYE, "Autologout; idle for too long")])
        self.close()

    # -- producer interface: the transport's write buffer -------------------------------------

    def pauseProducing(self) -> None:
        self._output_paused = True

    def resumeProducing(self) -> None:
        self._output_paused = False
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def stopProducing(self) -> None:
        self._gone = True
        self.resumeProducing()

    # -- input ----------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._gone or self._closing:
            return
        self.resetTimeout()
        self.parser.feed(data)
        self._pump()
        if self.parser.should_pause and not self._reading_paused and not self._gone:
            self._reading_paused = True
            self.transport.pauseProducing()

    def _pump(self) -> None:
        """Hand parser events to the session, one at a time (see the module docstring)."""
        if self._pumping:
            return
        self._pumping = True
        try:
            while not self._busy and not self._gone and not self._closing:
                session = self.session
                if session is None:
                    return
                event = self.parser.next_event()
                if isinstance(event, NeedData):
                    break
                if isinstance(event, ContinuationNeeded):
                    refusal = session.literal_refusal(event)
                    if refusal is None:
                        self.parser.accept_literal()
                        self.send([Continuation("Ready for literal data")])
                    else:
                        self.parser.reject_literal()
                        self.send([refusal])
                elif isinstance(event, BadCommand):
                    self.send([event.response()])
                    if session.bad_command():
                        self.send([Untagged(Status.BYE, "Too many invalid commands")])
                        self.close()
                elif isinstance(event, Fatal):
                    self.send([Untagged(Status.BYE, event.text)])
                    self.close()
                elif isinstance(event, Command | IdleDone | AuthResponse):
                    self._busy = True
                    self._run(session, event)
        finally:
            self._pumping = False
        if self._reading_paused and not self.parser.should_pause and not self._gone:
            self._reading_paused = False
            self.transport.resumeProducing()

    def _run(self, session: Session, event: Command | IdleDone | AuthResponse) -> None:
        d = self.factory.run(session.dispatch(event))
        d.addErrback(self._crashed)
        d.addBoth(self._finished)

    def _crashed(self, reason: failure.Failure) -> None:
        log.error("session crashed for %s: %s", self._peer, reason.getTraceback())
        self.send([Untagged(Status.BYE, "Internal server error")])
        self.close()

    def _finished(self, _result: object) -> None:
        self._busy = False
        if self._gone:
            self._close_session()
            return
        self._pump()


#: Buffers per ``sendmsg`` (Linux's UIO_MAXIOV); more are joined first.
IOV_MAX = 1024


def _drop_prefix(chunks: list[bytes], count: int) -> list[bytes]:
    """The chunks left after the first ``count`` bytes were sent."""
    for i, chunk in enumerate(chunks):
        if count < len(chunk):
            rest = chunks[i:]
            if count:
                rest[0] = chunk[count:]
            return rest
        count -= len(chunk)
    return []


class IMAPFactory(Factory):
    """Builds IMAP connections over one :class:`~imapd.backend.Backend`.

    :param tls: the context factory for STARTTLS (and, for the IMAPS listener, built with
        ``secure=True`` and wrapped by ``listenSSL``); None when no certificate is set.
    :param clock: an ``IReactorTime`` for the idle timeout (default: the backend's).
    """

    protocol = IMAPServerProtocol  # type: ignore[assignment]

    def __init__(self, backend: Backend, *, tls: Any = None, secure: bool = False,
                 clock: Any = None) -> None:
        self.backend = backend
        self.config = backend.config
        self.limits = limits_for(backend.config)
        self.tls = tls
        self.secure = secure
        self.clock = clock if clock is not None else backend.clock
        self.max_connections = backend.config.max_connections
        self.open_connections = 0
        self.protocols: set[IMAPServerProtocol] = set()

    def buildProtocol(self, addr: Any) -> IMAPServerProtocol:  # type: ignore[override]
        return IMAPServerProtocol(self, secure=self.secure)

    def new_session(self, conn: IMAPServerProtocol) -> Session:
        return Session(self.backend, conn)

    def shutdown(self) -> None:
        """Say BYE to every connection and close it (the server is stopping)."""
        for proto in list(self.protocols):
            proto.send([Untagged(Status.BYE, "Server shutting down")])
            proto.close()

    @staticmethod
    def run(coro: Any) -> defer.Deferred[Any]:
        """Run a coroutine on the asyncio loop; a Deferred for its outcome."""
        return defer.Deferred.fromFuture(asyncio.ensure_future(coro))

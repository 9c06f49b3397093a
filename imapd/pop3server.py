"""The Twisted side of POP3: a thin adapter between a transport and a
:class:`~imapd.pop3session.Pop3Session`, built like the IMAP one (:mod:`imapd.server`).

One command at a time, in order (RFC 2449 PIPELINING: the client may send several; the
rest wait in the parser, and reading pauses when they pile up); the idle timeout on the
injected clock (RFC 1939 asks for at least ten minutes); STLS through
``transport.startTLS`` with a fresh parser, so plaintext pipelined behind STLS is dropped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from twisted.internet import defer, interfaces
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.policies import TimeoutMixin
from twisted.python import failure
from zope.interface import implementer

from imapd.backend import Backend
from imapd.pop3parser import AuthLine, BadLine, Fatal, NeedData, Pop3Command, Pop3Parser, err
from imapd.pop3session import Pop3Session
from imapd.server import no_delay

__all__ = ["Pop3Factory", "Pop3Protocol"]

log = logging.getLogger(__name__)

#: Unconsumed input at which reading pauses.
PAUSE_BUFFER = 64 * 1024
#: BAD lines in a row before the server hangs up.
MAX_BAD_LINES = 20


@implementer(interfaces.IPushProducer)
class Pop3Protocol(Protocol, TimeoutMixin):
    """One POP3 connection; implements :class:`~imapd.pop3session.Pop3Connection`."""

    factory: Pop3Factory
    transport: Any

    def __init__(self, factory: Pop3Factory, *, secure: bool = False) -> None:
        self.factory = factory
        self.parser = Pop3Parser()
        self.session: Pop3Session | None = None
        self._secure = secure
        self._busy = False
        self._gone = False
        self._closing = False
        self._pumping = False
        self._reading_paused = False
        self._output_paused = False
        self._waiters: list[asyncio.Future[None]] = []
        self._bad = 0
        self._counted = False
        self._peer = "-"

    # -- Pop3Connection ------------------------------------------------------------------------

    @property
    def secure(self) -> bool:
        return self._secure

    @property
    def tls_available(self) -> bool:
        return self.factory.tls is not None

    @property
    def peer(self) -> str:
        return self._peer

    def write(self, chunks: Sequence[bytes]) -> None:
        if not self._gone:
            self.transport.writeSequence([c for c in chunks if c])

    async def drain(self) -> None:
        if not self._output_paused or self._gone:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        await waiter

    def expect_auth_line(self) -> None:
        self.parser.expect_auth_line()

    def start_tls(self) -> None:
        if self.factory.tls is None or self._gone:
            return
        self.transport.startTLS(self.factory.tls)
        self.parser = Pop3Parser()
        self._secure = True

    def close(self) -> None:
        if not self._closing:
            self._closing = True
            self.setTimeout(None)
            # TLS sends close_notify only once no producer is registered (Twisted's
            # TLSMemoryBIOProtocol); clients waiting for EOF would hang otherwise.
            self.transport.unregisterProducer()
            self.transport.loseConnection()

    # -- lifecycle ------------------------------------------------------------------------

    def callLater(self, period: Any, func: Any) -> Any:
        """TimeoutMixin's scheduler: the factory's injected clock."""
        return self.factory.clock.callLater(period, func)

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        self._peer = f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}"
        if self.factory.open_connections >= self.factory.config.max_connections:
            self.transport.write(err("Too many connections, try again later", "SYS/TEMP"))
            self._closing = True
            self.transport.loseConnection()
            return
        self._counted = True
        self.factory.open_connections += 1
        self.factory.protocols.add(self)
        no_delay(self.transport)
        self.transport.registerProducer(self, True)
        self.session = Pop3Session(self.factory.backend, self)
        if self.factory.config.pop3_idle_timeout > 0:
            self.setTimeout(self.factory.config.pop3_idle_timeout)
        self.write([self.session.greeting()])

    def connectionLost(self, reason: failure.Failure | None = None) -> None:
        self._gone = True
        self.setTimeout(None)
        self.resumeProducing()
        if self._counted:
            self._counted = False
            self.factory.open_connections -= 1
            self.factory.protocols.discard(self)
        if not self._busy:
            self._close_session()

    def _close_session(self) -> None:
        session, self.session = self.session, None
        if session is not None:
            Pop3Factory.run(session.close())

    def timeoutConnection(self) -> None:
        self.write([err("Idle for too long, closing")])
        self.close()

    def pauseProducing(self) -> None:
        self._output_paused = True

    def resumeProducing(self) -> None:
        self._output_paused = False
        waiters, self._waiters = self._waiters, []
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
        if self.parser.buffered_bytes >= PAUSE_BUFFER and not self._reading_paused:
            self._reading_paused = True
            self.transport.pauseProducing()

    def _pump(self) -> None:
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
                if isinstance(event, Fatal):
                    self.write([err(event.text)])
                    self.close()
                elif isinstance(event, BadLine):
                    self.write([err(event.text)])
                    self._bad += 1
                    if self._bad >= MAX_BAD_LINES:
                        self.close()
                elif isinstance(event, Pop3Command | AuthLine):
                    self._bad = 0
                    self._busy = True
                    d = Pop3Factory.run(session.dispatch(event))
                    d.addErrback(self._crashed)
                    d.addBoth(self._finished)
        finally:
            self._pumping = False
        if self._reading_paused and self.parser.buffered_bytes < PAUSE_BUFFER:
            self._reading_paused = False
            if not self._gone:
                self.transport.resumeProducing()

    def _crashed(self, reason: failure.Failure) -> None:
        log.error("POP3 session crashed for %s: %s", self._peer, reason.getTraceback())
        self.write([err("Internal server error")])
        self.close()

    def _finished(self, _result: object) -> None:
        self._busy = False
        if self._gone:
            self._close_session()
            return
        self._pump()


class Pop3Factory(Factory):
    """POP3 connections over one :class:`~imapd.backend.Backend`."""

    protocol = Pop3Protocol  # type: ignore[assignment]

    def __init__(self, backend: Backend, *, tls: Any = None, secure: bool = False,
                 clock: Any = None) -> None:
        self.backend = backend
        self.config = backend.config
        self.tls = tls
        self.secure = secure
        self.clock = clock if clock is not None else backend.clock
        self.open_connections = 0
        self.protocols: set[Pop3Protocol] = set()

    def buildProtocol(self, addr: Any) -> Pop3Protocol:  # type: ignore[override]
        return Pop3Protocol(self, secure=self.secure)

    def shutdown(self) -> None:
        """Close every connection (the server is stopping); nothing is deleted without
        QUIT."""
        for proto in list(self.protocols):
            proto.write([err("Server shutting down", "SYS/TEMP")])
            proto.close()

    @staticmethod
    def run(coro: Any) -> defer.Deferred[Any]:
        """Run a coroutine on the asyncio loop; a Deferred for its outcome."""
        return defer.Deferred.fromFuture(asyncio.ensure_future(coro))

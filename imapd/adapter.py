"""What the IMAP and POP3 Twisted adapters share: one connection between a transport, a
sans-IO parser and a session, one command at a time.

Theory of operation
-------------------
Bytes go into the parser; the adapter takes one event at a time and hands it to the
subclass (:meth:`SessionProtocol._handle`), which either answers it at once (garbage, a
literal to accept) or passes it to the session's ``dispatch`` coroutine on the asyncio loop
Twisted runs on (:meth:`SessionProtocol._dispatch`); only when that finished does the
adapter look at the next event.  Pipelined commands therefore wait, unparsed, in the
parser's buffer and are answered strictly in order; when too many pile up
(:meth:`SessionProtocol._should_pause`) the adapter stops reading from the socket until they
are consumed.

Back-pressure the other way: the adapter is the transport's push producer, so a client
that reads slowly pauses it, and :meth:`SessionProtocol.drain` makes a long answer wait
between batches instead of buffering it whole in memory.

Everything about the connection lives here and nowhere else: the idle timeout (on the
injected clock), STARTTLS/STLS (``transport.startTLS``, after which a fresh parser discards
any plaintext the client pipelined), the connection limits (in all, and per client
address, so one host cannot take every slot), and failing nothing silently
when the client disconnects in the middle of a command (the command completes; its output
is dropped; the session is closed after it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, ClassVar, Generic, TypeVar
from typing import Protocol as TypingProtocol

from twisted.internet import defer, interfaces
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.policies import TimeoutMixin
from twisted.python import failure
from zope.interface import implementer

from imapd.backend import Backend

__all__ = ["SessionFactory", "SessionProtocol", "no_delay"]


class _Session(TypingProtocol):
    """What the adapter itself asks of a session (the rest is the subclass's business)."""

    async def close(self) -> None: ...


class _Parser(TypingProtocol):
    """What the adapter itself asks of a sans-IO parser."""

    def feed(self, data: bytes) -> None: ...

    def next_event(self) -> object: ...


SessionT = TypeVar("SessionT", bound=_Session)
ParserT = TypeVar("ParserT", bound=_Parser)
ProtocolT = TypeVar("ProtocolT", bound="SessionProtocol[Any, Any]")


def _run(coro: Coroutine[Any, Any, Any]) -> defer.Deferred[Any]:
    """Run a coroutine on the asyncio loop; a Deferred for its outcome."""
    return defer.Deferred.fromFuture(asyncio.ensure_future(coro))


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
class SessionProtocol(Protocol, TimeoutMixin, Generic[SessionT, ParserT]):
    """One connection; the subclass supplies its parser, session and protocol words.

    :cvar too_many_connections: written, raw, to a client over the connection limit.
    :cvar idle_words: the last words before the idle timeout closes the connection.
    :cvar logger: the subclass module's logger (crashes are reported there).
    :cvar session_name: how a crash report names the session.
    """

    too_many_connections: ClassVar[bytes]
    idle_words: ClassVar[str]
    logger: ClassVar[logging.Logger]
    session_name: ClassVar[str] = "session"

    factory: SessionFactory[Any]
    transport: Any

    def __init__(self, factory: SessionFactory[Any], *, secure: bool = False) -> None:
        self.factory = factory
        self.parser: ParserT = self._new_parser()
        self.session: SessionT | None = None
        self._secure = secure
        self._busy = False
        self._pumping = False
        self._gone = False
        self._closing = False
        self._reading_paused = False
        self._output_paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._counted = False
        self._host = "?"
        self._peer = "-"

    # -- what the subclass supplies -------------------------------------------------------

    def _new_parser(self) -> ParserT:
        """A parser in its initial state (on connect and after STARTTLS)."""
        raise NotImplementedError

    def _new_session(self) -> SessionT:
        """The session for this connection, created once it is accepted."""
        raise NotImplementedError

    def _greet(self, session: SessionT) -> None:
        """Write the session's greeting."""
        raise NotImplementedError

    def goodbye(self, text: str) -> None:
        """Write a final message (IMAP ``* BYE``, POP3 ``-ERR``) before closing."""
        raise NotImplementedError

    def _should_pause(self) -> bool:
        """The parser holds so much unconsumed input that reading should pause."""
        raise NotImplementedError

    def _handle(self, session: SessionT, event: object) -> bool:
        """Act on one parser event; False when the parser needs more data."""
        raise NotImplementedError

    # -- the session's view of the connection --------------------------------------------

    @property
    def secure(self) -> bool:
        return self._secure

    @property
    def tls_available(self) -> bool:
        return self.factory.tls is not None

    @property
    def peer(self) -> str:
        return self._peer

    async def drain(self) -> None:
        if not self._output_paused or self._gone:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._drain_waiters.append(waiter)
        await waiter

    def start_tls(self) -> None:
        if self.factory.tls is None or self._gone:
            return
        self.transport.startTLS(self.factory.tls)
        # RFC 3501 6.2.1 / RFC 2595 3.1: nothing sent before the handshake may be acted on.
        self.parser = self._new_parser()
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

    # -- connection lifecycle -------------------------------------------------------------

    def callLater(self, period: Any, func: Any) -> Any:
        """TimeoutMixin's scheduler: the factory's injected clock."""
        return self.factory.clock.callLater(period, func)

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        self._host = str(getattr(peer, "host", "?"))
        self._peer = f"{self._host}:{getattr(peer, 'port', '?')}"
        factory = self.factory
        from_host = factory.per_address.get(self._host, 0)
        if factory.open_connections >= factory.max_connections or (
                0 < factory.max_per_address <= from_host):
            self.transport.write(self.too_many_connections)
            self._closing = True
            self.transport.loseConnection()
            return
        self._counted = True
        factory.open_connections += 1
        factory.per_address[self._host] = from_host + 1
        factory.protocols.add(self)
        no_delay(self.transport)
        self._accepted()
        self.transport.registerProducer(self, True)
        self.session = self._new_session()
        if factory.idle_timeout > 0:
            self.setTimeout(factory.idle_timeout)
        self._greet(self.session)

    def _accepted(self) -> None:
        """The connection counts against the limit; the producer is not registered yet."""

    def connectionLost(self, reason: failure.Failure | None = None) -> None:
        self._gone = True
        self.setTimeout(None)
        self._wake_drainers()
        if self._counted:
            self._counted = False
            self.factory.open_connections -= 1
            self.factory.protocols.discard(self)
            left = self.factory.per_address.pop(self._host) - 1
            if left:
                self.factory.per_address[self._host] = left
        if not self._busy:
            self._close_session()

    def _close_session(self) -> None:
        session, self.session = self.session, None
        if session is not None:
            _run(session.close())

    def timeoutConnection(self) -> None:
        self.goodbye(self.idle_words)
        self.close()

    # -- producer interface: the transport's write buffer ---------------------------------

    def pauseProducing(self) -> None:
        self._output_paused = True

    def resumeProducing(self) -> None:
        self._output_paused = False
        self._wake_drainers()

    def stopProducing(self) -> None:
        self._gone = True
        self.resumeProducing()

    def _wake_drainers(self) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # -- input ----------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._gone or self._closing:
            return
        self.resetTimeout()
        self.parser.feed(data)
        self._pump()
        if self._should_pause() and not self._reading_paused and not self._gone:
            self._reading_paused = True
            self.transport.pauseProducing()

    def _pump(self) -> None:
        """Hand parser events over, one at a time (see the module docstring)."""
        if self._pumping:
            return
        self._pumping = True
        try:
            while not self._busy and not self._gone and not self._closing:
                session = self.session
                if session is None:
                    return
                if not self._handle(session, self.parser.next_event()):
                    break
        finally:
            self._pumping = False
        if self._reading_paused and not self._should_pause() and not self._gone:
            self._reading_paused = False
            self.transport.resumeProducing()

    def _dispatch(self, work: Coroutine[Any, Any, Any]) -> None:
        """Run the session's answer to one event; the next waits until it is done."""
        self._busy = True
        d = _run(work)
        d.addErrback(self._crashed)
        d.addBoth(self._finished)

    def _crashed(self, reason: failure.Failure) -> None:
        self.logger.error("%s crashed for %s: %s", self.session_name, self._peer,
                       reason.getTraceback())
        self.goodbye("Internal server error")
        self.close()

    def _finished(self, _result: object) -> None:
        self._busy = False
        if self._gone:
            self._close_session()
            return
        self._pump()


class SessionFactory(Factory, Generic[ProtocolT]):
    """Builds connections over one :class:`~imapd.backend.Backend`.

    :param tls: the context factory for STARTTLS (and, for the implicit-TLS listener,
        built with ``secure=True`` and wrapped by ``listenSSL``); None when no certificate
        is set.
    :param clock: an ``IReactorTime`` for the idle timeout (default: the backend's).
    :ivar idle_timeout: seconds of silence before a connection is closed (0: never).
    """

    idle_timeout: float

    def __init__(self, backend: Backend, *, tls: Any = None, secure: bool = False,
                 clock: Any = None) -> None:
        self.backend = backend
        self.config = backend.config
        self.tls = tls
        self.secure = secure
        self.clock = clock if clock is not None else backend.clock
        self.max_connections = backend.config.max_connections
        self.open_connections = 0
        #: Connections per client address (``max_per_address`` at most; 0: no limit).
        self.max_per_address = backend.config.max_connections_per_address
        self.per_address: dict[str, int] = {}
        self.protocols: set[ProtocolT] = set()


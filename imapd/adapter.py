"""What the IMAP, POP3 and LMTP Twisted adapters share: one connection between a transport,
a sans-IO parser and a session, one command at a time.

Theory of operation
-------------------
Bytes go into the parser; the adapter takes one event at a time and hands it to the
subclass (:meth:`SessionProtocol._handle`), which either answers it at once (garbage, a
literal to accept) or passes it to the session's ``dispatch`` coroutine on the asyncio loop
Twisted runs on (:meth:`SessionProtocol._dispatch`); only when that finished does the
adapter look at the next event.  Pipelined commands therefore wait, unparsed, in the
parser's buffer and are answered strictly in order; once :attr:`SessionProtocol.pause_buffer`
octets pile up the adapter stops reading from the socket until they are consumed, so what
the client sends beyond that stays in the kernel.  A transport that delivers more than
:attr:`SessionProtocol.max_buffer` octets all the same ends the connection ("Too much
pipelined data").

A client that breaks a limit the parser cannot recover from makes ``next_event`` raise
:class:`~runtime.receivebuffer.RemoteProtocolError`; the adapter answers it in the
protocol's words (:meth:`SessionProtocol._protocol_error`: IMAP ``* BYE``, POP3 ``-ERR``,
LMTP ``500``/``421``) and closes.

Back-pressure the other way: the adapter is the transport's push producer, so a client
that reads slowly pauses it, and :meth:`SessionProtocol.drain` makes a long answer wait
between batches instead of buffering it whole in memory.

Everything about the connection lives here and nowhere else: the idle timeout (on the
injected clock), STARTTLS/STLS (``transport.startTLS``, after which a fresh parser discards
any plaintext the client pipelined), the connection limits and count (in all, and per
client address, so one host cannot take every slot), and failing nothing silently when the
client disconnects in the middle of a command (the command completes; its output is
dropped; the session is closed after it).
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

from runtime.receivebuffer import RemoteProtocolError

__all__ = ["TOO_MUCH_DATA", "SessionFactory", "SessionProtocol", "no_delay"]

#: The reason given when more than max_buffer octets were received and not consumed.
TOO_MUCH_DATA = "Too much pipelined data"


class _Session(TypingProtocol):
    """What the adapter itself asks of a session (the rest is the subclass's business)."""

    async def close(self) -> None: ...


class _Parser(TypingProtocol):
    """What the adapter itself asks of a sans-IO parser."""

    def feed(self, data: bytes) -> None: ...

    def next_event(self) -> object: ...

    @property
    def buffered_bytes(self) -> int: ...


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
    :ivar pause_buffer: unconsumed input at which reading pauses.
    :ivar max_buffer: unconsumed input beyond which the connection is given up (only a
        transport that ignores the pause gets there).
    """

    too_many_connections: ClassVar[bytes]
    idle_words: ClassVar[str]
    logger: ClassVar[logging.Logger]
    session_name: ClassVar[str] = "session"
    pause_buffer: int
    max_buffer: int

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
        self._abort_call: Any = None

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

    def _handle(self, session: SessionT, event: object) -> bool:
        """Act on one parser event; False when the parser needs more data."""
        raise NotImplementedError

    def _refuse(self) -> None:
        """Tell a client over the connection limit so (it is closed next)."""
        self.transport.write(self.too_many_connections)

    def _protocol_error(self, error: RemoteProtocolError) -> None:
        """The client broke a limit: say why in the protocol's words, and close."""
        self.goodbye(error.reason)
        self.close()

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
        idle = self.factory.idle_timeout
        if idle > 0 and not self._gone:
            # loseConnection waits for the output to be read: a client that never reads
            # (one pipelining without reading its replies) is cut off after one more period.
            self._abort_call = self.factory.clock.callLater(idle, self._abort)

    def _abort(self) -> None:
        self._abort_call = None
        if not self._gone:
            self.logger.info("aborting %s: it did not read its last replies", self._peer)
            self.transport.abortConnection()

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
            self._refuse()
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
        if self._abort_call is not None and self._abort_call.active():
            self._abort_call.cancel()
        self._abort_call = None
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
        if self.parser.buffered_bytes <= self.max_buffer:
            # Beyond it nothing more is kept: the pump reports the overflow in turn.
            self.parser.feed(data)
        self._pump()
        if (self.parser.buffered_bytes >= self.pause_buffer and not self._reading_paused
                and not self._gone and not self._closing):
            self._reading_paused = True
            self.transport.pauseProducing()

    def _pump(self) -> None:
        """Hand parser events over, one at a time (see the module docstring)."""
        if self._pumping:
            return
        self._pumping = True
        parser = self.parser
        try:
            while not self._busy and not self._gone and not self._closing:
                session = self.session
                if session is None:
                    return
                try:
                    if parser.buffered_bytes > self.max_buffer:
                        raise RemoteProtocolError(TOO_MUCH_DATA)
                    event = parser.next_event()
                except RemoteProtocolError as error:
                    self._protocol_error(error)
                    break
                if not self._handle(session, event):
                    break
        finally:
            self._pumping = False
        if (self._reading_paused and parser.buffered_bytes < self.pause_buffer
                and not self._gone):
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
    """Builds connections and holds what they share.

    :param max_connections: connections served at once; the next is refused.
    :param max_per_address: connections served at once from one client address (0: no
        limit).
    :param idle_timeout: seconds of silence before a connection is closed (0: never).
    :param clock: an ``IReactorTime`` for the idle timeout.
    :param tls: the context factory for STARTTLS (and, for the implicit-TLS listener,
        built with ``secure=True`` and wrapped by ``listenSSL``); None when no certificate
        is set.
    :ivar open_connections: connections counted against ``max_connections`` now.
    :ivar protocols: those connections.
    """

    def __init__(self, *, max_connections: int, max_per_address: int, idle_timeout: float,
                 clock: Any, tls: Any = None, secure: bool = False) -> None:
        self.max_connections = max_connections
        self.max_per_address = max_per_address
        self.idle_timeout = idle_timeout
        self.clock = clock
        self.tls = tls
        self.secure = secure
        self.open_connections = 0
        #: Connections per client address (``max_per_address`` at most).
        self.per_address: dict[str, int] = {}
        self.protocols: set[ProtocolT] = set()


"""The Twisted side of a memcached-protocol server: a thin protocol around the parser and
a command handler.

Theory of operation
-------------------
Bytes go to :class:`~objstore.protocol.CommandParser`; each command goes to a
:class:`CommandHandler` (objstored's :class:`~objstore.handler.Handler`, directord's
:class:`~director.proxy.ProxyHandler`), whose answer is a reply (written at once), a
Deferred (a write waiting for its group commit, a read waiting for another server) or an
iterator of chunks (a metadump stream).  Replies leave in request order: each answer takes
a slot in a FIFO and the FIFO is written out up to its first unfinished slot.

Order of effects on one connection: a read that follows a pending write waits until that
write is done, so a client reads its own writes; reads answered later (Deferreds) run
concurrently.  A handler whose writes take effect when they are executed, in execution order
(objstored: the store applies them in queue order) lets writes run ahead of each other;
one whose writes take effect only when their Deferred fires (directord: replicas written
over the network) sets ``serial_writes``, and then a write also waits for every earlier
command of the connection, so ``set; delete; set; delete`` takes effect in the order sent.

Back-pressure lives here and nowhere else:

* the protocol is a streaming producer for its transport: when the transport's buffer is
  full (a slow reader) it stops reading and stops executing buffered commands; a reader that
  stops reading for ``slow_reader_timeout`` seconds is cut off (one that reads, however
  slowly, is served);
* at most ``max_pipeline`` answers may be outstanding per connection, then reading pauses;
* replies are bounded in bytes: reading and executing pause while the replies waiting to
  be written (behind an unfinished answer, or held while the transport is full) exceed
  ``max_reply_buffer``, or while the answers in flight, each counted at the connection's
  recent reply size (see :meth:`ObjstoreProtocol._full`), would; a transport that is full
  gets no more bytes until it drained, so what a client does not read stays bounded;
* a closed connection cancels the reads it was still waiting for and drops the commands it
  had sent but not yet started; writes already started finish;
* ``max_connections`` connections at most, the next one gets memcached's
  ``ERROR Too many open connections`` and is closed;
* ``idle_timeout`` (0 = off) closes connections that say nothing.

Authentication lives here too, once for objstored and directord: with an auth table, a
connection's commands go to :func:`objstore.auth.authenticate` instead of the handler
until one authenticates it, and its parser enforces the small
:data:`~objstore.auth.AUTH_LIMITS` until then.  TLS is the transport's business
(:func:`listen` wraps the factory); the one thing this adapter must know is that replies
are written straight to the socket only on a plain TCP connection (a TLS wrapper passes
attribute lookups through to the TCP transport under it, so duck typing would find the
raw socket there and send plaintext).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import logging
import struct
import termios
import time
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final

from twisted.internet import defer, interfaces, tcp
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.policies import TimeoutMixin
from twisted.python import failure
from zope.interface import implementer

from objstore import protocol as p
from objstore.auth import AUTH_LIMITS, AuthTable, authenticate
from objstore.replies import ErrorReply, Reply, error_reply, serialize_into
from objstore.stats import GET, SET, Counters, LatencySampler
from runtime.directwrite import nothing_queued, send_now
from runtime.errors import kind_of
from runtime.receivebuffer import RemoteProtocolError
from runtime.workers import adopt_listener

log = logging.getLogger(__name__)



class CommandHandler(typing.Protocol):
    """Executes parsed commands; the protocol below only moves bytes and keeps order."""

    def execute(self, cmd: p.Command) -> Answer:
        """Run one command (never Quit: the protocol handles that).  A Deferred answer
        must not fail: errors are replies."""

    def is_write(self, cmd: p.Command) -> bool:
        """True when later reads on the same connection must wait for this command."""

    @property
    def serial_writes(self) -> bool:
        """True when a write must also wait for every earlier command of its connection
        (its effect happens only when its answer is ready)."""


class ConnectionSettings(typing.Protocol):
    """The limits the protocol enforces (:class:`~ops.config.ObjstoreConfig` has them)."""

    @property
    def max_connections(self) -> int: ...
    @property
    def max_line(self) -> int: ...
    @property
    def max_item_size(self) -> int: ...
    @property
    def max_pipeline(self) -> int: ...
    @property
    def idle_timeout(self) -> float: ...
    @property
    def slow_reader_timeout(self) -> float: ...
    @property
    def max_reply_buffer(self) -> int: ...

class SecuritySettings(typing.Protocol):
    """Who may use a listener (``[objstore]`` and ``[director]`` both have these keys)."""

    @property
    def auth_file(self) -> str: ...
    @property
    def tls_cert(self) -> str: ...
    @property
    def tls_key(self) -> str: ...
    @property
    def tls_ca(self) -> str: ...


@dataclass(frozen=True)
class Security:
    """What a listener demands of its clients, read once at start-up.

    :param auth: the users who may connect (None: anyone).
    :param tls: the server context factory (None: plaintext).
    """

    auth: AuthTable | None = None
    tls: Any = None

    @classmethod
    def load(cls, section: str, settings: SecuritySettings) -> Security:
        """Read the auth file and the TLS files ``settings`` name.

        :param section: the config section, for the keys errors name.
        :raises ConfigError: a file is missing, unreadable, not private (the auth file)
            or malformed.
        """
        auth = (AuthTable.load(settings.auth_file, f"{section}.auth_file")
                if settings.auth_file else None)
        tls = None
        if settings.tls_cert:
            from runtime.tls import server_context

            tls = server_context(section, settings.tls_cert, settings.tls_key,
                                 settings.tls_ca)
        return cls(auth, tls)


#: Plaintext, no authentication.
OPEN: Final = Security()

TOO_MANY_CONNECTIONS: Final = b"ERROR Too many open connections\r\n"
#: Write what has accumulated once it exceeds this, so the transport can push back.
FLUSH_THRESHOLD: Final = 256 * 1024


def _failed(exc: Exception, cmd: object) -> ErrorReply:
    """The reply to a handler that raised: a bug is logged with its traceback."""
    if kind_of(exc) is None:
        log.exception("command %r failed", cmd)
    else:
        log.warning("command %r failed: %s", cmd, exc)
    return error_reply(exc)


class _Slot:
    """One answer in the reply FIFO; ``write`` marks a pending write that holds reads,
    ``size`` the bytes of a ready answer, ``deferred`` the answer still to come."""

    __slots__ = ("chunks", "deferred", "ready", "size", "stream", "write")

    def __init__(self, chunks: list[bytes] | None = None,
                 stream: Iterator[bytes] | None = None, write: bool = False,
                 size: int = 0) -> None:
        self.chunks = chunks
        self.stream = stream
        self.ready = chunks is not None
        self.write = write
        self.size = size
        self.deferred: defer.Deferred[Reply | None] | None = None


T = typing.TypeVar("T")


class Pending(_Slot, typing.Generic[T]):
    """A reply to come that one plain call completes: what objstored's handler answers a
    write with, in place of a Deferred (a durable write's completion is the hot path of
    every set, and a Deferred with its callback chain costs several times this).

    ``complete(result)`` (the group commit's callback, run on the reactor thread) turns
    the result into the reply with ``then`` and hands it to the connection.  It never
    fails (``then`` raising is logged and answered as an error) and is never cancelled: a
    write started finishes even when its connection is gone.  It may complete before the
    handler returns it (a store without a committer): the protocol then takes its reply
    at once.  It is its own slot in the connection's reply FIFO.
    """

    __slots__ = ("owner", "reply", "then")

    def __init__(self, then: Callable[[T], Reply | None]) -> None:
        # _Slot's fields, set here: one call less per write.
        self.chunks = self.stream = self.deferred = None
        self.ready = self.write = False
        self.size = 0
        self.then = then
        self.owner: ObjstoreProtocol | None = None
        self.reply: Reply | None = None

    def complete(self, result: T) -> None:
        try:
            reply = self.then(result)
        except Exception as exc:
            reply = _failed(exc, self.then)
        owner = self.owner
        if owner is None:
            self.reply = reply
            self.ready = True
        else:
            owner._answer_done(reply, self)


#: What a handler answers: a reply, nothing (noreply), a reply to come (a Deferred, or a
#: :class:`Pending` its write completes), a stream of chunks, or wire chunks ready to go.
Answer = (Reply | None | defer.Deferred[Reply | None] | Pending[Any] | Iterator[bytes]
          | list[bytes])


def _size(chunks: list[bytes]) -> int:
    n = 0
    for chunk in chunks:
        n += len(chunk)
    return n


#: Commands whose latency is sampled, by kind.
_LATENCY_KIND: Final = {p.Get: GET, p.MetaGet: GET, p.Store: SET, p.MetaSet: SET}


@implementer(interfaces.IPushProducer)
class ObjstoreProtocol(Protocol, TimeoutMixin):
    """One client connection."""

    factory: ObjstoreFactory
    transport: Any  # an ITCPTransport that is also an IConsumer

    def __init__(self, factory: ObjstoreFactory) -> None:
        self.factory = factory
        self.handler = factory.handler
        self.counters = factory.counters
        self._auth = factory.auth
        self._authenticated = factory.auth is None
        self.parser = p.CommandParser(factory.limits if self._auth is None else AUTH_LIMITS)
        self._is_write = factory.handler.is_write
        self._serial = factory.handler.serial_writes
        self._budget = factory.config.max_reply_buffer
        self._slots: collections.deque[_Slot] = collections.deque()
        self._out: list[bytes] = []
        self._out_len = 0
        #: Bytes of ready answers still in the FIFO (behind an unfinished one).
        self._queued = 0
        #: Deferred answers not yet fired, and how many of them are writes.
        self._pending = 0
        self._inflight = 0
        #: What a reply still to come is counted at: the item size limit until the
        #: connection's replies show otherwise, then a slowly decaying recent maximum.
        self._estimate = factory.config.max_item_size
        self._held: p.Command | None = None
        self._held_write = False
        self._output_paused = False
        self._reading_paused = False
        self._closing = False
        self._gone = False
        self._processing = False
        self._slow_timer: Any = None
        self._unsent_at_pause: int | None = None
        self._counted = False
        self._direct_socket: Any = None
        #: Registered with the factory to be flushed when its held replies go out.
        self._flush_due = False
        #: When the client last sent something (``stats conns``).
        self.last_read = factory.clock.seconds()

    def callLater(self, period: Any, func: Any) -> Any:
        """TimeoutMixin's scheduler: the factory's injected clock."""
        return self.factory.clock.callLater(period, func)

    # -- connection lifecycle -------------------------------------------------------------

    def connectionMade(self) -> None:
        f = self.factory
        c = self.counters
        if f.open_connections >= f.config.max_connections:
            c.rejected_connections += 1
            self.transport.write(TOO_MANY_CONNECTIONS)
            self._closing = True
            self.transport.loseConnection()
            return
        self._counted = True
        f.protocols.add(self)
        f.open_connections += 1
        c.curr_connections += 1
        c.total_connections += 1
        self.transport.registerProducer(self, True)
        # Only Twisted's own TCP connection may be bypassed: anything else (TLS, test
        # transports) goes through transport.writeSequence only.
        if isinstance(self.transport, tcp.Connection):
            self._direct_socket = self.transport.socket
        if f.config.idle_timeout > 0:
            self.setTimeout(f.config.idle_timeout)

    def connectionLost(self, reason: failure.Failure | None = None) -> None:
        self._gone = True
        self.setTimeout(None)
        self._cancel_slow_timer()
        if self._counted:
            self._counted = False
            self.factory.protocols.discard(self)
            self.factory.open_connections -= 1
            self.counters.curr_connections -= 1
        # Nobody will read these: drop what is buffered, cancel the reads still running
        # (a write already started finishes, so the store is not left half-written).
        slots, self._slots = self._slots, collections.deque()
        self._held = None
        self._out = []
        self._out_len = self._queued = 0
        self.parser = p.CommandParser(self.factory.limits)
        for slot in slots:
            if slot.deferred is not None and not slot.ready and not slot.write:
                slot.deferred.cancel()
            slot.chunks = slot.stream = None

    def close_gracefully(self) -> None:
        """Stop taking commands; close once the pending replies are written."""
        self._closing = True
        self._maybe_close()

    def timeoutConnection(self) -> None:
        self.counters.idle_dropped += 1
        self._close_now(abort=False)

    def _close_now(self, abort: bool) -> None:
        self._closing = True
        with contextlib.suppress(RuntimeError):
            self.transport.unregisterProducer()
        if abort:
            self.transport.abortConnection()
        else:
            self.transport.loseConnection()

    # -- input ----------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        self.last_read = self.factory.clock.seconds()
        self.counters.bytes_read += len(data)
        self.parser.feed(data)
        if self.timeOut:
            self.resetTimeout()
        self._process()

    def _must_wait(self, write: bool) -> bool:
        """A read waits for this connection's pending writes; with serial writes a write
        waits for every pending answer."""
        if write:
            return self._serial and self._pending > 0
        return self._inflight > 0

    def _full(self) -> bool:
        """True when no further command may start: ``max_pipeline`` answers outstanding,
        or the replies queued plus those in flight (each counted at the estimate) would
        pass ``max_reply_buffer``."""
        if len(self._slots) >= self.factory.config.max_pipeline:
            return True
        held = self._queued + self._out_len
        return held > self._budget or (
            self._pending > 0 and held + self._pending * self._estimate > self._budget)

    def _process(self) -> None:
        """Execute buffered commands until input runs out or something says wait."""
        if self._processing or self._gone:
            return
        self._processing = True
        try:
            parser = self.parser
            handler = self.handler
            sampler = self.factory.latency
            while not self._closing and not self._output_paused:
                if self._held is not None:
                    if self._must_wait(self._held_write):
                        break
                    cmd: p.Command | p.NeedData = self._held
                    self._held = None
                else:
                    if self._full():
                        self._pause_reading()
                        break
                    try:
                        cmd = parser.next_command()
                    except RemoteProtocolError as exc:
                        # The peer broke a limit: memcached's words for it, then close.
                        cmd = p.ProtocolError(b"CLIENT_ERROR " + exc.reason.encode(), fatal=True)
                    if cmd is p.NEED_DATA:
                        break
                    if self._pending:
                        write = self._is_write(cmd)  # type: ignore[arg-type]
                        if self._must_wait(write):
                            self._held = cmd  # type: ignore[assignment]
                            self._held_write = write
                            break
                if not self._authenticated:
                    self._answer(self._authenticate(cmd), cmd)  # type: ignore[arg-type]
                    if type(cmd) is p.Quit or (type(cmd) is p.ProtocolError and cmd.fatal):
                        self._closing = True
                        break
                    continue
                if isinstance(cmd, p.Quit):
                    self._closing = True
                    break
                try:
                    answer = (self._timed(cmd) if sampler.due()  # type: ignore[arg-type]
                              else handler.execute(cmd))  # type: ignore[arg-type]
                except Exception as exc:
                    answer = _failed(exc, cmd)
                self._answer(answer, cmd)
                if isinstance(cmd, p.ProtocolError) and cmd.fatal:
                    self._closing = True
                    break
                if self._out_len > FLUSH_THRESHOLD:
                    self._flush()
            if self._reading_paused and not self._output_paused and not self._full():
                self._resume_reading()
        finally:
            self._processing = False
        self._flush()
        if self._closing:
            self._maybe_close()

    def _authenticate(self, cmd: p.Command) -> Reply | None:
        """The gate's reply to a command of a connection not authenticated yet."""
        assert self._auth is not None
        reply, outcome = authenticate(cmd, self._auth)
        if outcome is not None:
            self.counters.auth_cmds += 1
            if outcome:
                self._authenticated = True
                self.parser.set_limits(self.factory.limits)
            else:
                self.counters.auth_errors += 1
        return reply

    def _timed(self, cmd: p.Command) -> Answer:
        """Execute ``cmd`` and count its latency (a sampled get or set; see
        :class:`~objstore.stats.LatencySampler`): a read's service time, a write's time
        to its durable reply."""
        kind = _LATENCY_KIND.get(type(cmd))
        if kind is None:
            return self.handler.execute(cmd)
        record = self.factory.latency.record
        started = time.perf_counter()
        answer = self.handler.execute(cmd)
        if type(answer) is Pending and not answer.ready:
            then = answer.then

            def timed(result: Any) -> Reply | None:
                reply = then(result)
                record(kind, time.perf_counter() - started)
                return reply
            answer.then = timed
        elif isinstance(answer, defer.Deferred):
            def done(result: object) -> object:
                record(kind, time.perf_counter() - started)
                return result
            answer.addBoth(done)
        else:
            record(kind, time.perf_counter() - started)
        return answer

    def _answer(self, answer: Answer, cmd: p.Command | p.NeedData) -> None:
        if answer is None:
            return
        if type(answer) is Pending:
            if answer.ready:
                # Completed already (a store without a committer): an immediate reply.
                self._answer(answer.reply, cmd)
                return
            answer.owner = self
            answer.write = write = self._is_write(cmd)  # type: ignore[arg-type]
            self._slots.append(answer)
            self._pending += 1
            if write:
                self._inflight += 1
            return
        if type(answer) is list:
            # Wire chunks ready to go (the handler's fast path).
            if self._slots:
                size = _size(answer)
                self._slots.append(_Slot(answer, size=size))
                self._queued += size
            else:
                self._out += answer
                for chunk in answer:
                    self._out_len += len(chunk)
            return
        if isinstance(answer, defer.Deferred):
            slot = _Slot(write=self._is_write(cmd))  # type: ignore[arg-type]
            self._slots.append(slot)
            self._pending += 1
            if slot.write:
                self._inflight += 1
            slot.deferred = answer
            answer.addCallbacks(self._answer_done, self._answer_failed, callbackArgs=(slot,),
                                errbackArgs=(slot,))
            return
        if isinstance(answer, Iterator):
            self._slots.append(_Slot(stream=answer))
            self._drain()
            return
        if self._slots:
            chunks: list[bytes] = []
            serialize_into(answer, chunks)  # type: ignore[arg-type]
            size = _size(chunks)
            self._slots.append(_Slot(chunks, size=size))
            self._queued += size
        else:
            out = self._out
            before = len(out)
            serialize_into(answer, out)  # type: ignore[arg-type]
            for i in range(before, len(out)):
                self._out_len += len(out[i])

    # -- completions of deferred answers --------------------------------------------------

    def _answer_done(self, reply: Reply | None, slot: _Slot) -> None:
        slot.deferred = None
        self._pending -= 1
        if slot.write:
            self._inflight -= 1
        if self._gone:
            return
        chunks: list[bytes] = []
        if reply is not None:
            serialize_into(reply, chunks)
        size = _size(chunks)
        estimate = self._estimate
        # Up at once, down slowly: a connection that just read a big item may read more.
        self._estimate = size if size >= estimate else estimate - (estimate >> 4)
        slot.chunks = chunks
        slot.size = size
        slot.ready = True
        self._queued += size
        self._drain()
        self._flush()
        if self._held is not None or self._reading_paused or self.parser.buffered:
            self._process()
        elif self._closing:
            self._maybe_close()

    def _answer_failed(self, reason: failure.Failure, slot: _Slot) -> None:
        if self._gone and reason.check(defer.CancelledError, asyncio.CancelledError):
            # connectionLost cancelled it: nobody is waiting for the reply.  (A Deferred
            # made from an asyncio future fails with asyncio's CancelledError.)
            self._answer_done(None, slot)
            return
        exc = reason.value if reason.value is not None else Exception("unknown failure")
        if kind_of(exc) is None:
            log.error("command failed: %s", reason.getTraceback())
        else:
            log.warning("command failed: %s", reason.getErrorMessage())
        self._answer_done(error_reply(exc), slot)

    def _drain(self) -> None:
        """Move finished slots at the head of the FIFO to the output."""
        slots = self._slots
        while slots:
            head = slots[0]
            if head.stream is not None:
                if self._output_paused or self._gone:
                    return
                chunk = next(head.stream, None)
                if chunk is None:
                    slots.popleft()
                    continue
                self._out.append(chunk)
                self._out_len += len(chunk)
                self._flush()  # may pause us if the reader is slow
                continue
            if not head.ready:
                return
            slots.popleft()
            assert head.chunks is not None
            self._queued -= head.size
            out = self._out
            out += head.chunks
            self._out_len += head.size
            head.chunks = None

    def _flush(self, force: bool = False) -> None:
        """Hand the output to the transport, unless it is full (``force``: even then)."""
        if not self._out or self._gone or (self._output_paused and not force):
            return
        if self.factory.holding and not force:
            # Answers are completing in a burst (:meth:`ObjstoreFactory.replies_together`): one write later.
            if not self._flush_due:
                self._flush_due = True
                self.factory.flush_due.append(self)
            return
        self.counters.bytes_written += self._out_len
        out = self._out
        self._out = []
        self._out_len = 0
        transport = self.transport
        sock = self._direct_socket
        if sock is not None and nothing_queued(transport):
            out = send_now(sock, out)
            if not out:
                return
        transport.writeSequence(out)

    def _maybe_close(self) -> None:
        if not self._slots and not self._gone:
            self._flush(force=True)
            self._close_now(abort=False)

    # -- back-pressure --------------------------------------------------------------------

    def _pause_reading(self) -> None:
        if not self._reading_paused:
            self._reading_paused = True
            self.transport.pauseProducing()

    def _resume_reading(self) -> None:
        if self._reading_paused:
            self._reading_paused = False
            self.transport.resumeProducing()

    def pauseProducing(self) -> None:
        """The transport's buffer is full: stop reading, executing and writing."""
        if self._output_paused:
            return
        self._output_paused = True
        self.transport.pauseProducing()
        timeout = self.factory.config.slow_reader_timeout
        if timeout > 0 and self._slow_timer is None:
            self._unsent_at_pause = _unsent(self.transport)
            self._slow_timer = self.factory.clock.callLater(timeout, self._slow_reader)

    def resumeProducing(self) -> None:
        """The transport drained: carry on."""
        if not self._output_paused:
            return
        self._output_paused = False
        self._cancel_slow_timer()
        if not self._reading_paused:
            self.transport.resumeProducing()
        self._drain()
        self._flush()
        self._process()

    def stopProducing(self) -> None:
        self._gone = True

    def _cancel_slow_timer(self) -> None:
        if self._slow_timer is not None:
            if self._slow_timer.active():
                self._slow_timer.cancel()
            self._slow_timer = None

    def _slow_reader(self) -> None:
        self._slow_timer = None
        unsent = _unsent(self.transport)
        if unsent is not None and self._unsent_at_pause is not None \
                and unsent < self._unsent_at_pause:
            # The client read some of its replies since: slow, not stuck.  Look again.
            self._unsent_at_pause = unsent
            self._slow_timer = self.factory.clock.callLater(
                self.factory.config.slow_reader_timeout, self._slow_reader)
            return
        self.counters.slow_readers_dropped += 1
        log.warning("dropping a client that did not read its replies for %ss",
                    self.factory.config.slow_reader_timeout)
        self._close_now(abort=True)


def _unsent(transport: Any) -> int | None:
    """Bytes not yet taken by the client: those Twisted's TCP transport holds, plus those
    in the kernel's send queue (None for other transports).  How a slow reader is told
    from one that stopped: the kernel queue shrinks as the client reads, while Twisted's
    buffer may not move for long (the kernel wakes writers only once half its queue
    drained)."""
    buffer = getattr(transport, "dataBuffer", None)
    if buffer is None:
        return None
    held = len(buffer) - getattr(transport, "offset", 0) + getattr(transport, "_tempDataLen", 0)
    sock = getattr(transport, "socket", None)
    try:
        raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")  # type: ignore[union-attr]
        (queued,) = struct.unpack("i", raw)
    except (AttributeError, OSError, ValueError):
        queued = 0
    return held + queued


class ObjstoreFactory(Factory):
    """Holds what every connection shares.

    :param handler: executes commands.
    :param config: this server's settings (limits, timeouts).
    :param counters: this process's counters (connections, bytes).
    :param clock: scheduler for timeouts (a ``task.Clock`` in tests).
    :param auth: who may connect (memcached's ``-Y`` authentication), None = anyone.
    """

    protocol = ObjstoreProtocol  # type: ignore[assignment]

    def __init__(self, handler: CommandHandler, config: ConnectionSettings,
                 counters: Counters, clock: Any, auth: AuthTable | None = None) -> None:
        self.handler = handler
        self.auth = auth
        self.config = config
        self.counters = counters
        self.clock = clock
        self.open_connections = 0
        self.protocols: set[ObjstoreProtocol] = set()
        self.latency = LatencySampler(counters)
        self.limits = p.Limits(max_line=config.max_line, max_item_size=config.max_item_size)
        #: Inside :meth:`replies_together` (a depth, for nesting).
        self.holding = 0
        #: Connections with replies held back until the outermost one ends.
        self.flush_due: list[ObjstoreProtocol] = []

    @contextlib.contextmanager
    def replies_together(self) -> Iterator[None]:
        """Answers completed inside this block are written when it ends, each
        connection's in one write: a handler that completes many answers at once
        (directord's batched reads, a pipeline's worth of replies for one connection)
        saves a system call per reply.  Nothing is delayed past the block, and forced
        writes (closing) are not held."""
        self.holding += 1
        try:
            yield
        finally:
            self.holding -= 1
            if not self.holding:
                due, self.flush_due = self.flush_due, []
                for proto in due:
                    proto._flush_due = False
                    proto._flush()

    def complete_writes(self, batch: list[tuple[Callable[[Any], object], Any]]) -> None:
        """Fire a committed batch's write callbacks (on the reactor thread) inside
        :meth:`replies_together`: a connection with several writes in the batch
        (pipelining) gets its replies in one ``sendmsg``, not one per reply."""
        with self.replies_together():
            for callback, result in batch:
                try:
                    callback(result)
                except Exception:
                    log.exception("write completion callback failed")

    def buildProtocol(self, addr: Any) -> ObjstoreProtocol:  # type: ignore[override]
        return ObjstoreProtocol(self)

    def describe_connections(self) -> list[tuple[str, str, int]]:
        """``(peer, local address, seconds since it last sent)`` of each open connection,
        for ``stats conns``."""
        now = self.clock.seconds()
        out = []
        for proto in self.protocols:
            transport = proto.transport
            peer, host = transport.getPeer(), transport.getHost()
            out.append((f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', 0)}",
                        f"{getattr(host, 'host', '?')}:{getattr(host, 'port', 0)}",
                        int(now - proto.last_read)))
        return out

    def close_all(self, timeout: float) -> defer.Deferred[None]:
        """Close every connection once its pending replies are out (shutdown); fires when
        all are gone or after ``timeout`` seconds."""
        for proto in list(self.protocols):
            proto.close_gracefully()
        done: defer.Deferred[None] = defer.Deferred()
        deadline = self.clock.seconds() + timeout

        def check() -> None:
            if not self.protocols or self.clock.seconds() >= deadline:
                done.callback(None)
            else:
                self.clock.callLater(0.05, check)

        check()
        return done


def listen(reactor: Any, host: str, port: int, factory: ObjstoreFactory,
           tls: Any = None) -> Any:
    """Listen on ``host:port`` with SO_REUSEPORT (:func:`runtime.workers.adopt_listener`);
    returns Twisted's listening port.

    :param tls: a server context factory (:func:`runtime.tls.server_context`): every
        connection speaks TLS from its first byte.
    """
    return adopt_listener(reactor, host, port, factory, tls)

"""The Twisted side of the IMAP server: a thin adapter between a transport and a session.

Theory of operation
-------------------
The connection handling (one command at a time, back-pressure both ways, the idle timeout,
STARTTLS, the connection limit, disconnects mid-command) is shared with POP3 and explained
in :mod:`imapd.adapter`.  What is IMAP's own lives here: the parser limits, answering a
synchronizing literal's continuation request (or refusing the literal) before the command
reaches the session, the BYE words, writing responses straight to the socket when
nothing is queued in Twisted, holding a command's responses until it completes (below), COMPRESS=DEFLATE (every response compressed in :meth:`send`,
whichever way it leaves; input inflated by the parser, :mod:`imapd.deflate`), and what holds until the client logs in: literals of a few
KiB at most (:attr:`~imapd.parser.Limits.max_prelogin_literal`) and a deadline to log in
(``imapd.prelogin_timeout``) that no trickle of bytes postpones.

While a command runs, what it sends is held and written when it completes, with its
tagged response: one ``sendmsg`` per command instead of one per :meth:`send` (a FETCH's
untagged data and its tagged OK were two).  The bytes and their order are the same: each
response is rendered (and compressed) when sent, and everything held leaves before
anything written later.  Held output leaves earlier when it reaches
:data:`HOLD_BYTES`, when the session waits for the client to read
(:meth:`~imapd.connection.Connection.drain` with the transport's buffer full), and before
STARTTLS, COMPRESS or a close change what the bytes go through.  A command never waits
for the client while holding: continuations and IDLE's ``+ idling`` end their command's
turn (the parser hands over one command at a time), so they leave then.
"""

from __future__ import annotations

import logging
from typing import Any

from twisted.internet import tcp

from imapd.adapter import SessionFactory, SessionProtocol
from imapd.backend import Backend
from imapd.commands import Command
from imapd.config import ImapdConfig
from imapd.deflate import Deflater, Inflater
from imapd.parser import (
    AuthResponse,
    BadCommand,
    ContinuationNeeded,
    IdleDone,
    Limits,
    NeedData,
    Parser,
)
from imapd.response import Continuation, Status, Untagged, render_all
from imapd.session import Session
from runtime.directwrite import IOV_MAX, nothing_queued, send_now

__all__ = ["IMAPFactory", "IMAPServerProtocol", "limits_for"]

log = logging.getLogger(__name__)

KiB = 1024

#: Bytes a running command's responses may reach before they are written anyway.
HOLD_BYTES = 64 * KiB


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


class IMAPServerProtocol(SessionProtocol[Session, Parser]):
    """One IMAP connection; implements :class:`imapd.connection.Connection`."""

    too_many_connections = b"* BYE Too many connections, try again later\r\n"
    idle_words = "Autologout; idle for too long"
    logger = log

    factory: IMAPFactory

    def __init__(self, factory: IMAPFactory, *, secure: bool = False) -> None:
        super().__init__(factory, secure=secure)
        self.pause_buffer = factory.limits.pause_buffer
        self.max_buffer = factory.limits.max_buffer
        self._direct_socket: Any = None
        self._deflater: Deflater | None = None  # once COMPRESS=DEFLATE is active
        self._logged_in = False
        self._login_deadline: Any = None  # an IDelayedCall while the client has not logged in
        self._utf8_names = False  # IMAP4rev2 enabled: names are UTF-8 both ways
        #: While a command runs: its responses not written yet (rendered, compressed).
        self._held: list[bytes] | None = None
        self._held_bytes = 0

    def _new_parser(self) -> Parser:
        # A new connection, or one starting TLS (which happens before login).
        return Parser(self.factory.limits, prelogin=True)

    def _new_session(self) -> Session:
        return self.factory.new_session(self)

    def _greet(self, session: Session) -> None:
        self.send([session.greeting()])
        timeout = self.factory.config.prelogin_timeout
        if timeout > 0:
            self._login_deadline = self.factory.clock.callLater(timeout, self._too_slow)

    def goodbye(self, text: str) -> None:
        self.send([Untagged(Status.BYE, text)])

    def _accepted(self) -> None:
        # Only Twisted's own TCP connection may be bypassed.  A TLS wrapper (IMAPS) passes
        # attribute lookups through to the TCP transport under it, so duck typing would
        # find a socket there and send plaintext; test transports have none.
        if isinstance(self.transport, tcp.Connection):
            self._direct_socket = self.transport.socket

    # -- Connection (what the session uses) -------------------------------------------------

    def send(self, responses: Any) -> None:
        if self._gone or not responses:
            return
        out = render_all(responses, utf8=self._utf8_names)
        if self._deflater is not None:
            # Before any way out, the direct write included: once COMPRESS is active no
            # byte may reach the client uncompressed.
            out = [self._deflater.compress(out)]
        held = self._held
        if held is not None:
            held += out
            self._held_bytes += sum(map(len, out))
            if self._held_bytes >= HOLD_BYTES:
                self._flush()
            return
        self._write(out)

    def _flush(self) -> None:
        """Write what the running command has sent so far."""
        held = self._held
        if held:
            self._held = []
            self._held_bytes = 0
            if not self._gone:
                self._write(held)

    def _write(self, out: list[bytes]) -> None:
        transport = self.transport
        sock = self._direct_socket
        if (sock is not None and not getattr(transport, "TLS", False)
                and nothing_queued(transport)):
            # One gathered write now instead of a queued one (objstore.directwrite).
            if len(out) > IOV_MAX:
                out = [b"".join(out)]
            out = send_now(sock, out)
            if not out:
                return
        transport.writeSequence(out)

    def start_idle(self, tag: str) -> None:
        self.parser.start_idle(tag)

    async def drain(self) -> None:
        if self._output_paused or self._held_bytes >= HOLD_BYTES:
            self._flush()
        await super().drain()

    def start_tls(self) -> None:
        self._flush()  # the tagged OK goes out in the clear
        super().start_tls()

    def close(self) -> None:
        self._flush()
        super().close()

    def start_compress(self) -> None:
        self._flush()  # the tagged OK goes out uncompressed
        if self._gone or self._deflater is not None:
            return
        self._deflater = Deflater()
        self.parser.start_filter(Inflater())

    def start_authenticate(self, tag: str) -> None:
        self.parser.start_authenticate(tag)

    def use_utf8_names(self) -> None:
        self._utf8_names = True
        self.parser.use_utf8_names()

    # -- input ----------------------------------------------------------------------------

    def _handle(self, session: Session, event: object) -> bool:
        if isinstance(event, NeedData):
            return False
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
            if session.bad_command(clears_saved=event.clears_saved):
                self.send([Untagged(Status.BYE, "Too many invalid commands")])
                self.close()
        elif isinstance(event, Command | IdleDone | AuthResponse):
            self._dispatch(self._run(session, event))
        return True

    async def _run(self, session: Session, event: Command | IdleDone | AuthResponse) -> None:
        """Dispatch one event; once it logged the client in, lift the pre-login limits
        before the parser reads what the client pipelined after it.  What it sends is
        held and written at its end (see the module docstring)."""
        self._held = []
        try:
            await session.dispatch(event)
        finally:
            self._flush()
            self._held = None
        if not self._logged_in and session.user is not None:
            self._logged_in = True
            self.parser.end_prelogin()
            if self._login_deadline is not None:
                self._login_deadline.cancel()
                self._login_deadline = None

    def _too_slow(self) -> None:
        """The client did not log in within ``prelogin_timeout`` of connecting, busy or
        not: the idle timeout alone lets a byte a second keep a slot forever."""
        self._login_deadline = None
        if not self._gone and not self._closing:
            self.goodbye("Log in sooner next time")
            self.close()

    def connectionLost(self, reason: Any = None) -> None:
        if self._login_deadline is not None:
            self._login_deadline.cancel()
            self._login_deadline = None
        if self.session is not None:
            self.session.connection_lost()
        super().connectionLost(reason)


class IMAPFactory(SessionFactory[IMAPServerProtocol]):
    """Builds IMAP connections over one :class:`~imapd.backend.Backend`.

    :param tls: the context factory for STARTTLS (and, for the IMAPS listener, built with
        ``secure=True`` and wrapped by ``listenSSL``); None when no certificate is set.
    :param clock: an ``IReactorTime`` for the idle timeout (default: the backend's).
    """

    protocol = IMAPServerProtocol  # type: ignore[assignment]

    def __init__(self, backend: Backend, *, tls: Any = None, secure: bool = False,
                 clock: Any = None) -> None:
        config = backend.config
        super().__init__(max_connections=config.max_connections,
                         max_per_address=config.max_connections_per_address,
                         idle_timeout=config.idle_timeout,
                         clock=clock if clock is not None else backend.clock, tls=tls,
                         secure=secure)
        self.backend = backend
        self.config = config
        self.limits = limits_for(config)

    def buildProtocol(self, addr: Any) -> IMAPServerProtocol:  # type: ignore[override]
        return IMAPServerProtocol(self, secure=self.secure)

    def new_session(self, conn: IMAPServerProtocol) -> Session:
        return Session(self.backend, conn)

    def shutdown(self) -> None:
        """Say BYE to every connection and close it (the server is stopping)."""
        for proto in list(self.protocols):
            proto.goodbye("Server shutting down")
            proto.close()

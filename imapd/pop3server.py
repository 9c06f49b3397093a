"""The Twisted side of POP3: a thin adapter between a transport and a
:class:`~imapd.pop3session.Pop3Session`, built like the IMAP one (:mod:`imapd.server`).

One command at a time, in order (RFC 2449 PIPELINING: the client may send several; the
rest wait in the parser, and reading pauses when they pile up); the idle timeout on the
injected clock (RFC 1939 asks for at least ten minutes); STLS through
``transport.startTLS`` with a fresh parser, so plaintext pipelined behind STLS is dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from imapd.adapter import SessionFactory, SessionProtocol
from imapd.backend import Backend
from imapd.pop3parser import (
    MAX_BUFFER,
    AuthLine,
    BadLine,
    NeedData,
    Pop3Command,
    Pop3Parser,
    err,
)
from imapd.pop3session import Pop3Session

__all__ = ["Pop3Factory", "Pop3Protocol"]

log = logging.getLogger(__name__)

#: Unconsumed input at which reading pauses.
PAUSE_BUFFER = 64 * 1024
#: BAD lines in a row before the server hangs up.
MAX_BAD_LINES = 20


class Pop3Protocol(SessionProtocol[Pop3Session, Pop3Parser]):
    """One POP3 connection; implements :class:`~imapd.pop3session.Pop3Connection`."""

    too_many_connections = err("Too many connections, try again later", "SYS/TEMP")
    idle_words = "Idle for too long, closing"
    logger = log
    session_name = "POP3 session"
    pause_buffer = PAUSE_BUFFER
    max_buffer = MAX_BUFFER

    factory: Pop3Factory

    def __init__(self, factory: Pop3Factory, *, secure: bool = False) -> None:
        super().__init__(factory, secure=secure)
        self._bad = 0

    def _new_parser(self) -> Pop3Parser:
        return Pop3Parser()

    def _new_session(self) -> Pop3Session:
        return Pop3Session(self.factory.backend, self)

    def _greet(self, session: Pop3Session) -> None:
        self.write([session.greeting()])

    def goodbye(self, text: str) -> None:
        self.write([err(text)])

    # -- Pop3Connection ------------------------------------------------------------------------

    def write(self, chunks: Sequence[bytes]) -> None:
        if not self._gone:
            self.transport.writeSequence([c for c in chunks if c])

    def expect_auth_line(self) -> None:
        self.parser.expect_auth_line()

    # -- input ----------------------------------------------------------------------------

    def _handle(self, session: Pop3Session, event: object) -> bool:
        if isinstance(event, NeedData):
            return False
        if isinstance(event, BadLine):
            self.write([err(event.text)])
            self._bad += 1
            if self._bad >= MAX_BAD_LINES:
                self.close()
        elif isinstance(event, Pop3Command | AuthLine):
            self._bad = 0
            self._dispatch(session.dispatch(event))
        return True


class Pop3Factory(SessionFactory[Pop3Protocol]):
    """POP3 connections over one :class:`~imapd.backend.Backend`."""

    protocol = Pop3Protocol  # type: ignore[assignment]

    def __init__(self, backend: Backend, *, tls: Any = None, secure: bool = False,
                 clock: Any = None) -> None:
        config = backend.config
        super().__init__(max_connections=config.max_connections,
                         max_per_address=config.max_connections_per_address,
                         idle_timeout=config.pop3_idle_timeout,
                         clock=clock if clock is not None else backend.clock, tls=tls,
                         secure=secure)
        self.backend = backend
        self.config = config

    def buildProtocol(self, addr: Any) -> Pop3Protocol:  # type: ignore[override]
        return Pop3Protocol(self, secure=self.secure)

    def shutdown(self) -> None:
        """Close every connection (the server is stopping); nothing is deleted without
        QUIT."""
        for proto in list(self.protocols):
            proto.write([err("Server shutting down", "SYS/TEMP")])
            proto.close()

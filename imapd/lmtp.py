"""LMTP delivery (RFC 2033) for MTAs such as Postfix and Exim.

The session logic (:class:`LMTPSession`) is asyncio code that turns parsed
commands into replies; :class:`LMTPProtocol` is the thin Twisted adapter that
feeds :class:`~imapd.lmtp_parser.LMTPParser`, runs one command at a time in
order (so PIPELINING clients get replies in sequence), and writes the replies.
The connection handling is IMAP's and POP3's (:mod:`imapd.adapter`): the
connection limit and count, the idle timeout, and back-pressure both ways.  While
a message is delivered the parser is paused and reading stops once
``PAUSE_BUFFER`` octets wait, so what a client pipelines meanwhile stays in the
socket; a command is not started while the client leaves its replies unread.

Per RFC 2033, DATA is answered once per accepted recipient, in RCPT order, and
a recipient's 250 is sent only after its mailbox entry committed.  The message
is analysed and its blobs stored once for all recipients; each recipient then
gets its own transaction, so one recipient's failure never affects another's.

Replies (enhanced status codes, RFC 3463):
``550 5.1.1`` unknown user, ``552 5.2.2`` over quota, ``552 5.3.4`` too big,
``451 4.3.0`` PostgreSQL or object servers unavailable (the MTA retries).
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.interfaces import IAddress

from director.errors import DirectorError
from imapd.adapter import SessionFactory, SessionProtocol
from imapd.config import ImapdConfig
from imapd.lmtp_parser import (
    MAX_LINE,
    Command,
    LineTooLong,
    LMTPParser,
    MessageData,
)
from metadata.delivery import Deliverer, MessageTooBig
from metadata.errors import (
    MetadataError,
    NoSuchMailbox,
    NoSuchUser,
    OverQuota,
    Unavailable,
)
from metadata.records import User
from runtime.receivebuffer import RemoteProtocolError

log = logging.getLogger(__name__)

#: Recipients accepted in one transaction (RFC 5321 asks for at least 100).
MAX_RECIPIENTS = 1000
#: ``<local@domain>`` with optional ESMTP parameters after it.
_PATH = re.compile(r"^\s*<([^<>]*)>\s*(.*)$")
#: Unconsumed input at which reading pauses (pipelined commands, or what follows a
#: message whose delivery is not answered yet).
PAUSE_BUFFER = 64 * 1024
#: Unconsumed input beyond which the connection is given up.
MAX_BUFFER = 1024 * 1024


@dataclass
class Transaction:
    """One MAIL FROM .. DATA exchange."""

    sender: str
    declared_size: int | None = None
    recipients: list[tuple[str, User, str]] = field(default_factory=list)


def _parse_path(argument: str, keyword: str) -> tuple[str, str] | None:
    """``FROM:<a@b> SIZE=10`` -> (``a@b``, ``SIZE=10``), or None when malformed."""
    head, sep, rest = argument.partition(":")
    if not sep or head.strip().upper() != keyword:
        return None
    match = _PATH.match(rest)
    if match is None:
        return None
    return match.group(1).strip(), match.group(2).strip()


def _params(text: str) -> dict[str, str]:
    out = {}
    for token in text.split():
        name, _, value = token.partition("=")
        out[name.upper()] = value
    return out


class LMTPSession:
    """The state of one LMTP connection; each method returns the reply lines."""

    def __init__(self, deliverer: Deliverer, config: ImapdConfig, hostname: str) -> None:
        self.deliverer = deliverer
        self.hostname = hostname
        self.max_size = config.max_message_size
        self.greeted = False
        self.txn: Transaction | None = None

    def greeting(self) -> list[str]:
        return [f"220 {self.hostname} LMTP objmail ready"]

    async def close(self) -> None:
        """The connection ended: an open transaction is dropped, nothing to release."""
        self.txn = None

    async def handle(self, cmd: Command) -> tuple[list[str], bool]:
        """Reply lines for ``cmd``, and whether to start reading DATA."""
        verb = cmd.verb
        if verb == "LHLO":
            if not cmd.argument:
                return ["501 5.5.4 LHLO needs a host name"], False
            self.greeted = True
            self.txn = None
            return [f"250-{self.hostname}", "250-PIPELINING", "250-ENHANCEDSTATUSCODES",
                    "250-8BITMIME", f"250-SIZE {self.max_size}", "250 RSET"], False
        if verb in ("HELO", "EHLO"):
            return ["500 5.5.1 This is LMTP: say LHLO"], False
        if verb == "NOOP":
            return ["250 2.0.0 OK"], False
        if verb == "RSET":
            self.txn = None
            return ["250 2.0.0 OK"], False
        if verb == "QUIT":
            return [f"221 2.0.0 {self.hostname} closing connection"], False
        if verb == "VRFY":
            return ["252 2.5.2 Cannot VRFY; send the message and see"], False
        if verb == "HELP":
            return ["214 2.0.0 LHLO MAIL RCPT DATA RSET NOOP QUIT"], False
        if not self.greeted and verb in ("MAIL", "RCPT", "DATA"):
            return ["503 5.5.1 Say LHLO first"], False
        if verb == "MAIL":
            return self._mail(cmd.argument), False
        if verb == "RCPT":
            return await self._rcpt(cmd.argument), False
        if verb == "DATA":
            if self.txn is None:
                return ["503 5.5.1 Need MAIL first"], False
            if not self.txn.recipients:
                return ["503 5.5.1 No valid recipients"], False
            return ["354 Start mail input; end with <CRLF>.<CRLF>"], True
        return [f"500 5.5.2 Unknown command {verb[:20]!r}"], False

    def _mail(self, argument: str) -> list[str]:
        if self.txn is not None:
            return ["503 5.5.1 Nested MAIL command"]
        parsed = _parse_path(argument, "FROM")
        if parsed is None:
            return ["501 5.5.4 Syntax: MAIL FROM:<address>"]
        sender, rest = parsed
        params = _params(rest)
        size: int | None = None
        if "SIZE" in params:
            if not params["SIZE"].isdigit():
                return ["501 5.5.4 Bad SIZE parameter"]
            size = int(params["SIZE"])
            if size > self.max_size:
                return [f"552 5.3.4 Message size exceeds fixed limit of {self.max_size}"]
        body = params.get("BODY", "7BIT").upper()
        if body not in ("7BIT", "8BITMIME"):
            return ["501 5.5.4 BODY must be 7BIT or 8BITMIME"]
        self.txn = Transaction(sender, size)
        return ["250 2.1.0 Sender OK"]

    async def _rcpt(self, argument: str) -> list[str]:
        if self.txn is None:
            return ["503 5.5.1 Need MAIL before RCPT"]
        parsed = _parse_path(argument, "TO")
        if parsed is None or not parsed[0]:
            return ["501 5.5.4 Syntax: RCPT TO:<address>"]
        if len(self.txn.recipients) >= MAX_RECIPIENTS:
            return ["452 4.5.3 Too many recipients"]
        address = parsed[0]
        try:
            user, mailbox = await self._resolve(address)
        except NoSuchUser:
            return [f"550 5.1.1 <{address}>: no such user here"]
        except (Unavailable, DirectorError, OSError) as exc:
            log.warning("RCPT %s: %s", address, exc)
            return ["451 4.3.0 Temporary failure looking up the recipient"]
        self.txn.recipients.append((address, user, mailbox))
        return [f"250 2.1.5 <{address}> OK"]

    async def _resolve(self, address: str) -> tuple[User, str]:
        """The user an address names: the whole address if a user has that name,
        else its local part; ``user+Folder@dom`` delivers to Folder if it exists."""
        users = self.deliverer.store.users
        try:
            return await users.get(address), "INBOX"
        except NoSuchUser:
            pass
        local = address.rpartition("@")[0] if "@" in address else address
        name, _, detail = local.partition("+")
        user = await users.get(name)
        if detail:
            try:
                box = await self.deliverer.store.mailboxes.get(user.id, detail)
                return user, box.name
            except NoSuchMailbox:
                pass
        return user, "INBOX"

    async def data(self, message: MessageData) -> list[str]:
        """One reply per accepted recipient, in RCPT order."""
        txn, self.txn = self.txn, None
        assert txn is not None
        count = len(txn.recipients)
        if message.too_big or message.size > self.max_size:
            return [f"552 5.3.4 Message size exceeds fixed limit of {self.max_size}"] * count
        try:
            prepared = await self.deliverer.prepare(message.data)
            await self.deliverer.upload(prepared)
        except MessageTooBig:
            return [f"552 5.3.4 Message size exceeds fixed limit of {self.max_size}"] * count
        except (MetadataError, DirectorError, OSError) as exc:
            log.warning("delivery from <%s> failed: %s", txn.sender, exc)
            return ["451 4.3.0 Temporary failure storing the message"] * count

        async def one(address: str, user: User, mailbox: str) -> str:
            try:
                done = await self.deliverer.commit(user, prepared, mailbox=mailbox)
            except OverQuota:
                return f"552 5.2.2 <{address}>: mailbox full"
            except NoSuchUser:
                return f"550 5.1.1 <{address}>: no such user here"
            except (MetadataError, DirectorError, OSError) as exc:
                log.warning("delivery to <%s> failed: %s", address, exc)
                return f"451 4.3.0 <{address}>: temporary failure"
            log.info("delivered to %s %s uid %d (%d bytes)", user.name, done.mailbox,
                     done.uid, done.size)
            return f"250 2.0.0 <{address}> delivered as UID {done.uid}"

        return list(await asyncio.gather(*(one(*r) for r in txn.recipients)))


class LMTPProtocol(SessionProtocol[LMTPSession, LMTPParser]):
    """One LMTP connection: feeds the parser, runs one command at a time, writes replies."""

    idle_words = "Idle for too long, closing connection"
    logger = log
    session_name = "LMTP session"
    pause_buffer = PAUSE_BUFFER
    max_buffer = MAX_BUFFER

    factory: LMTPFactory

    def __init__(self, factory: LMTPFactory) -> None:
        super().__init__(factory)
        self.too_many_connections = self._lines(
            [f"421 4.3.2 {factory.hostname} too many connections, try again later"])
        self._shutdown = False

    def _new_parser(self) -> LMTPParser:
        return LMTPParser(max_line=MAX_LINE, max_message=self.factory.config.max_message_size)

    def _new_session(self) -> LMTPSession:
        return LMTPSession(self.factory.deliverer, self.factory.config, self.factory.hostname)

    def _greet(self, session: LMTPSession) -> None:
        self._write(session.greeting())

    def goodbye(self, text: str) -> None:
        self._write([f"421 4.4.2 {self.factory.hostname} {text}"])

    def _protocol_error(self, error: RemoteProtocolError) -> None:
        # The 500 answers the input that broke the limit; the 421 says the channel closes.
        self._write([f"500 5.5.6 {error.reason}",
                     f"421 4.4.2 {self.factory.hostname} closing connection"])
        self.close()

    def shutdown(self) -> None:
        """Say 421 and close, at once when idle, else once the current command ends (a
        delivery is answered before the connection closes)."""
        self._shutdown = True
        if not self._busy:
            self._say_shutdown()

    def _say_shutdown(self) -> None:
        if not self._closing and not self._gone:
            self._write([f"421 4.3.2 {self.factory.hostname} shutting down"])
            self.close()

    @staticmethod
    def _lines(lines: list[str]) -> bytes:
        return "".join(f"{line}\r\n" for line in lines).encode()

    def _write(self, lines: list[str]) -> None:
        if not self._gone:
            self.transport.write(self._lines(lines))

    # -- input ----------------------------------------------------------------------------

    def _handle(self, session: LMTPSession, event: object) -> bool:
        if isinstance(event, Command):
            self._dispatch(self._command(session, event))
        elif isinstance(event, MessageData):
            self._dispatch(self._message(session, event))
        elif isinstance(event, LineTooLong):
            self._write(["500 5.5.2 Line too long"])
        else:  # NEED_DATA, or PAUSED until the delivery is answered
            return False
        return True

    async def _command(self, session: LMTPSession, cmd: Command) -> None:
        # Start nothing while the client leaves replies unread: they would pile up here.
        await self.drain()
        try:
            lines, start_data = await session.handle(cmd)
        except Exception:
            log.exception("LMTP session error for %s", self.peer)
            lines, start_data = ["451 4.3.0 Internal error"], False
        if self._closing or self._gone:
            return
        self._write(lines)
        if start_data:
            self.parser.start_data()
        if cmd.verb == "QUIT":
            self.close()

    async def _message(self, session: LMTPSession, message: MessageData) -> None:
        try:
            lines = await session.data(message)
        except Exception:
            log.exception("LMTP delivery error for %s", self.peer)
            lines = ["451 4.3.0 Internal error"]
        if not self._closing:
            self._write(lines)
        # Answered: what was pipelined behind the message is read now.
        self.parser.resume()

    def _finished(self, result: object) -> None:
        if self._shutdown:
            self._say_shutdown()
        super()._finished(result)


class LMTPFactory(SessionFactory[LMTPProtocol]):
    """Builds one :class:`LMTPProtocol` per MTA connection.

    :param clock: an ``IReactorTime`` for the idle timeout (default: the reactor).
    """

    def __init__(self, deliverer: Deliverer, config: ImapdConfig,
                 hostname: Callable[[], str] = socket.getfqdn, *, clock: Any = None) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        super().__init__(max_connections=config.max_connections,
                         idle_timeout=config.idle_timeout, clock=clock)
        self.deliverer = deliverer
        self.config = config
        self.hostname = hostname()

    def shutdown(self) -> None:
        """Close every connection (deliveries in progress finish first)."""
        for conn in list(self.protocols):
            conn.shutdown()

    def buildProtocol(self, addr: IAddress | None) -> LMTPProtocol:  # type: ignore[override]
        return LMTPProtocol(self)

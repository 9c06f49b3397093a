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
is analysed and its blobs stored once for all recipients (with one index lookup:
dedup); each recipient's ``Return-Path``/``Delivered-To`` change only its skeleton and
header columns (:func:`metadata.delivery.with_fields`).  Each recipient's commit is then
its own, so one recipient's failure never affects another's; the commits of one imapd
process's connections go through one :class:`metadata.groupcommit.GroupCommitter`, which
puts those that wait at the same moment into one PostgreSQL transaction (and commits each
alone again when that transaction fails).

Replies (enhanced status codes, RFC 3463) to failures come from the one LMTP error map,
:func:`imapd.errormap.lmtp_reply`: ``550 5.1.1`` unknown user, ``552 5.2.2`` over quota,
``552 5.3.4`` too big, ``451 4.3.0`` PostgreSQL or object servers unavailable (the MTA
retries), ``554 5.3.0`` corrupt stored data.
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

from imapd.adapter import SessionFactory, SessionProtocol
from imapd.config import ImapdConfig
from imapd.errormap import lmtp_reply, log_failure
from imapd.lmtp_parser import (
    MAX_LINE,
    Command,
    LineTooLong,
    LMTPParser,
    MessageData,
)
from imapd.metrics import ImapMetrics
from metadata.delivery import Deliverer, MessageTooBig, PreparedMessage
from metadata.errors import InvalidName, NoSuchMailbox
from metadata.groupcommit import GroupCommitter
from metadata.records import User
from runtime.receivebuffer import RemoteProtocolError

log = logging.getLogger(__name__)

#: Recipients accepted in one transaction (RFC 5321 asks for at least 100).
MAX_RECIPIENTS = 1000
#: ``<local@domain>`` with optional ESMTP parameters after it.
_PATH = re.compile(r"^\s*<([^<>]*)>\s*(.*)$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
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
    #: (address, user, mailbox name, mailbox id when RCPT's lookup found it).
    recipients: list[tuple[str, User, str, int | None]] = field(default_factory=list)


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
    """The state of one LMTP connection; each method returns the reply lines.

    :param committer: the process's group committer, shared by its connections (without
        one each recipient is committed in a transaction of its own).
    """

    def __init__(self, deliverer: Deliverer, config: ImapdConfig, hostname: str,
                 committer: GroupCommitter | None = None) -> None:
        self.deliverer = deliverer
        self.committer = committer
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
        if _CONTROL.search(address):  # no user is called that (NUL cannot even be looked up)
            return [f"550 5.1.1 <{_CONTROL.sub('', address)}>: no such user here"]
        try:
            user, mailbox, mailbox_id = await self._resolve(address)
        except Exception as exc:  # CancelledError is not one
            log_failure(log, exc, f"RCPT <{address}>")
            return [lmtp_reply(exc, address)]
        self.txn.recipients.append((address, user, mailbox, mailbox_id))
        return [f"250 2.1.5 <{address}> OK"]

    async def _resolve(self, address: str) -> tuple[User, str, int | None]:
        """The user an address names: the whole address if a user has that name,
        else its local part; ``user+Folder@dom`` delivers to Folder if it exists.  With
        the mailbox's id when known (the commit then does not look it up again)."""
        local = address.rpartition("@")[0] if "@" in address else address
        name, _, detail = local.partition("+")
        # One query for both readings, and the INBOX's id; the whole address wins.
        which, user, inbox = await self.deliverer.store.users.recipient([address, name])
        if which == 0:
            return user, "INBOX", inbox
        if detail:
            try:
                box = await self.deliverer.store.mailboxes.get(user.id, detail)
                return user, box.name, box.id
            except (NoSuchMailbox, InvalidName):  # no such folder: the INBOX gets it
                pass
        return user, "INBOX", inbox

    async def data(self, message: MessageData) -> list[str]:
        """Exactly one reply per accepted recipient, in RCPT order, whatever happens: the
        MTA waits for each, and one missing reply stalls the connection until it times
        out (RFC 2033 4.2).  An unexpected failure is a temporary one for every recipient
        not answered."""
        assert self.txn is not None
        count = len(self.txn.recipients)
        try:
            replies = await self._data_replies(message)
        except Exception as exc:
            log_failure(log, exc, "LMTP DATA")
            return [lmtp_reply(exc)] * count
        if len(replies) != count:  # a bug: the MTA must still get its replies
            log.error("LMTP DATA made %d replies for %d recipients", len(replies), count)
            replies = [lmtp_reply(AssertionError("reply count"))] * count
        return replies

    async def _data_replies(self, message: MessageData) -> list[str]:
        """One reply per accepted recipient, in RCPT order."""
        txn, self.txn = self.txn, None
        assert txn is not None
        count = len(txn.recipients)
        if message.too_big or message.size > self.max_size:
            return [lmtp_reply(MessageTooBig(message.size, self.max_size))] * count

        if count == 1:
            # One recipient: its trace fields go on top before the one analysis.
            address, user, mailbox, mailbox_id = txn.recipients[0]
            return [await self._deliver_one(txn, address, user, mailbox, mailbox_id,
                                            message.data)]
        # Many: the message is analysed once and its blobs stored once; each recipient's
        # trace fields change only its skeleton and header columns (a small blob each).
        try:
            base = await self.deliverer.prepare(message.data)
            copies = [await self.deliverer.prepare_with(
                          base, message.data, trace_fields(txn.sender, address, message.data))
                      for address, _user, _box, _id in txn.recipients]
            await self.deliverer.upload_many(copies)
        except Exception as exc:  # the same for every recipient: nothing stored for any
            log_failure(log, exc, "LMTP DATA")
            return [lmtp_reply(exc, address) for address, _u, _b, _i in txn.recipients]
        return list(await asyncio.gather(*(
            self._commit_one(address, user, mailbox, mailbox_id, copy)
            for (address, user, mailbox, mailbox_id), copy
            in zip(txn.recipients, copies, strict=True))))

    async def _deliver_one(self, txn: Transaction, address: str, user: User, mailbox: str,
                           mailbox_id: int | None, data: bytes) -> str:
        """The reply to the only recipient: analyse, store, commit."""
        try:
            prepared = await self.deliverer.prepare(
                trace_fields(txn.sender, address, data) + data)
            await self.deliverer.upload(prepared)
        except Exception as exc:
            log_failure(log, exc, f"delivery to <{address}>")
            return lmtp_reply(exc, address)
        return await self._commit_one(address, user, mailbox, mailbox_id, prepared)

    async def _commit_one(self, address: str, user: User, mailbox: str,
                          mailbox_id: int | None, prepared: PreparedMessage) -> str:
        """One recipient's commit and reply: its failure is only its own."""
        try:
            if self.committer is not None and mailbox_id is not None:
                done = await self.committer.commit(user, prepared, mailbox=mailbox,
                                                   mailbox_id=mailbox_id)
            else:
                done = await self.deliverer.commit(user, prepared, mailbox=mailbox,
                                                   mailbox_id=mailbox_id)
        except Exception as exc:
            log_failure(log, exc, f"delivery to <{address}>")
            return lmtp_reply(exc, address)
        log.info("delivered to %s %s uid %d (%d bytes)", user.name, done.mailbox,
                 done.uid, done.size)
        return f"250 2.0.0 <{address}> delivered as UID {done.uid}"


def trace_fields(sender: str, recipient: str, raw: bytes) -> bytes:
    """``Return-Path:`` (the envelope sender) and ``Delivered-To:`` (the recipient) as the
    final delivery agent adds them (RFC 5321 4.4), with the message's own line ending.
    Control characters an MTA could slip into an address are dropped."""
    first = raw.find(b"\n")
    eol = b"\n" if first == 0 or (first > 0 and raw[first - 1] != 0x0D) else b"\r\n"

    def clean(address: str) -> bytes:
        return _CONTROL.sub("", address).encode("utf-8", "replace")

    return (b"Return-Path: <" + clean(sender) + b">" + eol
            + b"Delivered-To: " + clean(recipient) + eol)


class LMTPProtocol(SessionProtocol[LMTPSession, LMTPParser]):
    """One LMTP connection: feeds the parser, runs one command at a time, writes replies
    (and counts them, by the command they answer, in the factory's metrics)."""

    idle_words = "Idle for too long, closing connection"
    logger = log
    session_name = "LMTP session"
    pause_buffer = PAUSE_BUFFER
    max_buffer = MAX_BUFFER

    factory: LMTPFactory

    def __init__(self, factory: LMTPFactory) -> None:
        super().__init__(factory)
        self._shutdown = False

    def _new_parser(self) -> LMTPParser:
        return LMTPParser(max_line=MAX_LINE, max_message=self.factory.config.max_message_size)

    def _new_session(self) -> LMTPSession:
        return LMTPSession(self.factory.deliverer, self.factory.config, self.factory.hostname,
                           self.factory.committer)

    def _refuse(self) -> None:
        self._write([f"421 4.3.2 {self.factory.hostname} too many connections, "
                     "try again later"], "CONNECT")

    def _greet(self, session: LMTPSession) -> None:
        self._write(session.greeting(), "CONNECT")

    def goodbye(self, text: str) -> None:
        self._write([f"421 4.4.2 {self.factory.hostname} {text}"], "IDLE")

    def _protocol_error(self, error: RemoteProtocolError) -> None:
        # The 500 answers the input that broke the limit; the 421 says the channel closes.
        self._write([f"500 5.5.6 {error.reason}",
                     f"421 4.4.2 {self.factory.hostname} closing connection"], "LIMIT")
        self.close()

    def shutdown(self) -> None:
        """Say 421 and close, at once when idle, else once the current command ends (a
        delivery is answered before the connection closes)."""
        self._shutdown = True
        if not self._busy:
            self._say_shutdown()

    def _say_shutdown(self) -> None:
        if not self._closing and not self._gone:
            self._write([f"421 4.3.2 {self.factory.hostname} shutting down"], "SHUTDOWN")
            self.close()

    def _write(self, lines: list[str], command: str) -> None:
        """Send ``lines``, the reply (or replies) to ``command``, and count them."""
        if not self._gone:
            self.transport.write("".join(f"{line}\r\n" for line in lines).encode())
            self.factory.metrics.lmtp_sent(command, lines)

    # -- input ----------------------------------------------------------------------------

    def _handle(self, session: LMTPSession, event: object) -> bool:
        if isinstance(event, Command):
            self._dispatch(self._command(session, event))
        elif isinstance(event, MessageData):
            self._dispatch(self._message(session, event))
        elif isinstance(event, LineTooLong):
            self._write(["500 5.5.2 Line too long"], "LINE")
        else:  # NEED_DATA, or PAUSED until the delivery is answered
            return False
        return True

    async def _command(self, session: LMTPSession, cmd: Command) -> None:
        # Start nothing while the client leaves replies unread: they would pile up here.
        await self.drain()
        try:
            lines, start_data = await session.handle(cmd)
        except Exception as exc:
            log_failure(log, exc, f"LMTP {cmd.verb} from {self.peer}")
            lines, start_data = [lmtp_reply(exc)], False
        if self._closing or self._gone:
            return
        self._write(lines, cmd.verb)
        if start_data:
            self.parser.start_data()
        if cmd.verb == "QUIT":
            self.close()

    async def _message(self, session: LMTPSession, message: MessageData) -> None:
        # LMTPSession.data answers every recipient whatever happens; a crash here is a bug
        # the adapter reports with 421 and a close (a missing reply would stall the MTA).
        lines = await session.data(message)
        if not self._closing:
            self._write(lines, "DATA")
        # Answered: what was pipelined behind the message is read now.
        self.parser.resume()

    def _finished(self, result: object) -> None:
        if self._shutdown:
            self._say_shutdown()
        super()._finished(result)


class LMTPFactory(SessionFactory[LMTPProtocol]):
    """Builds one :class:`LMTPProtocol` per MTA connection.

    There is no per-address limit: every connection comes from the MTA's host.

    :param metrics: where replies are counted by code (imapd shares its sessions').
    :param clock: an ``IReactorTime`` for the idle timeout (default: the reactor).
    """

    def __init__(self, deliverer: Deliverer, config: ImapdConfig,
                 hostname: Callable[[], str] = socket.getfqdn,
                 metrics: ImapMetrics | None = None, *, clock: Any = None) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        super().__init__(max_connections=config.max_connections, max_per_address=0,
                         idle_timeout=config.idle_timeout, clock=clock)
        self.deliverer = deliverer
        #: One per process: its connections' commits are grouped.
        self.committer = GroupCommitter(deliverer)
        self.metrics = metrics if metrics is not None else ImapMetrics()
        self.config = config
        self.hostname = hostname()

    def shutdown(self) -> None:
        """Close every connection (deliveries in progress finish first)."""
        for conn in list(self.protocols):
            conn.shutdown()

    def buildProtocol(self, addr: IAddress | None) -> LMTPProtocol:  # type: ignore[override]
        return LMTPProtocol(self)

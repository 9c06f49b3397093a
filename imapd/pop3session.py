"""One POP3 session over the user's INBOX (RFC 1939 states and commands).

Theory of operation
-------------------
``AUTHORIZATION`` (USER/PASS, AUTH PLAIN, STLS, CAPA, QUIT) → ``TRANSACTION`` once the
password is right: the maildrop is a snapshot of INBOX's UIDs and sizes taken at that
moment, numbered 1..n, and stays fixed for the session as RFC 1939 requires (messages
delivered later appear at the next login).  DELE only marks; RSET unmarks; QUIT enters
``UPDATE`` and expunges the marked messages in one transaction (``\\Deleted`` then UID
EXPUNGE of exactly those UIDs, so a message flagged deleted by an IMAP client is not
swept along).  A connection that drops without QUIT deletes nothing.

Sizes are the IMAP view's (CRLF line ends), which is exactly what RETR sends, so LIST
and STAT agree with the octets a client counts.  UIDL is ``uidvalidity.uid``: stable for
as long as the mailbox is, and never reused.  Bodies come from the blobs through the same
reader as IMAP FETCH; TOP reads the stored header from PostgreSQL and only the body lines
it needs.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import enum
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from twisted.internet import task

from imapd.backend import Backend
from imapd.bodies import BodyReader
from imapd.errormap import log_failure, pop3_error
from imapd.logins import LIMITED_TEXT, LoginsLimited, authenticate
from imapd.pop3parser import AuthLine, Pop3Command, err, multiline, ok
from imapd.sasl import ProxyRefused, SaslError, decode_plain
from metadata.errors import NoSuchMailbox, Unavailable
from metadata.flags import DELETED, Flags
from metadata.records import User
from metadata.uidset import UidSet

__all__ = ["Pop3Connection", "Pop3Session", "Pop3State"]

log = logging.getLogger(__name__)

MAX_FAILED_LOGINS = 3


class Pop3State(enum.Enum):
    AUTHORIZATION = "AUTHORIZATION"
    TRANSACTION = "TRANSACTION"
    UPDATE = "UPDATE"


class Pop3Connection(Protocol):
    """What the session needs from the POP3 adapter."""

    @property
    def secure(self) -> bool: ...

    @property
    def tls_available(self) -> bool: ...

    @property
    def peer(self) -> str: ...

    def write(self, chunks: Sequence[bytes]) -> None: ...

    async def drain(self) -> None: ...

    def expect_auth_line(self) -> None: ...

    def start_tls(self) -> None: ...

    def close(self) -> None: ...


@dataclass
class _Message:
    uid: int
    size: int
    deleted: bool = False


class Pop3Session:
    """POP3 over one user's INBOX (see the module docstring)."""

    def __init__(self, backend: Backend, conn: Pop3Connection) -> None:
        self.backend = backend
        self.conn = conn
        self.state = Pop3State.AUTHORIZATION
        self.user: User | None = None
        self._username: str | None = None
        self._mailbox_id = 0
        self._uidvalidity = 0
        self._messages: list[_Message] = []
        self._failed = 0
        self._reader = BodyReader(backend.blobs)
        self._status = "+OK"

    def _write(self, chunks: Sequence[bytes]) -> None:
        if chunks and chunks[0]:
            self._status = "-ERR" if chunks[0].startswith(b"-ERR") else "+OK"
        self.conn.write(chunks)

    def greeting(self) -> bytes:
        return ok("objmail POP3 server ready")

    def capabilities(self) -> list[str]:
        caps = ["TOP", "UIDL", "RESP-CODES", "PIPELINING", "AUTH-RESP-CODE",
                "IMPLEMENTATION objmail"]
        if self._plaintext_ok():
            caps += ["USER", "SASL PLAIN"]
        if self.conn.tls_available and not self.conn.secure:
            caps.append("STLS")
        return caps

    def _plaintext_ok(self) -> bool:
        return self.conn.secure or bool(self.backend.config.allow_plaintext_auth)

    async def dispatch(self, event: Pop3Command | AuthLine) -> None:
        """Answer one command (or the AUTH response line)."""
        started = time.perf_counter()
        try:
            await self._dispatch(event)
        finally:
            name = "AUTH" if isinstance(event, AuthLine) else event.name
            self.backend.metrics.observe("pop3", name, self._status,
                                         time.perf_counter() - started)

    async def _dispatch(self, event: Pop3Command | AuthLine) -> None:
        try:
            if isinstance(event, AuthLine):
                self._write([await self._auth_line(event.data)])
                return
            await self._command(event)
        except Exception as exc:  # the one POP3 error map; CancelledError is not one
            log_failure(log, exc, f"POP3 command of {self._who()} from {self.conn.peer}")
            self._write([pop3_error(exc)])

    async def close(self) -> None:
        """The connection ended; without QUIT nothing is deleted (RFC 1939 6)."""
        self.state = Pop3State.UPDATE

    def _who(self) -> str:
        return self.user.name if self.user is not None else "-"

    async def _command(self, cmd: Pop3Command) -> None:
        name = cmd.name
        if name == "CAPA":
            self._write(multiline("Capability list follows",
                                      "\r\n".join(self.capabilities()).encode()))
            return
        if name == "QUIT":
            await self._quit()
            return
        if name == "NOOP" and self.state is Pop3State.TRANSACTION:
            self._write([ok()])
            return
        if self.state is Pop3State.AUTHORIZATION:
            handler = {"USER": self._user_cmd, "PASS": self._pass, "STLS": self._stls,
                       "AUTH": self._auth}.get(name)
        else:
            handler = {"STAT": self._stat, "LIST": self._list, "UIDL": self._uidl,
                       "RETR": self._retr, "TOP": self._top, "DELE": self._dele,
                       "RSET": self._rset}.get(name)
        if handler is None:
            self._write([err(f"Unknown command or wrong state: {name[:10]}")])
            return
        await handler(cmd.args)

    # -- AUTHORIZATION ------------------------------------------------------------------------

    async def _stls(self, args: tuple[str, ...]) -> None:
        if self.conn.secure or not self.conn.tls_available:
            self._write([err("TLS is not available")])
            return
        self._write([ok("Begin TLS negotiation")])
        self.conn.start_tls()

    async def _user_cmd(self, args: tuple[str, ...]) -> None:
        if not self._plaintext_ok():
            self._write([err("Plaintext authentication needs TLS (STLS)", "AUTH")])
            return
        if len(args) != 1:
            self._write([err("USER takes one name")])
            return
        self._username = args[0]
        self._write([ok("Send PASS")])

    async def _pass(self, args: tuple[str, ...]) -> None:
        if self._username is None:
            self._write([err("Send USER first")])
            return
        name, self._username = self._username, None
        await self._password_login(name, args[0] if args else "")

    async def _auth(self, args: tuple[str, ...]) -> None:
        if not args:
            self._write(multiline("SASL mechanisms", b"PLAIN"))
            return
        if args[0].upper() != "PLAIN":
            self._write([err("Unsupported mechanism")])
            return
        if not self._plaintext_ok():
            self._write([err("Authentication needs TLS (STLS)", "AUTH")])
            return
        if len(args) > 1:
            self._write([await self._auth_line(args[1].encode("ascii", "replace"))])
            return
        self._write([b"+ \r\n"])
        self.conn.expect_auth_line()

    async def _auth_line(self, data: bytes) -> bytes:
        if data == b"*":
            return err("Authentication cancelled")
        try:
            credentials = decode_plain(base64.b64decode(data, validate=True))
        except (binascii.Error, SaslError) as exc:
            if isinstance(exc, ProxyRefused):  # a refused login all the same
                self.backend.metrics.login("pop3", False)
            return err("Invalid PLAIN response")
        return await self._password_login(credentials.username, credentials.password,
                                          reply=False)

    async def _password_login(self, name: str, password: str, *, reply: bool = True) -> bytes:
        try:
            user = await authenticate(self.backend.store.users, self.backend.logins,
                                      self.conn.peer, name, password)
        except LoginsLimited:
            return await self._logged_in(None, name, reply=reply, limited=True)
        return await self._logged_in(user, name, reply=reply)

    async def _logged_in(self, user: User | None, name: str, *, reply: bool = True,
                         limited: bool = False) -> bytes:
        self.backend.metrics.login("pop3", user is not None)
        if user is None:
            self._failed += 1
            log.warning("failed POP3 login for %r from %s%s", name[:100], self.conn.peer,
                        " (limited)" if limited else "")
            delay = float(self.backend.config.login_delay)
            if delay > 0:
                await task.deferLater(self.backend.clock, delay, lambda: None).asFuture(
                    asyncio.get_running_loop())
            answer = (err(LIMITED_TEXT, "SYS/TEMP") if limited
                      else err("Authentication failed", "AUTH"))
            if self._failed >= MAX_FAILED_LOGINS:
                self._write([answer])
                self.conn.close()
                return b""
        else:
            try:
                await self._open_maildrop(user)
            except NoSuchMailbox:
                return self._send(err("No INBOX", "SYS/PERM"), reply)
            log.info("POP3 login %s from %s", user.name, self.conn.peer)
            answer = ok(f"{len(self._messages)} messages")
        return self._send(answer, reply)

    def _send(self, answer: bytes, reply: bool) -> bytes:
        if reply:
            self._write([answer])
        return answer

    async def _open_maildrop(self, user: User) -> None:
        store = self.backend.store
        inbox = await store.mailboxes.get(user.id, "INBOX")
        entries = await store.messages.fetch(user.id, inbox.id, UidSet.all())
        self._mailbox_id = inbox.id
        self._uidvalidity = inbox.uidvalidity
        self._messages = [_Message(e.uid, e.size) for e in entries]
        self.user = user
        self.state = Pop3State.TRANSACTION

    # -- TRANSACTION --------------------------------------------------------------------------

    def _message(self, args: tuple[str, ...], index: int = 0) -> _Message | None:
        try:
            number = int(args[index])
        except (IndexError, ValueError):
            self._write([err("Message number required")])
            return None
        if not 1 <= number <= len(self._messages) or self._messages[number - 1].deleted:
            self._write([err("No such message")])
            return None
        return self._messages[number - 1]

    async def _stat(self, args: tuple[str, ...]) -> None:
        live = [m for m in self._messages if not m.deleted]
        self._write([ok(f"{len(live)} {sum(m.size for m in live)}")])

    async def _list(self, args: tuple[str, ...]) -> None:
        if args:
            message = self._message(args)
            if message is not None:
                self._write([ok(f"{self._messages.index(message) + 1} {message.size}")])
            return
        lines = [f"{n} {m.size}" for n, m in enumerate(self._messages, 1) if not m.deleted]
        self._write(multiline("Scan listing follows", "\r\n".join(lines).encode()))

    def _uid_of(self, message: _Message) -> str:
        return f"{self._uidvalidity}.{message.uid}"

    async def _uidl(self, args: tuple[str, ...]) -> None:
        if args:
            message = self._message(args)
            if message is not None:
                number = self._messages.index(message) + 1
                self._write([ok(f"{number} {self._uid_of(message)}")])
            return
        lines = [f"{n} {self._uid_of(m)}" for n, m in enumerate(self._messages, 1)
                 if not m.deleted]
        self._write(multiline("Unique-ID listing follows", "\r\n".join(lines).encode()))

    async def _read(self, message: _Message) -> bytes | None:
        assert self.user is not None
        entries = await self.backend.store.messages.fetch(
            self.user.id, self._mailbox_id, UidSet.from_uids([message.uid]),
            items={"skeleton", "sections", "header"})
        if not entries:
            self._write([err("Message was deleted by another session")])
            return None
        return await self._reader.read_message(entries[0])

    async def _retr(self, args: tuple[str, ...]) -> None:
        message = self._message(args)
        if message is None:
            return
        data = await self._read(message)
        if data is not None:
            self._write(multiline(f"{len(data)} octets", data))
            await self.conn.drain()

    async def _top(self, args: tuple[str, ...]) -> None:
        message = self._message(args)
        if message is None:
            return
        try:
            lines = int(args[1])
            if lines < 0:
                raise ValueError
        except (IndexError, ValueError):
            self._write([err("TOP needs a message number and a line count")])
            return
        data = await self._read(message)
        if data is None:
            return
        split = data.find(b"\r\n\r\n")
        if split < 0:
            self._write(multiline("Top of message follows", data))
            return
        header, body = data[:split + 4], data[split + 4:]
        kept = b"".join(body.splitlines(keepends=True)[:lines])
        self._write(multiline("Top of message follows", header + kept))

    async def _dele(self, args: tuple[str, ...]) -> None:
        message = self._message(args)
        if message is not None:
            message.deleted = True
            self._write([ok("Marked for deletion")])

    async def _rset(self, args: tuple[str, ...]) -> None:
        for message in self._messages:
            message.deleted = False
        self._write([ok(f"{len(self._messages)} messages")])

    async def _quit(self) -> None:
        if self.state is Pop3State.TRANSACTION and self.user is not None:
            self.state = Pop3State.UPDATE
            doomed = [m.uid for m in self._messages if m.deleted]
            if doomed:
                uids = UidSet.from_uids(doomed)
                messages = self.backend.store.messages
                try:
                    await messages.store_flags(self.user.id, self._mailbox_id, uids, "add",
                                               Flags(DELETED))
                    await messages.expunge(self.user.id, self._mailbox_id, uids)
                except (Unavailable, NoSuchMailbox) as exc:
                    log.warning("POP3 QUIT could not delete for %s: %s", self._who(), exc)
                    self._write([err("Some messages were not deleted", "SYS/TEMP")])
                    self.conn.close()
                    return
        self._write([ok("Bye")])
        self.conn.close()

"""An asyncio memcached client for talking to object servers.

Theory of operation: one :class:`MemcacheConnection` is an asyncio protocol that
pipelines requests: each request is written at once and a future is queued; the
sans-IO :class:`objstore.replies.ReplyParser` turns the byte stream back into
replies, which resolve the futures in order.  A reply that cannot be parsed, a
timeout or a lost connection fails *every* pending request on that connection
and closes it, because a memcached stream cannot be resynchronised.

:class:`NodeClient` keeps a small pool of such connections to one object server,
opened lazily and replaced when they die, and exposes typed operations that raise
the :class:`NodeError` family instead of returning protocol replies.

Each new connection is made as :class:`NodeAccess` says (``[director] objstore_*``):
over TLS when a CA is configured, and, with credentials, authenticated before it takes
any request.  Authentication is memcached's text-protocol one (:mod:`objstore.auth`):
the client first sends ``version``; a server that answers ``CLIENT_ERROR
unauthenticated`` gets the authenticating ``set``, one that answers ``VERSION`` does not
require authentication and the connection is used as it is (so credentials never land
in the store of a server that would take the ``set`` as data).  Refused credentials are
:class:`NodeAuthFailed`: the node is unavailable, with the server's words.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, cast

from director.config import DirectorConfig
from director.errors import DirectorError
from objstore.auth import AUTH_REFUSALS, E_UNAUTHENTICATED, auth_request
from objstore.replies import (
    NEED_DATA,
    ErrorReply,
    Expect,
    MetadumpEntry,
    MetadumpReply,
    MetaReply,
    Reply,
    ReplyError,
    ReplyParser,
    StatsReply,
    Status,
    Value,
    Values,
    VersionReply,
)
from runtime import errors as kinds
from runtime.secrets import read_authfile

log = logging.getLogger(__name__)


class NodeError(DirectorError, kinds.Unavailable):
    """An object server could not serve a request (whatever the reason, a dependency
    failing: the caller tries another replica or answers "try again")."""


class NodeUnavailable(NodeError):
    """No connection could be made, or it broke."""


class NodeAuthFailed(NodeUnavailable):
    """The server refused this director's credentials (or wants some and none are set)."""


class NodeTimeout(NodeError):
    """The server did not answer in time."""


class NodeProtocolError(NodeError):
    """The server answered something that is not the memcached protocol."""


class NodeRefused(NodeError):
    """The server answered with an error reply (CLIENT_ERROR, SERVER_ERROR, ERROR)."""

    def __init__(self, reply: ErrorReply) -> None:
        super().__init__(reply.line.decode(errors="replace"))
        self.reply = reply


class MemcacheConnection(asyncio.Protocol):
    """One pipelined connection."""

    def __init__(self, max_value: int) -> None:
        self._parser = ReplyParser(max_value=max_value)
        self._pending: deque[asyncio.Future[Reply]] = deque()
        self._transport: asyncio.Transport | None = None
        #: Requests of this turn of the loop, written together at its end.
        self._out: list[bytes] | None = None
        self.closed = False

    # asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport; uvloop's does not subclass asyncio.Transport.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._parser.feed(data)
        while self._pending:
            try:
                reply = self._parser.next_reply()
            except ReplyError as exc:
                self._fail(NodeProtocolError(str(exc)))
                return
            if reply is NEED_DATA:
                return
            fut = self._pending.popleft()
            if not fut.done():
                fut.set_result(reply)  # type: ignore[arg-type]
        if data and not self._pending and self._parser.pending == 0:
            # Bytes nobody asked for: the stream is out of step.
            with contextlib.suppress(ReplyError):
                if self._parser.next_reply() is not NEED_DATA:
                    self._fail(NodeProtocolError("unsolicited reply"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(NodeUnavailable(f"connection lost: {exc}" if exc else "connection closed"))

    # requests --------------------------------------------------------------------------

    @property
    def load(self) -> int:
        return len(self._pending)

    @property
    def gathering(self) -> bool:
        """True while requests of this turn of the loop wait to be written together."""
        return self._out is not None

    def request(self, chunks: Sequence[bytes], expect: Expect) -> asyncio.Future[Reply]:
        """Write one request (already serialised) and return the future of its reply."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Reply] = loop.create_future()
        if self.closed or self._transport is None:
            fut.set_exception(NodeUnavailable("connection closed"))
            return fut
        self._parser.expect(expect)
        self._pending.append(fut)
        # One write (one system call) for every request made in this turn of the loop:
        # under load many requests share a connection, and the writes cost more than
        # the turn's wait.
        if self._out is None:
            self._out = list(chunks)
            loop.call_soon(self._send)
        else:
            self._out += chunks
        return fut

    def _send(self) -> None:
        out, self._out = self._out, None
        if out and not self.closed and self._transport is not None:
            self._transport.writelines(out)

    def abort(self, error: NodeError) -> None:
        self._fail(error)

    def _fail(self, error: NodeError) -> None:
        self.closed = True
        while self._pending:
            fut = self._pending.popleft()
            if not fut.done():
                fut.set_exception(error)
        if self._transport is not None:
            self._transport.abort()


def _expire(conn: MemcacheConnection, fut: asyncio.Future[Reply], limit: float) -> None:
    """A request's time is up: later replies on its connection would be misattributed,
    so the connection goes, failing every request on it."""
    if not fut.done():
        conn.abort(NodeTimeout(f"no reply within {limit}s"))


#: Requests in flight on a connection up to which a new one of the same turn joins it
#: rather than taking a less busy connection (see :meth:`NodeClient._gathering`).
SHARE_UP_TO: Final = 64


@dataclass(frozen=True)
class NodeAccess:
    """How connections to object servers are made: memcached text-protocol credentials
    and a TLS client context (None: plaintext).  ``repr`` hides the password."""

    user: str = ""
    password: str = field(default="", repr=False)
    tls: ssl.SSLContext | None = None

    @classmethod
    def load(cls, dconf: DirectorConfig) -> NodeAccess:
        """Read ``director.objstore_auth_file`` (its first ``user:password``) and the
        ``objstore_tls_*`` files, once.

        :raises ConfigError: a file is missing, unreadable, not private or malformed.
        """
        user = password = ""
        if dconf.objstore_auth_file:
            user, password = read_authfile(dconf.objstore_auth_file,
                                           "director.objstore_auth_file")[0]
        tls = None
        if dconf.objstore_tls_ca:
            from runtime.tls import client_context

            tls = client_context(dconf.objstore_tls_ca, dconf.objstore_tls_cert,
                                 dconf.objstore_tls_key, prefix="director.objstore_")
        return cls(user, password, tls)


#: Plaintext, no credentials.
OPEN_ACCESS: Final = NodeAccess()


@dataclass(frozen=True)
class NodeAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


class NodeClient:
    """Pooled, pipelined access to one object server.

    :param pool_size: connections kept open at most; requests go to the least busy.
    :param timeout: seconds to wait for connecting (TLS and authentication included) and
        for each reply.
    :param access: credentials and TLS for new connections.
    """

    def __init__(self, address: NodeAddress, *, pool_size: int = 4, timeout: float = 2.0,
                 max_value: int = 64 * 1024 * 1024 + 1024,
                 access: NodeAccess = OPEN_ACCESS) -> None:
        self.address = address
        self.pool_size = pool_size
        self.timeout = timeout
        self.max_value = max_value
        self.access = access
        self._conns: list[MemcacheConnection] = []
        self._connecting = 0
        self._warned_open = False

    def _gathering(self) -> MemcacheConnection | None:
        """A connection whose requests of this turn are not written yet, unless it is
        busy already: a request joins them, and leaves in the same system call (the
        object server then reads them as one pipeline, cheaper for it too)."""
        for conn in self._conns:
            if conn.gathering and not conn.closed and conn.load < SHARE_UP_TO:
                return conn
        return None

    async def _connection(self) -> MemcacheConnection:
        self._conns = [c for c in self._conns if not c.closed]
        idle = min(self._conns, key=lambda c: c.load, default=None)
        if idle is not None and (idle.load == 0
                                 or len(self._conns) + self._connecting >= self.pool_size):
            return idle
        self._connecting += 1
        try:
            conn = await asyncio.wait_for(self._open(), self.timeout)
        except (TimeoutError, OSError) as exc:
            if idle is not None:
                return idle
            raise NodeUnavailable(f"{self.address}: cannot connect: {exc or 'timeout'}") from exc
        finally:
            self._connecting -= 1
        self._conns.append(conn)
        return conn

    async def _open(self) -> MemcacheConnection:
        """A new connection, over TLS and authenticated when :attr:`access` says so."""
        access = self.access
        loop = asyncio.get_running_loop()
        host = self.address.host
        _transport, conn = await loop.create_connection(
            lambda: MemcacheConnection(self.max_value), host, self.address.port,
            ssl=access.tls, server_hostname=host if access.tls is not None else None)
        if not access.user:
            return conn
        try:
            await self._authenticate(conn)
        except BaseException:
            conn.abort(NodeUnavailable("authentication did not complete"))
            raise
        return conn

    async def _authenticate(self, conn: MemcacheConnection) -> None:
        """Log ``conn`` in, unless the server says it needs no credentials.

        :raises NodeAuthFailed: the server refused the credentials.
        """
        probe = await conn.request([b"version\r\n"], Expect.LINE)
        if isinstance(probe, VersionReply):
            if not self._warned_open:
                self._warned_open = True
                log.warning("object server %s does not require authentication; "
                            "connecting without it", self.address)
            return
        if probe != E_UNAUTHENTICATED:
            raise NodeProtocolError(f"{self.address}: version answered {probe!r}")
        reply = await conn.request(auth_request(self.access.user, self.access.password),
                                   Expect.LINE)
        if not (isinstance(reply, Status) and reply.word == b"STORED"):
            words = reply.line.decode(errors="replace") if isinstance(reply, ErrorReply) \
                else repr(reply)
            raise NodeAuthFailed(f"{self.address}: authentication as "
                                 f"{self.access.user!r} refused: {words}")

    async def call(self, chunks: Sequence[bytes], expect: Expect,
                   timeout: float | None = None) -> Reply:
        """Send one raw request and wait for its reply (``timeout`` overrides the default)."""
        conn = self._gathering() or await self._connection()
        fut = conn.request(chunks, expect)
        limit = self.timeout if timeout is None else timeout
        # A timer, not wait_for(shield()): three futures fewer per request.  A caller that
        # is cancelled cancels ``fut``; its reply is still read off the stream and dropped.
        timer = asyncio.get_running_loop().call_later(limit, _expire, conn, fut, limit)
        try:
            reply = await fut
        except NodeError as exc:
            raise type(exc)(f"{self.address}: {exc}") from exc
        finally:
            timer.cancel()
        if isinstance(reply, ErrorReply):
            if reply in AUTH_REFUSALS:
                # Only a connection that did not log in hears these.
                raise NodeAuthFailed(f"{self.address}: the server requires authentication "
                                     f"(director.objstore_auth_file): "
                                     f"{reply.line.decode(errors='replace')}")
            raise NodeRefused(reply)
        return reply

    async def close(self) -> None:
        for conn in self._conns:
            conn.abort(NodeUnavailable("client closed"))
        self._conns.clear()

    # typed operations ------------------------------------------------------------------

    async def get(self, key: bytes, *, cas: bool = False) -> Value | None:
        """The item (``gets`` when ``cas``: with its cas unique), or None."""
        verb = b"gets " if cas else b"get "
        reply = await self.call([verb + key + b"\r\n"], Expect.GET)
        if not isinstance(reply, Values):
            raise NodeProtocolError(f"{self.address}: get answered {reply!r}")
        if not reply.items:
            return None
        item = reply.items[0]
        if item.key != key:
            # A reply for another key means the stream is not what we think it is.
            raise NodeProtocolError(f"{self.address}: asked for {key!r}, got {item.key!r}")
        return item

    async def get_many(self, keys: Sequence[bytes], *, cas: bool = False
                       ) -> dict[bytes, Value]:
        """The items of ``keys`` the server holds (``gets`` when ``cas``: with their cas
        uniques); keys it lacks are left out."""
        if not keys:
            return {}
        verb = b"gets " if cas else b"get "
        reply = await self.call([verb + b" ".join(keys) + b"\r\n"], Expect.GET)
        if not isinstance(reply, Values):
            raise NodeProtocolError(f"{self.address}: get answered {reply!r}")
        out = {v.key: v for v in reply.items}
        if not out.keys() <= set(keys):
            # Keys nobody asked for: the stream is not what we think it is.
            raise NodeProtocolError(f"{self.address}: asked for {len(keys)} key(s), got "
                                    f"{[v.key for v in reply.items]!r}")
        return out

    async def store(self, verb: bytes, key: bytes, value: bytes, flags: int = 0,
                    exptime: int = 0) -> bytes:
        """set/add/replace; returns the status word (STORED, NOT_STORED...)."""
        header = b"%s %s %d %d %d\r\n" % (verb, key, flags, exptime, len(value))
        reply = await self.call([header, value, b"\r\n"], Expect.LINE)
        if not isinstance(reply, Status):
            raise NodeProtocolError(f"{self.address}: {verb.decode()} answered {reply!r}")
        return reply.word

    async def set(self, key: bytes, value: bytes, flags: int = 0, exptime: int = 0) -> bool:
        return await self.store(b"set", key, value, flags, exptime) == b"STORED"

    async def add(self, key: bytes, value: bytes, flags: int = 0, exptime: int = 0) -> bool:
        return await self.store(b"add", key, value, flags, exptime) == b"STORED"

    async def delete(self, key: bytes) -> bool:
        reply = await self.call([b"delete " + key + b"\r\n"], Expect.LINE)
        if not isinstance(reply, Status):
            raise NodeProtocolError(f"{self.address}: delete answered {reply!r}")
        return reply.word == b"DELETED"

    async def touch(self, key: bytes, exptime: int) -> bool:
        reply = await self.call([b"touch %s %d\r\n" % (key, exptime)], Expect.LINE)
        if not isinstance(reply, Status):
            raise NodeProtocolError(f"{self.address}: touch answered {reply!r}")
        return reply.word == b"TOUCHED"

    async def exists(self, key: bytes) -> bool:
        """True when the server holds ``key`` (a meta get without the value)."""
        reply = await self.call([b"mg " + key + b"\r\n"], Expect.META)
        if not isinstance(reply, MetaReply):
            raise NodeProtocolError(f"{self.address}: mg answered {reply!r}")
        return reply.code in (b"HD", b"VA")

    async def meta(self, line: bytes, value: bytes | None = None) -> MetaReply:
        """A raw meta command (``mg key v f``...), with a data block for ms."""
        chunks = [line + b"\r\n"] if value is None else [line + b"\r\n", value, b"\r\n"]
        reply = await self.call(chunks, Expect.META)
        if not isinstance(reply, MetaReply):
            raise NodeProtocolError(f"{self.address}: meta answered {reply!r}")
        return reply

    async def version(self) -> bytes:
        reply = await self.call([b"version\r\n"], Expect.LINE)
        if not isinstance(reply, VersionReply):
            raise NodeProtocolError(f"{self.address}: version answered {reply!r}")
        return reply.version

    async def stats(self, group: bytes = b"") -> dict[str, str]:
        line = b"stats " + group + b"\r\n" if group else b"stats\r\n"
        reply = await self.call([line], Expect.STATS)
        if not isinstance(reply, StatsReply):
            raise NodeProtocolError(f"{self.address}: stats answered {reply!r}")
        return reply.as_dict()

    async def metadump(self, timeout: float = 300.0) -> tuple[MetadumpEntry, ...]:
        """Every key the server holds (``lru_crawler metadump all``)."""
        reply = await self.call([b"lru_crawler metadump all\r\n"], Expect.METADUMP, timeout)
        if not isinstance(reply, MetadumpReply):
            raise NodeProtocolError(f"{self.address}: metadump answered {reply!r}")
        return reply.entries

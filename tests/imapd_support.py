"""Support for the imapd handler tests: a session over a real PostgreSQL, driven by bytes.

The session under test talks to a real metadata store, a real
:class:`~metadata.notify.ChangeListener` and the real :class:`~metadata.delivery.Deliverer`.
Two things are stand-ins, because the handler tests are about the session, not the wire or
the object servers: :class:`MemoryBlobs` (a dict with a switch that makes every read fail,
and a log of what was read, so tests can prove a partial fetch skipped a blob) and
:class:`ScriptedConnection` (responses collected in a list).  The end-to-end tests run the
real imapd process over real object servers instead (``tests/imapd_process.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import task

from director.errors import BlobNotFound, BlobUnavailable
from imapd.backend import Backend
from imapd.parser import (
    AuthResponse,
    BadCommand,
    ContinuationNeeded,
    IdleDone,
    NeedData,
    Parser,
)
from imapd.response import Response, render_all
from imapd.server import limits_for
from imapd.session import Session
from metadata.delivery import Deliverer
from metadata.notify import Change, ChangeListener
from metadata.records import User
from metadata.store import MetadataStore
from ops.config import Config, ImapdConfig
from tests.conftest import CORPUS
from tests.metadata_support import FAST_SCRYPT
from tests.waiting import eventually

#: Corpus messages the tests use, chosen for their structure.
ATTACHMENT = "apache-james-mime4j/mimetools-testmsgs/twopart.msg"  # LF, 42 KB base64 blob
NESTED = "apache-james-mime4j/mimetools-testmsgs/ak-0696.msg"  # CRLF, message/rfc822
PLAIN_LF = "apache-james-mime4j/mimetools-testmsgs/attachment-filename-encoding-UTF8.msg"
PICTURE = "apache-spamassassin/spam/extracttext/gtube_png.eml"  # CRLF, 79 KB


def corpus(name: str) -> bytes:
    return (CORPUS / name).read_bytes()


class MemoryBlobs:
    """A dict standing in for ``director.client.BlobClient`` in handler tests."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.reads: list[str] = []
        #: What every call raises while set (failure injection).
        self.failure: Exception | None = None

    @property
    def unavailable(self) -> bool:
        return isinstance(self.failure, BlobUnavailable)

    @unavailable.setter
    def unavailable(self, down: bool) -> None:
        self.failure = BlobUnavailable("object servers unreachable (test switch)") \
            if down else None

    async def put(self, data: bytes) -> str:
        return (await self.put_many([data]))[0]

    def id_of(self, content: bytes) -> str:
        return hashlib.sha256(content).hexdigest()

    async def put_many(self, blobs: Sequence[bytes]) -> list[str]:
        ids = [self.id_of(data) for data in blobs]
        await self.put_named(dict(zip(ids, blobs, strict=True)), self.id_of)
        return ids

    async def put_named(self, blobs: Mapping[str, bytes],
                        named_by: Callable[[bytes], str]) -> None:
        if self.failure is not None:
            raise self.failure
        for bid, data in blobs.items():
            assert named_by == self.id_of or self.id_of(data) == bid
            self.data[bid] = data

    async def gc_generation(self) -> int:
        return 0  # this twin never collects anything

    async def check_kept(self, ids: Iterable[str], generation: int) -> None:
        missing = [bid for bid in ids if bid not in self.data]
        if missing:
            raise BlobUnavailable(f"blob {missing[0]} is gone (test twin)")

    async def get(self, blob_id: str) -> bytes:
        return (await self.get_many([blob_id]))[blob_id]

    async def get_many(self, ids: Iterable[str]) -> dict[str, bytes]:
        if self.failure is not None:
            raise self.failure
        out = {}
        for bid in ids:
            self.reads.append(bid)
            if bid not in self.data:
                raise BlobNotFound(f"no blob {bid}")
            out[bid] = self.data[bid]
        return out


@dataclass
class ScriptedConnection:
    """A :class:`imapd.connection.Connection` that records what the session does."""

    secure: bool = False
    tls_available: bool = True
    peer: str = "127.0.0.1:1"
    sent: list[Response] = field(default_factory=list)
    closed: bool = False
    tls_started: bool = False
    compressing: bool = False
    parser: Parser | None = None
    utf8_names: bool = False

    def send(self, responses: Sequence[Response]) -> None:
        if not self.closed:
            self.sent.extend(responses)

    async def drain(self) -> None:
        return None

    def start_idle(self, tag: str) -> None:
        assert self.parser is not None
        self.parser.start_idle(tag)

    def start_authenticate(self, tag: str) -> None:
        assert self.parser is not None
        self.parser.start_authenticate(tag)

    def use_utf8_names(self) -> None:
        assert self.parser is not None
        self.utf8_names = True
        self.parser.use_utf8_names()

    def start_tls(self) -> None:
        self.tls_started = True
        self.secure = True

    def start_compress(self) -> None:
        self.compressing = True

    def close(self) -> None:
        self.closed = True


class Client:
    """Drives a :class:`Session` the way the adapter does: bytes through the real parser,
    one event at a time; returns what the session sent, rendered."""

    def __init__(self, backend: Backend, *, secure: bool = False) -> None:
        self.conn = ScriptedConnection(secure=secure)
        self.parser = Parser(limits_for(backend.config), prelogin=True)
        self.conn.parser = self.parser
        self.session = Session(backend, self.conn)
        self.tasks: list[asyncio.Task[None]] = []

    def wire(self, responses: Sequence[Response]) -> bytes:
        return b"".join(render_all(responses, utf8=self.conn.utf8_names))

    async def send(self, data: bytes | str) -> bytes:
        """Feed ``data`` (CRLF added when missing) and run every complete event."""
        raw = data.encode() if isinstance(data, str) else data
        if not raw.endswith(b"\n"):
            raw += b"\r\n"
        start = len(self.conn.sent)
        self.parser.feed(raw)
        while True:
            event = self.parser.next_event()
            if isinstance(event, NeedData):
                break
            if isinstance(event, ContinuationNeeded):
                self.parser.accept_literal()
                continue
            if isinstance(event, BadCommand):
                self.conn.send([event.response()])
                self.session.bad_command(clears_saved=event.clears_saved)  # as the adapter
                continue
            assert isinstance(event, (IdleDone, AuthResponse)) or hasattr(event, "tag")
            await self.session.dispatch(event)
            if self.session.user is not None:  # as the adapter does once logged in
                self.parser.end_prelogin()
        return self.wire(self.conn.sent[start:])

    async def login(self, user: str = "alice", password: str = "secret") -> bytes:
        reply = await self.send(f"L1 LOGIN {user} {password}")
        assert b"L1 OK" in reply, reply
        return reply

    def since(self, mark: int) -> bytes:
        return self.wire(self.conn.sent[mark:])

    async def close(self) -> None:
        await self.session.close()


@dataclass
class Env:
    """Everything a handler test needs, over one database."""

    store: MetadataStore
    blobs: MemoryBlobs
    deliverer: Deliverer
    listener: ChangeListener
    config: Config
    clock: task.Clock
    users: dict[str, User] = field(default_factory=dict)

    def backend(self, **imapd: Any) -> Backend:
        config = dataclasses.replace(self.config.imapd, **imapd) if imapd else \
            self.config.imapd
        return Backend(self.store, self.blobs, self.deliverer, self.listener, config,
                       self.clock)

    def client(self, *, secure: bool = False, **imapd: Any) -> Client:
        return Client(self.backend(**imapd), secure=secure)

    async def user(self, name: str, password: str = "secret", quota: int = 0) -> User:
        user = await self.store.users.create(name, password, quota_bytes=quota)
        self.users[name] = user
        return user

    async def deliver(self, user: str, raw: bytes, mailbox: str = "INBOX",
                      flags: Iterable[str] = ()) -> Any:
        return await self.deliverer.deliver(user, raw, mailbox=mailbox, flags=flags)

    async def hear(self, user: str) -> Heard:
        """Listen to ``user``'s changes from now on, after every session logged in so far."""
        heard = Heard()
        await self.listener.subscribe(self.users[user].id, heard.changes.append)
        return heard


class Heard:
    """One user's changes as the environment's listener delivers them.

    Subscribed after the sessions under test, it hears each change after them (the
    listener calls back in subscription order): once it has, so have they.
    """

    def __init__(self) -> None:
        self.changes: list[Change] = []

    async def of(self, kind: str) -> None:
        """Wait until a change of ``kind`` was heard, then forget what was heard."""
        await eventually(lambda: any(c.kind == kind for c in self.changes),
                         what=f"a {kind!r} notification")
        self.changes.clear()


@contextlib.asynccontextmanager
async def environment(dsn: str, *, store_dsn: str | None = None,
                      **imapd: Any) -> AsyncIterator[Env]:
    """An :class:`Env` over ``dsn``; ``imapd`` overrides config keys (plaintext login is
    allowed and the login delay is 0 unless a test says otherwise).

    :param store_dsn: where the store connects, when not ``dsn`` (a :class:`TcpProxy`).
    """
    settings: dict[str, Any] = {"allow_plaintext_auth": True, "login_delay": 0.0}
    settings.update(imapd)
    config = Config(imapd=ImapdConfig(**settings))
    store = await MetadataStore.open(store_dsn or dsn, pool_min=1, pool_max=8,
                                     password_params=FAST_SCRYPT)
    listener = ChangeListener(dsn, reconnect_delay=0.1)
    await listener.start()
    blobs = MemoryBlobs()
    env = Env(store, blobs, Deliverer(store, blobs, config.metadata, config.imapd.max_message_size), listener, config, task.Clock())
    try:
        yield env
    finally:
        await listener.close()
        await store.close()


class TcpProxy:
    """A loopback TCP relay to a real server whose link the test can cut and restore:
    the one way to make PostgreSQL "go away" for one client without stopping the shared
    server.  While cut, open connections are reset and new ones refused."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.base_events.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers += [writer, up_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in self._writers:
            transport = writer.transport
            transport.abort()
        self._writers.clear()

    async def restore(self) -> None:
        await self.start()

"""Redis server-assisted invalidation of directord's location cache.

Theory of operation.  :class:`InvalidationTracker` holds one RESP3 connection to every
node of the Redis Cluster (masters and replicas), each with ``CLIENT TRACKING on BCAST
PREFIX <prefix>ixi:``: whatever changes a key of the items' index (a ``set``, ``delete``
or copy through any directord, drain, index rebuild, the items migration, an operator's
``redis-cli``), that node pushes ``invalidate [<bucket key>...]`` to every such
connection, and the tracker drops the cached entries of those buckets
(:class:`director.locationcache.LocationCache`).  A ``FLUSHALL`` pushes ``invalidate``
with no keys: everything goes.  Replicas are tracked too because a replica sends the
invalidations of what it replicates, and once promoted, of what it executes: a failover
leaves no node whose writes nobody reports.

**In time for the next read.**  Redis writes a write's invalidation to our connection's
socket before it acknowledges the write: in ``BCAST`` mode invalidations leave in the
same event-loop pass as the command's reply (the connection is queued for writing after
the writer, and Redis writes the queue newest first), and with
``director.index_write_replicas`` >= 1 the writer's acknowledgement waits for a replica
(``WAIT``), which takes at least one more pass.  On one host the bytes are then in our
socket's receive buffer before the writer's client can have heard "STORED".  So before a
batch of reads consults the cache, :meth:`InvalidationTracker.fresh` reads every byte
waiting on the tracking sockets (one ``poll`` system call when none is): a get through
directord B that follows a write acknowledged by directord A never finds B's cache
holding the entry that write replaced.  A message received only in part makes that batch
go to Redis; a drain that read half a receive buffer or more flushes the cache (Redis may
hold more behind a full socket).

**Losing a connection** (``CLIENT KILL``, a node restarting or failing over, a node added
to the cluster, a topology change seen by the periodic ``CLUSTER NODES``) flushes the
whole cache and makes it unusable until a tracking connection to every node the cluster
lists is up again; a heartbeat ``PING`` not answered within ``timeout`` counts as a lost
connection.  Lookups that began while the cache was unusable are never cached
(:class:`~director.locationcache.Ticket`).

Redis over TLS is not supported here (the tracker speaks plain TCP): directord then runs
without the cache and says so at start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import select
import socket
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from director.locationcache import (
    NEED_DATA,
    LocationCache,
    Push,
    RespError,
    RespProtocolError,
    RespReader,
    encode_command,
)
from runtime.config import parse_hostport
from runtime.secrets import NO_REDIS_AUTH, RedisAuth

log = logging.getLogger(__name__)

#: Bytes read from a tracking socket at a time.
RECV_SIZE: Final = 256 * 1024

#: The client name tracking connections give themselves (``CLIENT LIST`` shows it).
CLIENT_NAME: Final = "objmail-tracking"

Reply = Callable[[object], None]


@dataclass
class TrackerStats:
    """Counters for directord's ``stats``."""

    connects: int = 0
    lost: int = 0
    topology_changes: int = 0
    last_error: str = ""


class _Conn:
    """One tracking connection: its socket, reader, and the replies it waits for."""

    __slots__ = ("address", "ping_sent", "rcvbuf", "reader", "replies", "sock")

    def __init__(self, address: str, sock: socket.socket) -> None:
        self.address = address
        self.sock = sock
        self.reader = RespReader()
        self.replies: deque[Reply] = deque()
        self.ping_sent: float | None = None
        self.rcvbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)


def parse_cluster_nodes(text: bytes) -> tuple[frozenset[str], tuple[tuple[str, str, str], ...]]:
    """``CLUSTER NODES``: the addresses of the nodes to track, and a fingerprint of the
    topology (address, role, slots of each node) that changes with any failover or slot
    move.  Nodes marked ``fail``, ``handshake`` or ``noaddr`` are left out."""
    wanted: set[str] = set()
    shape: list[tuple[str, str, str]] = []
    for line in text.decode("utf-8", "replace").splitlines():
        parts = line.split()
        if len(parts) < 8:
            continue
        address = parts[1].split("@", 1)[0]
        flags = set(parts[2].split(","))
        if flags & {"fail", "handshake", "noaddr"} or address.startswith(":"):
            continue
        role = "master" if "master" in flags else "replica"
        wanted.add(address)
        shape.append((address, role, " ".join(parts[8:])))
    return frozenset(wanted), tuple(sorted(shape))


class InvalidationTracker:
    """Keeps a :class:`LocationCache` exact while tracking connections are up.

    :param cache: the cache to invalidate (its ``usable`` is set here).
    :param seeds: ``host:port`` of cluster nodes to learn the topology from.
    :param prefix: the key prefix to track (``<redis_prefix>ixi:``).
    :param interval: seconds between heartbeats and topology checks.
    :param timeout: seconds a connection attempt or a heartbeat may take.
    """

    def __init__(self, cache: LocationCache, seeds: Sequence[str], prefix: str, *,
                 auth: RedisAuth = NO_REDIS_AUTH, interval: float = 0.5,
                 timeout: float = 2.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.cache = cache
        self.seeds = tuple(seeds)
        self.prefix = prefix
        self.auth = auth
        self.interval = interval
        self.timeout = timeout
        self.stats = TrackerStats()
        self._clock = clock
        self._conns: dict[str, _Conn] = {}
        self._by_fd: dict[int, _Conn] = {}
        self._poller = select.poll()
        self._wanted: frozenset[str] = frozenset()
        self._shape: tuple[tuple[str, str, str], ...] | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        #: Addresses whose last connection attempt failed (logged once).
        self._failing: set[str] = set()

    @property
    def connections(self) -> int:
        return len(self._conns)

    # -- the read path ----------------------------------------------------------------------

    def fresh(self) -> bool:
        """Read every invalidation waiting; True when the cache may be consulted now."""
        cache = self.cache
        if not cache.usable:
            return False
        by_fd = self._by_fd
        for fd, _events in self._poller.poll(0):
            conn = by_fd.get(fd)
            if conn is not None:
                self._pump(conn)
        if not cache.usable:
            return False
        return all(not conn.reader.pending for conn in self._conns.values())

    def _readable(self, conn: _Conn) -> None:
        if self._conns.get(conn.address) is conn:
            self._pump(conn)

    def _pump(self, conn: _Conn) -> None:
        """Read what ``conn`` has and act on every complete message."""
        total = 0
        while True:
            try:
                data = conn.sock.recv(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self._lose(conn, f"receive failed: {exc}")
                return
            if not data:
                self._lose(conn, "closed by the server")
                return
            total += len(data)
            try:
                conn.reader.feed(data)
            except RespProtocolError as exc:
                self._lose(conn, str(exc))
                return
            if len(data) < RECV_SIZE:
                break
        if total * 2 >= conn.rcvbuf:
            # The socket may have been full, with more behind it in Redis's buffer.
            self.cache.flush()
        self._handle(conn)

    def _handle(self, conn: _Conn) -> None:
        reader = conn.reader
        while True:
            try:
                message = reader.next()
            except (RespProtocolError, ValueError) as exc:
                self._lose(conn, f"unreadable reply: {exc}")
                return
            if message is NEED_DATA:
                return
            if isinstance(message, Push):
                self._push(message)
            elif conn.replies:
                conn.replies.popleft()(message)
            else:
                self._lose(conn, f"unexpected reply {message!r:.80}")
                return

    def _push(self, push: Push) -> None:
        items = push.items
        if len(items) < 2 or items[0] != b"invalidate":
            return
        keys = items[1]
        if keys is None:  # FLUSHALL / FLUSHDB: every key went
            self.cache.flush()
        elif isinstance(keys, tuple):
            self.cache.invalidate(k.decode("utf-8", "replace") for k in keys
                                  if isinstance(k, bytes))

    def _lose(self, conn: _Conn, why: str) -> None:
        """Drop a tracking connection: invalidations may be lost, so the cache goes."""
        if self._conns.get(conn.address) is not conn:
            return
        del self._conns[conn.address]
        fd = conn.sock.fileno()
        self._by_fd.pop(fd, None)
        with contextlib.suppress(KeyError, ValueError):
            self._poller.unregister(fd)
        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop().remove_reader(fd)
        conn.sock.close()
        self.stats.lost += 1
        self.stats.last_error = f"{conn.address}: {why}"
        self.cache.usable = False
        if not self._closing:
            log.warning("location cache off until tracking is back: %s: %s",
                        conn.address, why)

    # -- connections ----------------------------------------------------------------------

    async def _connect(self, address: str) -> None:
        loop = asyncio.get_running_loop()
        host, port = parse_hostport(address, "cluster.redis_nodes")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await asyncio.wait_for(loop.sock_connect(sock, (host, port)), self.timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            hello: list[str] = ["HELLO", "3"]
            if self.auth.password is not None:
                hello += ["AUTH", self.auth.username or "default", self.auth.password]
            hello += ["SETNAME", CLIENT_NAME]
            await loop.sock_sendall(sock, encode_command(*hello) + encode_command(
                "CLIENT", "TRACKING", "on", "BCAST", "PREFIX", self.prefix))
            conn = _Conn(address, sock)
            answers: list[object] = []
            conn.replies.extend([answers.append, answers.append])
            while len(answers) < 2:
                data = await asyncio.wait_for(loop.sock_recv(sock, RECV_SIZE), self.timeout)
                if not data:
                    raise ConnectionError("closed during the handshake")
                conn.reader.feed(data)
                while len(answers) < 2:
                    message = conn.reader.next()
                    if message is NEED_DATA:
                        break
                    if isinstance(message, Push):
                        continue  # before tracking was on: nothing of ours
                    conn.replies.popleft()(message)
            for answer in answers:
                if isinstance(answer, RespError):
                    raise ConnectionError(answer.message.decode("utf-8", "replace"))
            if answers[1] != b"OK":
                raise ConnectionError(f"CLIENT TRACKING answered {answers[1]!r}")
        except BaseException:
            sock.close()
            raise
        old = self._conns.get(address)
        if old is not None:
            self._lose(old, "replaced")
        self._conns[address] = conn
        self._by_fd[sock.fileno()] = conn
        self._poller.register(sock.fileno(), select.POLLIN)
        loop.add_reader(sock.fileno(), self._readable, conn)
        self.stats.connects += 1
        self._handle(conn)  # what arrived with the handshake's answers

    def _send(self, conn: _Conn, data: bytes, reply: Reply) -> None:
        try:
            sent = conn.sock.send(data)
        except OSError as exc:
            self._lose(conn, f"send failed: {exc}")
            return
        if sent != len(data):  # a few bytes on an idle socket: never short but when dead
            self._lose(conn, "send buffer full")
            return
        conn.replies.append(reply)

    # -- the supervisor -------------------------------------------------------------------

    async def start(self) -> None:
        """Connect to every node and start the heartbeat; the cache is usable once this
        returns (unless the cluster is changing: then within a few heartbeats)."""
        await self._tick()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def aclose(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for conn in list(self._conns.values()):
            self._lose(conn, "closing")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self._tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                self.cache.usable = False
                log.warning("location cache tracking: %s", self.stats.last_error)

    async def _tick(self) -> None:
        """Heartbeat every connection, check the topology, connect what is missing."""
        now = self._clock()
        for conn in list(self._conns.values()):
            if conn.ping_sent is not None:
                if now - conn.ping_sent > self.timeout:
                    self._lose(conn, f"no answer to PING within {self.timeout:.1f}s")
                continue
            conn.ping_sent = now

            def pong(_reply: object, conn: _Conn = conn) -> None:
                conn.ping_sent = None

            self._send(conn, encode_command("PING"), pong)
        topology = await self._topology()
        if topology is None:
            self.cache.usable = False
            return
        wanted, shape = topology
        if self._shape is not None and shape != self._shape:
            self.stats.topology_changes += 1
            log.info("location cache flushed: the cluster's topology changed")
            self.cache.flush()
        self._shape = shape
        self._wanted = wanted
        for address in sorted(set(self._conns) - wanted):
            self._lose(self._conns[address], "no longer in the cluster")
        missing = sorted(wanted - set(self._conns))
        if missing:
            self.cache.usable = False
            for address in missing:
                try:
                    await self._connect(address)
                except (TimeoutError, OSError, ConnectionError) as exc:
                    self._failed(address, exc)
                else:
                    self._failing.discard(address)
        self.cache.usable = bool(wanted) and wanted <= set(self._conns)

    def _failed(self, address: str, exc: BaseException) -> None:
        """A connection attempt failed: logged once until one to ``address`` succeeds
        (attempts repeat every heartbeat)."""
        self.stats.last_error = f"{address}: {exc or type(exc).__name__}"
        if address not in self._failing:
            self._failing.add(address)
            log.warning("location cache: tracking connection to %s failed (%s); the "
                        "cache is unused until it succeeds", address, self.stats.last_error)

    async def _topology(self) -> tuple[frozenset[str], tuple[tuple[str, str, str], ...]] | None:
        """``CLUSTER NODES`` from a tracked node (else a seed), parsed; None when no node
        answered."""
        loop = asyncio.get_running_loop()
        for conn in sorted(self._conns.values(), key=lambda c: c.address):
            fut: asyncio.Future[object] = loop.create_future()

            def got(reply: object, fut: asyncio.Future[object] = fut) -> None:
                if not fut.done():
                    fut.set_result(reply)

            self._send(conn, encode_command("CLUSTER", "NODES"), got)
            if self._conns.get(conn.address) is not conn:
                continue
            try:
                reply = await asyncio.wait_for(asyncio.shield(fut), self.timeout)
            except TimeoutError:
                self._lose(conn, f"no answer to CLUSTER NODES within {self.timeout:.1f}s")
                continue
            if isinstance(reply, bytes):
                return parse_cluster_nodes(reply)
        for seed in (*self._wanted, *self.seeds):
            if seed in self._conns:
                continue
            try:
                await self._connect(seed)
            except (TimeoutError, OSError, ConnectionError) as exc:
                self._failed(seed, exc)
                continue
            self._failing.discard(seed)
            return await self._topology()
        return None

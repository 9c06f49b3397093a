"""Load reports from an object server to Redis Cluster.

The key names are defined once in :mod:`runtime.nodekeys` (the director reads them).

Every ``report_interval`` seconds objstored writes (see docs/redis-schema.md, "Load reports
(written by objstored)")::

    <prefix>node:{<node_id>}:report   hash: identity, capacity, usage, ops/s by command
    <prefix>node:{<node_id>}:hot      sorted set: hottest keys, score = reads/s

where ``<prefix>`` is ``cluster.redis_prefix`` (``objmail:`` by default), both with a TTL of ``report_ttl`` seconds, so a node that stops reporting disappears and is
seen as down.  The hash tag ``{<node_id>}`` keeps one node's keys in one slot, which lets one
MULTI/EXEC replace both atomically.

*The node's number.*  With each report the node reads its own record in the directors'
registry (``<prefix>{reg}:node:<node_id>``: ``number`` and ``state``) and keeps the number
in its data directory (``on_number``); the report carries it (``number``).  When the
registry is lost (a FLUSHALL of the Redis masters), the node goes on reporting the
number it was given, and re-registering it (``objmail node add``, ``objmail index
rebuild``) gives it that number back, which the location index built from the nodes'
keys then uses.  A node whose record says ``removed`` forgets its number; one without a
record keeps it.

Serving never waits for Redis: the blocking redis-py cluster client runs in a worker thread
(``run_in_thread``, Twisted's ``deferToThread`` in production) and a failed report is retried
with exponential backoff while the server carries on.  What to report is decided by the pure
function :func:`build_report`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol

from twisted.internet import defer

from objstore.stats import OP_NAMES
from runtime.nodekeys import DEFAULT_PREFIX, hot_key, registry_key, report_key
from runtime.secrets import NO_REDIS_AUTH, RedisAuth

if TYPE_CHECKING:
    from runtime.metrics import JobRecorder

log = logging.getLogger(__name__)

#: Longest wait between two attempts while Redis is unreachable.
MAX_BACKOFF: Final = 60.0


@dataclass(frozen=True)
class Identity:
    """Who is reporting."""

    node_id: str
    address: str
    zone: str
    tier: str
    workers: int = 1
    version: str = ""


@dataclass(frozen=True)
class LoadSample:
    """Cumulative figures at one instant (counters only grow)."""

    at: float
    capacity_bytes: int
    used_bytes: int
    items: int
    ops: Sequence[int]  # cumulative count per OP_NAMES entry
    hot: Sequence[tuple[bytes, int]] = ()  # key -> reads since the last report
    extra: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Registration:
    """What the directors' registry records of this node."""

    number: int
    removed: bool = False


def build_report(identity: Identity, previous: LoadSample | None, current: LoadSample,
                 hot_keys: int, number: int = 0) -> tuple[dict[str, str], dict[bytes, float]]:
    """The hash fields and hot-key scores to write, from two consecutive samples.

    Rates are per second over the time between the samples (0 for the first report).

    :param number: the node's number in the registry, as last learned (0: none).
    """
    elapsed = current.at - previous.at if previous is not None else 0.0
    fields: dict[str, str] = {
        "node_id": identity.node_id,
        "addr": identity.address,
        "zone": identity.zone,
        "tier": identity.tier,
        "workers": str(identity.workers),
        "version": identity.version,
        "capacity_bytes": str(current.capacity_bytes),
        "used_bytes": str(current.used_bytes),
        "items": str(current.items),
        "reported_at": f"{current.at:.3f}",
        "interval": f"{elapsed:.3f}",
    }
    if number > 0:
        fields["number"] = str(number)
    total = 0.0
    for i, name in enumerate(OP_NAMES):
        rate = 0.0
        if previous is not None and elapsed > 0:
            rate = max(current.ops[i] - previous.ops[i], 0) / elapsed
        total += rate
        fields[f"ops_{name}"] = f"{rate:.1f}"
    fields["ops_per_sec"] = f"{total:.1f}"
    for name, value in sorted(current.extra.items()):
        fields[name] = str(value)
    hot: dict[bytes, float] = {}
    if elapsed > 0:
        for key, count in sorted(current.hot, key=lambda kv: kv[1], reverse=True)[:hot_keys]:
            hot[key] = round(count / elapsed, 1)
    return fields, hot


class ReportSink(Protocol):
    """Where reports go (Redis Cluster in production)."""

    def write(self, node_id: str, fields: dict[str, str], hot: dict[bytes, float],
              ttl: int) -> Registration | None:
        """Write one report; return the node's registry record (None: there is none)."""
        ...

    def close(self) -> None: ...


class RedisClusterSink:
    """Writes reports with redis-py's (blocking) cluster client; call from a thread.

    The client is created on first use and dropped after any error, so a cluster that was
    down or has moved is rediscovered on the next attempt.

    :param nodes: startup nodes as ``host:port`` strings.
    :param prefix: ``cluster.redis_prefix``, which keeps installations sharing one Redis
        Cluster apart.
    :param auth: ACL user, password and TLS for Redis (read by ``main()``).
    """

    def __init__(self, nodes: Sequence[str], timeout: float = 2.0,
                 prefix: str = DEFAULT_PREFIX, auth: RedisAuth = NO_REDIS_AUTH) -> None:
        self._nodes = list(nodes)
        self._timeout = timeout
        self._prefix = prefix
        self._auth = auth
        self._client: Any = None

    def _connect(self) -> Any:
        from redis.backoff import NoBackoff
        from redis.cluster import ClusterNode, RedisCluster
        from redis.retry import Retry

        startup = []
        for node in self._nodes:
            host, _, port = node.rpartition(":")
            startup.append(ClusterNode(host.strip("[]"), int(port)))
        # No retries inside redis-py: a failed report is retried by the scheduler.
        return RedisCluster(startup_nodes=startup, socket_timeout=self._timeout,
                            socket_connect_timeout=self._timeout,
                            retry=Retry(NoBackoff(), 0), **self._auth.client_kwargs())

    def write(self, node_id: str, fields: dict[str, str], hot: dict[bytes, float],
              ttl: int) -> Registration | None:
        if self._client is None:
            self._client = self._connect()
        try:
            rkey, hkey = report_key(node_id, self._prefix), hot_key(node_id, self._prefix)
            # Same hash tag, same slot: one MULTI/EXEC replaces the whole report.
            pipe = self._client.pipeline(transaction=True)
            pipe.delete(rkey, hkey)
            pipe.hset(rkey, mapping=fields)
            pipe.expire(rkey, ttl)
            if hot:
                pipe.zadd(hkey, hot)
                pipe.expire(hkey, ttl)
            pipe.execute()
            # Another slot than the report's: a command of its own.
            number, state = self._client.hmget(registry_key(node_id, self._prefix),
                                               "number", "state")
        except Exception:
            self.close()
            raise
        try:
            return Registration(int(number), removed=state == b"removed")
        except (TypeError, ValueError):
            return None  # not registered (or a damaged record: keep what we know)

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # closing a broken client may fail too; nothing to do
                log.debug("closing the Redis client failed", exc_info=True)


class LoadReporter:
    """Schedules reports: every ``interval`` seconds, with backoff while Redis fails.

    :param identity: the node.
    :param sample: returns the current :class:`LoadSample` (reactor thread).
    :param sink: where reports go; its ``write`` runs via ``run_in_thread``.
    :param clock: scheduler (a ``task.Clock`` in tests).
    :param run_in_thread: ``deferToThread`` or, in tests, a synchronous stand-in.
    :param recorder: the job metrics of the reports (``objstore_job_*{job="load_report"}``).
    :param number: the node's registry number kept from before (0: none), reported.
    :param on_number: called with the number when the registry says another one (0 when
        the node was removed): the caller keeps it (objstored, in its data directory).
    """

    def __init__(self, identity: Identity, sample: Callable[[], LoadSample], sink: ReportSink,
                 clock: Any, run_in_thread: Callable[..., defer.Deferred[Any]],
                 interval: float, ttl: int, hot_keys: int = 32,
                 on_report: Callable[[], None] | None = None,
                 recorder: JobRecorder | None = None, number: int = 0,
                 on_number: Callable[[int], None] | None = None) -> None:
        self.identity = identity
        self._sample = sample
        self._sink = sink
        self._clock = clock
        self._run = run_in_thread
        self.interval = interval
        self.ttl = ttl
        self.hot_keys = hot_keys
        self._on_report = on_report
        self._recorder = recorder
        self.number = number
        self._on_number = on_number
        self._previous: LoadSample | None = None
        self._call: Any = None
        self._busy = False
        self._stopped = True
        self.failures = 0
        self.reports = 0
        self.last_error = ""

    def start(self) -> None:
        self._stopped = False
        self._schedule(0)

    def stop(self) -> None:
        self._stopped = True
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _schedule(self, delay: float) -> None:
        if not self._stopped:
            self._call = self._clock.callLater(delay, self._tick)

    def _tick(self) -> None:
        self._call = None
        self.report_once().addBoth(self._after)

    def _after(self, ok: object) -> None:
        if ok is True:
            self._schedule(self.interval)
        else:
            # Back off, but retry well within the report's lifetime: once Redis is
            # back, the node must report before directors see it as down.
            cap = min(MAX_BACKOFF, max(self.interval, self.ttl / 3))
            delay = min(self.interval * 2 ** min(self.failures, 10), cap)
            self._schedule(max(delay, self.interval))

    def report_once(self) -> defer.Deferred[bool]:
        """Take a sample and write one report; fires True on success, False on failure."""
        if self._busy:
            return defer.succeed(False)
        current = self._sample()
        fields, hot = build_report(self.identity, self._previous, current, self.hot_keys,
                                   self.number)
        self._busy = True
        if self._recorder is not None:
            self._recorder.started()
        d = self._run(self._sink.write, self.identity.node_id, fields, hot, self.ttl)

        def ok(registration: Registration | None) -> bool:
            self._busy = False
            self._learn(registration)
            self._previous = current
            self.failures = 0
            self.reports += 1
            if self._recorder is not None:
                self._recorder.succeeded()
            if self._on_report is not None:
                self._on_report()
            return True

        def failed(reason: Any) -> bool:
            self._busy = False
            # The rates of the next report must span from the last *sent* sample, but the
            # hot-key counts restart: keep the sample so the interval stays consistent.
            self._previous = current
            self.failures += 1
            self.last_error = str(reason.value)
            if self._recorder is not None:
                self._recorder.failed()
            log.warning("load report to Redis failed (%d in a row): %s", self.failures,
                        reason.value)
            return False

        return d.addCallbacks(ok, failed)

    def _learn(self, registration: Registration | None) -> None:
        """Follow the registry's number for this node (none when it was removed); with no
        record at all (never added, or the registry was lost) keep the one we have."""
        if registration is None:
            return
        number = 0 if registration.removed else registration.number
        if number != self.number:
            log.info("node %s: registry number %d (was %d)", self.identity.node_id, number,
                     self.number)
            self.number = number
            if self._on_number is not None:
                self._on_number(number)


def wall_clock() -> float:
    return time.time()

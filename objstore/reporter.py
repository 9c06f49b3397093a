"""Load reports from an object server to Redis Cluster.

The key names are defined once in :mod:`runtime.nodekeys` (the director reads them).

Every ``report_interval`` seconds objstored writes (see docs/redis-schema.md, "Load reports
(written by objstored)")::

    <prefix>node:{<node_id>}:report   hash: identity, capacity, usage, filesystem free
                                      space, ops/s by command, CPU (process, host), disk
                                      I/O (bytes/s, latency, busy time), get/set p99
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

import contextlib
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

from twisted.internet import defer

from objstore.stats import OP_NAMES, quantile
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
    site: str = ""


@dataclass(frozen=True)
class DiskSpace:
    """What a node may hold, from its data dir's filesystem.

    :param capacity: ``objstore.capacity_bytes`` when set, else what the filesystem can
        hold for the node: the bytes the store occupies plus the filesystem's free bytes,
        capped by the LMDB map size (the store can never grow past it).
    :param fs_free: bytes free on the filesystem (for unprivileged writers).
    :param fs_total: the filesystem's size.
    """

    capacity: int
    fs_free: int
    fs_total: int


def disk_space(data_dir: str | os.PathLike[str], *, occupied: int, map_size: int,
               configured: int = 0) -> DiskSpace:
    """The :class:`DiskSpace` of a data dir (one ``statvfs``).

    :param occupied: bytes the store takes on the filesystem now (its LMDB file's pages).
    :param configured: ``objstore.capacity_bytes`` (0: from the filesystem).
    """
    st = os.statvfs(data_dir)
    free = st.f_bavail * st.f_frsize
    total = st.f_blocks * st.f_frsize
    capacity = configured if configured > 0 else min(map_size, occupied + free)
    return DiskSpace(capacity, free, total)


@dataclass(frozen=True)
class SystemCounters:
    """Cumulative CPU and I/O counters of the node's processes, its host and the data
    dir's block device, at one instant (read from /proc by :class:`ProcReader`).

    :param cpu_ticks: user + system clock ticks of the node's processes.
    :param host_busy: busy jiffies of the host (all CPUs); ``host_total`` all jiffies.
    :param io_read: bytes the node's processes read from storage (``/proc/<pid>/io``).
    :param disk: the device's /proc/diskstats figures, :data:`DISK_FIELDS` in order, or
        None when the data dir's device is not listed (tmpfs, overlay, btrfs...).
    """

    cpu_ticks: int = 0
    host_busy: int = 0
    host_total: int = 0
    io_read: int = 0
    io_write: int = 0
    disk: tuple[int, ...] | None = None
    ticks_per_second: int = 100


#: The /proc/diskstats fields kept (0-based after major, minor, name): reads completed,
#: sectors read, ms reading, writes completed, sectors written, ms writing, ms doing I/O.
DISK_FIELDS: Final = (0, 2, 3, 4, 6, 7, 9)
SECTOR: Final = 512


def parse_pid_stat(text: str) -> int:
    """utime + stime (clock ticks) from a ``/proc/<pid>/stat`` line (the command name,
    in parentheses, may hold blanks: fields are counted after its closing one)."""
    rest = text[text.rindex(")") + 2:].split()
    return int(rest[11]) + int(rest[12])


def parse_cpu_line(text: str) -> tuple[int, int]:
    """(busy, total) jiffies of the host from ``/proc/stat``'s first line (guest time is
    already in user time; idle includes iowait)."""
    values = [int(v) for v in text.split("\n", 1)[0].split()[1:9]]
    values += [0] * (8 - len(values))
    total = sum(values)
    return total - values[3] - values[4], total


def parse_pid_io(text: str) -> tuple[int, int]:
    """(read_bytes, write_bytes) from ``/proc/<pid>/io``."""
    fields = dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)
    return int(fields.get("read_bytes", 0)), int(fields.get("write_bytes", 0))


def parse_diskstats(text: str, major: int, minor: int) -> tuple[int, ...] | None:
    """The :data:`DISK_FIELDS` of device ``major:minor`` in ``/proc/diskstats``."""
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 14 and parts[0] == str(major) and parts[1] == str(minor):
            values = parts[3:]
            return tuple(int(values[i]) for i in DISK_FIELDS)
    return None


class ProcReader:
    """Reads :class:`SystemCounters` from /proc (Linux); anything unreadable counts as 0,
    so a report never fails for want of a figure.

    :param data_dir: whose block device's figures are read.
    :param proc: the proc filesystem (a directory of fixture files in tests).
    """

    def __init__(self, data_dir: str | os.PathLike[str], proc: str | os.PathLike[str] = "/proc"
                 ) -> None:
        self.proc = Path(proc)
        try:
            dev = os.stat(data_dir).st_dev
            self.device: tuple[int, int] | None = (os.major(dev), os.minor(dev))
        except OSError:
            self.device = None
        try:
            self.ticks = os.sysconf("SC_CLK_TCK")
        except (ValueError, OSError):
            self.ticks = 100

    def _read(self, *parts: str) -> str | None:
        try:
            return self.proc.joinpath(*parts).read_text()
        except OSError:
            return None

    def read(self, pids: Sequence[int]) -> SystemCounters:
        """The counters now, for the node's processes ``pids``."""
        ticks = io_read = io_write = 0
        for pid in pids:
            stat = self._read(str(pid), "stat")
            if stat is not None:
                with contextlib.suppress(ValueError, IndexError):
                    ticks += parse_pid_stat(stat)
            io = self._read(str(pid), "io")
            if io is not None:
                with contextlib.suppress(ValueError):
                    r, w = parse_pid_io(io)
                    io_read += r
                    io_write += w
        busy = total = 0
        host = self._read("stat")
        if host is not None:
            with contextlib.suppress(ValueError):
                busy, total = parse_cpu_line(host)
        disk = None
        stats = self._read("diskstats") if self.device is not None else None
        if stats is not None and self.device is not None:
            with contextlib.suppress(ValueError, IndexError):
                disk = parse_diskstats(stats, *self.device)
        return SystemCounters(ticks, busy, total, io_read, io_write, disk, self.ticks)


def system_rates(before: SystemCounters, after: SystemCounters, elapsed: float
                 ) -> dict[str, float]:
    """CPU and I/O figures over ``elapsed`` seconds between two readings (the
    :class:`director.nodes.LoadReport` fields of the same names)."""
    if elapsed <= 0:
        return {}

    def delta(a: int, b: int) -> int:
        return max(a - b, 0)  # a restarted process or device resets its counters

    host = delta(after.host_total, before.host_total)
    out = {
        "cpu_process": delta(after.cpu_ticks, before.cpu_ticks) / after.ticks_per_second
        / elapsed,
        "cpu_host": delta(after.host_busy, before.host_busy) / host if host else 0.0,
        "io_read_bps": delta(after.io_read, before.io_read) / elapsed,
        "io_write_bps": delta(after.io_write, before.io_write) / elapsed,
    }
    if after.disk is not None and before.disk is not None:
        d = [delta(a, b) for a, b in zip(after.disk, before.disk, strict=True)]
        reads, sectors_read, ms_read, writes, sectors_written, ms_written, ms_busy = d
        out.update({
            "disk_read_bps": sectors_read * SECTOR / elapsed,
            "disk_write_bps": sectors_written * SECTOR / elapsed,
            "disk_read_ms": ms_read / reads if reads else 0.0,
            "disk_write_ms": ms_written / writes if writes else 0.0,
            "disk_util": min(1.0, ms_busy / (elapsed * 1000)),
        })
    return out


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
    #: Free bytes of the data dir's filesystem (-1: unknown).
    fs_free_bytes: int = -1
    system: SystemCounters | None = None
    #: Latency histograms by name (``get``, ``set``, ``commit``): their bucket bounds
    #: (seconds) and cumulative counts (one more than the bounds: +Inf).
    latency: Mapping[str, tuple[Sequence[float], Sequence[int]]] = field(default_factory=dict)


@dataclass(frozen=True)
class Registration:
    """What the directors' registry records of this node."""

    number: int
    removed: bool = False


def build_report(identity: Identity, previous: LoadSample | None, current: LoadSample,
                 hot_keys: int, number: int = 0, *, interval: float = 0.0,
                 ttl: float = 0.0) -> tuple[dict[str, str], dict[bytes, float]]:
    """The hash fields and hot-key scores to write, from two consecutive samples.

    Rates are per second over the time between the samples (0 for the first report).

    :param number: the node's number in the registry, as last learned (0: none).
    :param interval: seconds between reports, and ``ttl`` their lifetime: written so
        that directors see a late report (``director.nodes.LoadReport.stale``).
    """
    elapsed = current.at - previous.at if previous is not None else 0.0
    fields: dict[str, str] = {
        "node_id": identity.node_id,
        "addr": identity.address,
        "zone": identity.zone,
        "site": identity.site,
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
    if interval > 0:
        fields["report_interval"] = f"{interval:g}"
        fields["report_ttl"] = f"{ttl:g}"
    if current.fs_free_bytes >= 0:
        fields["fs_free_bytes"] = str(current.fs_free_bytes)
    total = 0.0
    for i, name in enumerate(OP_NAMES):
        rate = 0.0
        if previous is not None and elapsed > 0:
            rate = max(current.ops[i] - previous.ops[i], 0) / elapsed
        total += rate
        fields[f"ops_{name}"] = f"{rate:.1f}"
    fields["ops_per_sec"] = f"{total:.1f}"
    if previous is not None and previous.system is not None and current.system is not None:
        for name, value in system_rates(previous.system, current.system, elapsed).items():
            fields[name] = f"{value:.3f}" if value < 100 else f"{value:.0f}"
    if previous is not None:
        for name, (bounds, counts) in current.latency.items():
            before = previous.latency.get(name)
            if before is not None:
                p99 = quantile(bounds, before[1], counts, 0.99)
                fields[f"{name}_p99_ms"] = f"{p99 * 1000:g}"
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
                                   self.number, interval=self.interval, ttl=self.ttl)
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

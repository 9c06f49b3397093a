"""Counters of one object server: memcached's stats, ops by command, hottest keys.

:class:`Counters` is what the handler and the protocol increment (plain attributes: the hot
path pays one attribute add).  With ``--workers N`` every worker also publishes its counters
and hottest keys into its slot of a small memory-mapped file in the data directory
(:class:`SharedSlots`), so ``stats`` on any worker and the load report of worker 0 show the
whole node.  Publishing happens every second; another worker's figures may lag that much.
"""

from __future__ import annotations

import bisect
import mmap
import os
import random
import struct
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Final

#: memcached's counters (same names, same meaning), then ours.
COUNTER_NAMES: Final = (
    "cmd_get", "cmd_set", "cmd_flush", "cmd_touch", "cmd_meta",
    "get_hits", "get_misses", "get_expired", "get_flushed",
    "delete_misses", "delete_hits", "incr_misses", "incr_hits", "decr_misses", "decr_hits",
    "cas_misses", "cas_hits", "cas_badval", "touch_hits", "touch_misses",
    "store_too_large", "store_no_memory",
    "bytes_read", "bytes_written",
    "curr_connections", "total_connections", "rejected_connections",
    "corrupt_reads", "slow_readers_dropped", "idle_dropped",
    "auth_cmds", "auth_errors",
)

#: Commands whose rate the load report gives (``ops_<name>``); others count as ``other``.
OP_NAMES: Final = (
    "get", "gets", "gat", "gats", "set", "add", "replace", "append", "prepend", "cas",
    "delete", "incr", "decr", "touch", "mg", "ms", "md", "ma", "mn", "me",
    "stats", "flush_all", "version", "verbosity", "metadump", "other",
)
OP_INDEX: Final = {name.encode(): i for i, name in enumerate(OP_NAMES)}
OTHER: Final = OP_INDEX[b"other"]

#: Upper bounds (seconds) of the commit-time histogram (one write transaction's commit,
#: fdatasync included); +Inf is implied.
COMMIT_BUCKETS: Final = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)
_COMMIT_BUCKET_NAMES: Final = tuple(f"commit_bucket_{i}" for i in range(len(COMMIT_BUCKETS) + 1))
#: The store's own counts (kept by the store, :class:`~objstore.items.BaseStore`, in its commit
#: thread), shared between workers after the counters and the ops: commits, ops committed,
#: expired items deleted, commit time (microseconds), then the commit-time buckets.
STORE_NAMES: Final = ("commits", "committed_ops", "reclaimed", "commit_microseconds",
                      *_COMMIT_BUCKET_NAMES)

#: Upper bounds (seconds) of the sampled request-latency histograms (a get's service time:
#: the store lookup and the reply, page faults included; a set's time to its durable
#: reply, group commit included); +Inf is implied.
LATENCY_BUCKETS: Final = (0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05,
                          0.1, 0.25, 1.0)
#: Request kinds with a latency histogram, in the order of :data:`LATENCY_NAMES`.
LATENCY_KINDS: Final = ("get", "set")
GET: Final = 0
SET: Final = 1
LATENCY_NAMES: Final = tuple(f"{kind}_latency_bucket_{i}" for kind in LATENCY_KINDS
                             for i in range(len(LATENCY_BUCKETS) + 1))
#: Requests timed: one in this many, on average.
LATENCY_SAMPLE: Final = 16


def count_commit(counts: dict[str, int], seconds: float, ops: int) -> None:
    """Count one committed write transaction of ``ops`` ops that took ``seconds`` to
    commit, into the store's counts (a ``collections.Counter``)."""
    counts["commits"] += 1
    counts["committed_ops"] += ops
    counts["commit_microseconds"] += int(seconds * 1e6)
    counts[_COMMIT_BUCKET_NAMES[bisect.bisect_left(COMMIT_BUCKETS, seconds)]] += 1


class Counters:
    """Counters of this process.  ``ops[i]`` counts commands named ``OP_NAMES[i]``."""

    __slots__ = (*COUNTER_NAMES, "latency", "ops", "store")
    cmd_get: int
    cmd_set: int
    cmd_flush: int
    cmd_touch: int
    cmd_meta: int
    get_hits: int
    get_misses: int
    get_expired: int
    get_flushed: int
    delete_misses: int
    delete_hits: int
    incr_misses: int
    incr_hits: int
    decr_misses: int
    decr_hits: int
    cas_misses: int
    cas_hits: int
    cas_badval: int
    touch_hits: int
    touch_misses: int
    store_too_large: int
    store_no_memory: int
    bytes_read: int
    bytes_written: int
    curr_connections: int
    total_connections: int
    rejected_connections: int
    corrupt_reads: int
    slow_readers_dropped: int
    idle_dropped: int
    auth_cmds: int
    auth_errors: int
    ops: list[int]
    #: The store's counts (STORE_NAMES), copied from it by :meth:`sync_store`.
    store: list[int]
    #: Sampled request latencies (LATENCY_NAMES), counted by :class:`LatencySampler`.
    latency: list[int]

    def __init__(self) -> None:
        for name in COUNTER_NAMES:
            setattr(self, name, 0)
        self.ops = [0] * len(OP_NAMES)
        self.store = [0] * len(STORE_NAMES)
        self.latency = [0] * len(LATENCY_NAMES)

    def snapshot(self) -> list[int]:
        """All values in a fixed order: COUNTER_NAMES, OP_NAMES, STORE_NAMES,
        LATENCY_NAMES."""
        return [getattr(self, n) for n in COUNTER_NAMES] + self.ops + self.store + \
            self.latency

    def sync_store(self, counts: dict[str, int]) -> None:
        """Copy the store's counts (its ``counters``) for sharing."""
        self.store = [counts.get(name, 0) for name in STORE_NAMES]

    def reset(self) -> None:
        """``stats reset``: zero everything but the gauges."""
        keep = self.curr_connections
        for name in COUNTER_NAMES:
            setattr(self, name, 0)
        self.ops = [0] * len(OP_NAMES)
        self.latency = [0] * len(LATENCY_NAMES)
        self.curr_connections = keep


def connection_rows(connections: Iterable[tuple[str, str, int]]
                    ) -> tuple[tuple[bytes, bytes], ...]:
    """``stats conns``: memcached's lines for each ``(peer, local address, idle
    seconds)``."""
    rows: list[tuple[bytes, bytes]] = []
    for n, (peer, listen, idle) in enumerate(connections):
        rows += [(b"%d:addr" % n, b"tcp:" + peer.encode()),
                 (b"%d:listen_addr" % n, b"tcp:" + listen.encode()),
                 (b"%d:state" % n, b"conn_parse_cmd"),
                 (b"%d:secs_since_last_cmd" % n, b"%d" % idle)]
    return tuple(rows)


def totals(snapshots: Iterable[Sequence[int]]) -> dict[str, int]:
    """Sum snapshots from several workers into ``{name: value}`` (ops as ``ops_<name>``)."""
    names = [*COUNTER_NAMES, *(f"ops_{n}" for n in OP_NAMES), *STORE_NAMES, *LATENCY_NAMES]
    sums = [0] * len(names)
    for snap in snapshots:
        for i, v in enumerate(snap):
            sums[i] += v
    return dict(zip(names, sums, strict=True))


def histogram(figures: Mapping[str, int], prefix: str, buckets: int) -> list[int]:
    """The counts of one histogram (``<prefix>0`` .. ``<prefix><buckets>``) from
    :func:`totals`' figures."""
    return [figures.get(f"{prefix}{i}", 0) for i in range(buckets + 1)]


def quantile(bounds: Sequence[float], before: Sequence[int], after: Sequence[int],
             q: float) -> float:
    """The ``q`` quantile (0..1) of what a cumulative histogram counted between two
    readings: the upper bound of the bucket holding it (the last bound for the +Inf
    bucket), 0.0 when nothing was counted."""
    deltas = [max(a - b, 0) for a, b in zip(after, before, strict=True)]
    total = sum(deltas)
    if not total:
        return 0.0
    rank = q * total
    seen = 0
    for i, count in enumerate(deltas):
        seen += count
        if seen >= rank:
            return bounds[min(i, len(bounds) - 1)]
    return bounds[-1]


class LatencySampler:
    """Times one request in :data:`LATENCY_SAMPLE` (on average) into ``counters.latency``.

    The hot path pays one decrement (:meth:`due`); the gap to the next timed request is
    drawn at random so a client's regular pattern cannot hide its slow requests.
    """

    __slots__ = ("_countdown", "_rng", "counters", "sample")

    def __init__(self, counters: Counters, sample: int = LATENCY_SAMPLE,
                 rng: random.Random | None = None) -> None:
        self.counters = counters
        self.sample = sample
        self._rng = rng or random.Random()
        self._countdown = self._gap()

    def _gap(self) -> int:
        return self._rng.randint(1, 2 * self.sample - 1) if self.sample > 1 else 1

    def due(self) -> bool:
        """True when the next request is to be timed."""
        self._countdown -= 1
        if self._countdown:
            return False
        self._countdown = self._gap()
        return True

    def record(self, kind: int, seconds: float) -> None:
        """Count one timed request of ``kind`` (:data:`GET` or :data:`SET`)."""
        offset = kind * (len(LATENCY_BUCKETS) + 1)
        self.counters.latency[offset + bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1


class HotKeys:
    """Approximate hottest keys by sampled counting with a bounded table.

    One read in ``sample`` on average is counted (so the hot path mostly pays a
    decrement); the gap to the next counted read is drawn at random, because a fixed
    stride would count only some keys of a client that cycles through a few of them.
    When the table is full the colder half is dropped (a coarse space-saving sketch).

    :param capacity: most keys tracked.
    :param sample: count one read in this many, on average.
    :param rng: randomness (seeded in tests).
    """

    __slots__ = ("_countdown", "_rng", "capacity", "counts", "sample")

    def __init__(self, capacity: int = 1024, sample: int = 8,
                 rng: random.Random | None = None) -> None:
        self.capacity = capacity
        self.sample = sample
        self.counts: dict[bytes, int] = {}
        self._rng = rng or random.Random()
        self._countdown = self._gap()

    def _gap(self) -> int:
        # Uniform over 1 .. 2*sample-1: mean ``sample``, so each count weighs ``sample``.
        return self._rng.randint(1, 2 * self.sample - 1) if self.sample > 1 else 1

    def hit(self, key: bytes) -> None:
        self._countdown -= 1
        if self._countdown:
            return
        self._countdown = self._gap()
        counts = self.counts
        counts[key] = counts.get(key, 0) + self.sample
        if len(counts) > self.capacity:
            keep = sorted(counts.items(), key=lambda kv: kv[1], reverse=True)
            self.counts = dict(keep[: self.capacity // 2])

    def top(self, n: int) -> list[tuple[bytes, int]]:
        """The ``n`` hottest keys with their estimated read counts, hottest first."""
        return sorted(self.counts.items(), key=lambda kv: kv[1], reverse=True)[:n]

    def clear(self) -> None:
        self.counts = {}


# -- sharing between worker processes ---------------------------------------------------

_NUMBERS: Final = len(COUNTER_NAMES) + len(OP_NAMES) + len(STORE_NAMES) + len(LATENCY_NAMES)
_HOT_BYTES: Final = 16 * 1024
# slot: <Q sequence><Q pid><numbers * Q><I hot length><hot bytes>
_SLOT_HEAD: Final = struct.Struct(f"<QQ{_NUMBERS}QI")
SLOT_SIZE: Final = _SLOT_HEAD.size + _HOT_BYTES


def _encode_hot(items: Sequence[tuple[bytes, int]]) -> bytes:
    out = bytearray()
    for key, count in items:
        entry = struct.pack("<BQ", len(key), count) + key
        if len(out) + len(entry) > _HOT_BYTES:
            break
        out += entry
    return bytes(out)


def _decode_hot(data: bytes) -> list[tuple[bytes, int]]:
    out = []
    i = 0
    while i + 9 <= len(data):
        n, count = struct.unpack_from("<BQ", data, i)
        i += 9
        out.append((data[i:i + n], count))
        i += n
    return out


class SharedSlots:
    """A file of one slot per worker holding its latest counters and hot keys.

    Writers are single (each worker owns its slot); readers retry while a slot's sequence
    number is odd or changes under them (a seqlock), so they never see a torn slot.

    :param path: the file (created and sized on first use).
    :param workers: number of slots.
    :param index: this worker's slot.
    """

    def __init__(self, path: str | Path, workers: int, index: int) -> None:
        self.workers = workers
        self.index = index
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            size = SLOT_SIZE * workers
            if os.fstat(fd).st_size < size:
                os.ftruncate(fd, size)
            self._map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self._seq = 0

    def publish(self, numbers: Sequence[int], hot: Sequence[tuple[bytes, int]]) -> None:
        offset = self.index * SLOT_SIZE
        hot_bytes = _encode_hot(hot)
        self._seq += 1  # odd: write in progress
        struct.pack_into("<Q", self._map, offset, self._seq)
        _SLOT_HEAD.pack_into(self._map, offset, self._seq, os.getpid(), *numbers, len(hot_bytes))
        self._map[offset + _SLOT_HEAD.size: offset + _SLOT_HEAD.size + len(hot_bytes)] = hot_bytes
        self._seq += 1
        struct.pack_into("<Q", self._map, offset, self._seq)

    def read(self, index: int) -> tuple[list[int], list[tuple[bytes, int]]] | None:
        """Another worker's last published slot, or None if it never published."""
        offset = index * SLOT_SIZE
        for _ in range(100):
            seq1 = struct.unpack_from("<Q", self._map, offset)[0]
            if seq1 == 0:
                return None
            if seq1 % 2:
                continue
            head = _SLOT_HEAD.unpack_from(self._map, offset)
            hot_len = head[-1]
            start = offset + _SLOT_HEAD.size
            hot = bytes(self._map[start:start + min(hot_len, _HOT_BYTES)])
            if struct.unpack_from("<Q", self._map, offset)[0] == seq1:
                return list(head[2:-1]), _decode_hot(hot)
        return None

    def pids(self) -> list[int]:
        """The process ids of the other workers that have published (for their CPU and
        I/O figures)."""
        out = []
        for i in range(self.workers):
            if i != self.index:
                pid = struct.unpack_from("<Q", self._map, i * SLOT_SIZE + 8)[0]
                if pid:
                    out.append(pid)
        return out

    def others(self) -> list[tuple[list[int], list[tuple[bytes, int]]]]:
        out = []
        for i in range(self.workers):
            if i != self.index:
                slot = self.read(i)
                if slot is not None:
                    out.append(slot)
        return out

    def close(self) -> None:
        self._map.close()

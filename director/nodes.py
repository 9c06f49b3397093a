"""What the director knows about an object server: its registry record and last report.

Pure data shared by placement (which must not import Redis) and the registry (which
reads and writes it).  A node's *admin state* is what an operator set (``active``,
``draining``, ``dead``, ``removed``); its effective :attr:`Node.state` also says ``down``
when its load report has expired or is late (:attr:`LoadReport.stale`: more than
:data:`STALE_INTERVALS` report intervals old, so a killed node is suspect within seconds,
not after the report's whole TTL) and ``new`` when it reports but was never added.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

#: A report older than this many of its node's report intervals is late: the node is
#: taken for down (suspect) before the report's TTL ends.
STALE_INTERVALS: Final = 3.0
#: ...plus this many seconds of slack for a busy reporter or a slow Redis write.
STALE_SLACK: Final = 2.0
#: The site of a node registered without one (before sites existed): an upgraded
#: installation is one site.
DEFAULT_SITE: Final = "default"


class NodeState(enum.StrEnum):
    """Effective state of an object server, as placement and ``objmail node list`` see it."""

    #: Takes new blobs and serves reads.
    ACTIVE = "active"
    #: Serves reads, takes no new blobs; the directors move its blobs away.
    DRAINING = "draining"
    #: Registered, but no live load report: neither written to nor preferred for reads.
    DOWN = "down"
    #: Declared gone by ``objmail node dead``: its copies are lost at once (repair replaces
    #: them without waiting for ``repair_down_grace``); never written to, read only as a
    #: last resort.
    DEAD = "dead"
    #: Taken out by ``objmail node remove``; its number is never handed out again.
    REMOVED = "removed"
    #: Reports to Redis but was never added with ``objmail node add``: gets no blobs.
    NEW = "new"


#: States an operator can set; ``down`` and ``new`` are only ever derived.
ADMIN_STATES = frozenset({NodeState.ACTIVE, NodeState.DRAINING, NodeState.DEAD,
                          NodeState.REMOVED})


@dataclass(frozen=True)
class LoadReport:
    """An object server's latest report (written by ``objstore.reporter``).

    The load figures after ``hot_keys`` are rates over the node's last report interval;
    a report from an older objstored lacks them (0, or -1 where 0 would mean something).
    """

    node_id: str
    address: str
    zone: str
    tier: str
    #: What the node may hold: ``objstore.capacity_bytes``, else its data dir's
    #: filesystem (used + free, capped by the LMDB map size).
    capacity_bytes: int
    used_bytes: int
    items: int
    ops_per_sec: float
    #: Unix time the report was written.
    reported_at: float
    hot_keys: tuple[str, ...] = ()
    #: The registry number the node was given and keeps in its data dir (0: none), so
    #: that re-registering it after the registry was lost gives it the same one.
    number: int = 0
    #: Free bytes of the data dir's filesystem (-1: not reported).
    fs_free_bytes: int = -1
    #: CPU the object server's processes used, in cores (1.0 = one core busy).
    cpu_process: float = 0.0
    #: Fraction of the host's CPU time that was busy (0..1).
    cpu_host: float = 0.0
    #: Bytes/s the object server's processes read from and wrote to storage.
    io_read_bps: float = 0.0
    io_write_bps: float = 0.0
    #: The data dir's block device: bytes/s, mean milliseconds per request, and the
    #: fraction of time it was busy (all 0 when the device could not be found).
    disk_read_bps: float = 0.0
    disk_write_bps: float = 0.0
    disk_read_ms: float = 0.0
    disk_write_ms: float = 0.0
    disk_util: float = 0.0
    #: 99th percentile of sampled get and set latency, and of commit time (ms).
    get_p99_ms: float = 0.0
    set_p99_ms: float = 0.0
    commit_p99_ms: float = 0.0
    #: Seconds between the node's reports and their TTL (0: not reported).
    report_interval: float = 0.0
    report_ttl: float = 0.0
    #: Seconds since the report was written, as Redis counts them (from its TTL; no
    #: clock comparison between hosts), when the registry read it.
    age: float = 0.0
    #: The site the object server says it is in ("" from an older objstored).
    site: str = ""

    @property
    def stale(self) -> bool:
        """The next report is overdue: the node is suspect (seen as down)."""
        return self.report_interval > 0 and \
            self.age > STALE_INTERVALS * self.report_interval + STALE_SLACK

    @property
    def io_bps(self) -> float:
        """The object server's own storage I/O, bytes/s read and written."""
        return self.io_read_bps + self.io_write_bps

    @property
    def free_bytes(self) -> int:
        free = max(0, self.capacity_bytes - self.used_bytes)
        # A configured capacity may promise more than the filesystem still has.
        return min(free, self.fs_free_bytes) if self.fs_free_bytes >= 0 else free

    @property
    def free_fraction(self) -> float:
        if self.capacity_bytes <= 0:
            return 0.0
        return self.free_bytes / self.capacity_bytes


@dataclass(frozen=True)
class Node:
    """One object server: registry record plus its live report, if any.

    :param number: small integer the location index stores instead of the id
        (from 1; 0 for a ``new`` node that was never added).
    :param report: the latest unexpired load report, or None.
    """

    id: str
    number: int
    address: str
    zone: str
    tier: str
    weight: float
    admin_state: NodeState
    report: LoadReport | None = None
    #: Unix time the node was added (0 when never added).
    added_at: float = 0.0
    #: The failure domain above the zone (a building, a region): see director.sites.
    site: str = DEFAULT_SITE

    @property
    def state(self) -> NodeState:
        if self.admin_state is NodeState.REMOVED:
            return NodeState.REMOVED
        if self.number == 0:
            return NodeState.NEW
        if self.admin_state is NodeState.DEAD:
            return NodeState.DEAD
        if self.report is None or self.report.stale:
            return NodeState.DOWN
        return self.admin_state

    @property
    def readable(self) -> bool:
        """True when reads may be sent here (it is up, even if draining)."""
        return self.state in (NodeState.ACTIVE, NodeState.DRAINING)


def parse_report(fields: dict[bytes, bytes] | dict[str, str], *,
                 ttl_left: float | None = None) -> LoadReport | None:
    """A :class:`LoadReport` from the report hash objstored writes, or None if it is
    not one (missing or malformed fields: such a node counts as not reporting).

    :param ttl_left: seconds the report key still lives (Redis ``PTTL``), which gives
        the report's :attr:`~LoadReport.age` when the report names its TTL.
    """
    text = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes)
                                                          else v)
            for k, v in fields.items()}
    try:
        def num(name: str) -> float:
            return float(text.get(name, "0"))

        ttl = num("report_ttl")
        age = max(0.0, ttl - ttl_left) if ttl > 0 and ttl_left is not None \
            and ttl_left >= 0 else 0.0
        return LoadReport(
            node_id=text["node_id"], address=text["addr"], zone=text.get("zone", ""),
            tier=text.get("tier", ""), capacity_bytes=int(text["capacity_bytes"]),
            used_bytes=int(text["used_bytes"]), items=int(text.get("items", "0")),
            ops_per_sec=num("ops_per_sec"), reported_at=float(text["reported_at"]),
            number=int(text.get("number", "0")),
            fs_free_bytes=int(text.get("fs_free_bytes", "-1")),
            cpu_process=num("cpu_process"), cpu_host=num("cpu_host"),
            io_read_bps=num("io_read_bps"), io_write_bps=num("io_write_bps"),
            disk_read_bps=num("disk_read_bps"), disk_write_bps=num("disk_write_bps"),
            disk_read_ms=num("disk_read_ms"), disk_write_ms=num("disk_write_ms"),
            disk_util=num("disk_util"), get_p99_ms=num("get_p99_ms"),
            set_p99_ms=num("set_p99_ms"), commit_p99_ms=num("commit_p99_ms"),
            report_interval=num("report_interval"), report_ttl=ttl, age=age,
            site=text.get("site", ""))
    except (KeyError, ValueError):
        return None

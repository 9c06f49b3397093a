"""What the director knows about an object server: its registry record and last report.

Pure data shared by placement (which must not import Redis) and the registry (which
reads and writes it).  A node's *admin state* is what an operator set (``active``,
``draining``, ``removed``); its effective :attr:`Node.state` also says ``down`` when
its load report has expired and ``new`` when it reports but was never added.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class NodeState(enum.StrEnum):
    """Effective state of an object server, as placement and ``objmail node list`` see it."""

    #: Takes new blobs and serves reads.
    ACTIVE = "active"
    #: Serves reads, takes no new blobs; the directors move its blobs away.
    DRAINING = "draining"
    #: Registered, but no live load report: neither written to nor preferred for reads.
    DOWN = "down"
    #: Taken out by ``objmail node remove``; its number is never handed out again.
    REMOVED = "removed"
    #: Reports to Redis but was never added with ``objmail node add``: gets no blobs.
    NEW = "new"


#: States an operator can set; ``down`` and ``new`` are only ever derived.
ADMIN_STATES = frozenset({NodeState.ACTIVE, NodeState.DRAINING, NodeState.REMOVED})


@dataclass(frozen=True)
class LoadReport:
    """An object server's latest report (written by ``objstore.reporter``)."""

    node_id: str
    address: str
    zone: str
    tier: str
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

    @property
    def free_bytes(self) -> int:
        return max(0, self.capacity_bytes - self.used_bytes)

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

    @property
    def state(self) -> NodeState:
        if self.admin_state is NodeState.REMOVED:
            return NodeState.REMOVED
        if self.number == 0:
            return NodeState.NEW
        if self.report is None:
            return NodeState.DOWN
        return self.admin_state

    @property
    def readable(self) -> bool:
        """True when reads may be sent here (it is up, even if draining)."""
        return self.state in (NodeState.ACTIVE, NodeState.DRAINING)


def parse_report(fields: dict[bytes, bytes] | dict[str, str]) -> LoadReport | None:
    """A :class:`LoadReport` from the report hash objstored writes, or None if it is
    not one (missing or malformed fields: such a node counts as not reporting)."""
    text = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes)
                                                          else v)
            for k, v in fields.items()}
    try:
        return LoadReport(
            node_id=text["node_id"], address=text["addr"], zone=text.get("zone", ""),
            tier=text.get("tier", ""), capacity_bytes=int(text["capacity_bytes"]),
            used_bytes=int(text["used_bytes"]), items=int(text.get("items", "0")),
            ops_per_sec=float(text.get("ops_per_sec", "0")),
            reported_at=float(text["reported_at"]), number=int(text.get("number", "0")))
    except (KeyError, ValueError):
        return None

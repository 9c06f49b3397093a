"""Unit tests of node records: effective state and reading objstored's load report."""

from __future__ import annotations

import dataclasses

import pytest

from director.nodes import LoadReport, Node, NodeState, parse_report
from objstore.reporter import Identity, LoadSample, SystemCounters, build_report
from objstore.stats import OP_NAMES


def report(node_id: str = "n1") -> LoadReport:
    return LoadReport(node_id=node_id, address="h:1", zone="a", tier="ssd",
                      capacity_bytes=100, used_bytes=25, items=3, ops_per_sec=1.0,
                      reported_at=5.0)


def node(admin: NodeState, *, number: int = 1, live: bool = True) -> Node:
    return Node(id="n1", number=number, address="h:1", zone="a", tier="ssd", weight=1.0,
                admin_state=admin, report=report() if live else None)


@pytest.mark.parametrize(("admin", "number", "live", "state"), [
    (NodeState.ACTIVE, 1, True, NodeState.ACTIVE),
    (NodeState.DRAINING, 1, True, NodeState.DRAINING),
    (NodeState.ACTIVE, 1, False, NodeState.DOWN),
    (NodeState.DRAINING, 1, False, NodeState.DOWN),
    (NodeState.DEAD, 1, True, NodeState.DEAD),
    (NodeState.DEAD, 1, False, NodeState.DEAD),
    (NodeState.REMOVED, 1, True, NodeState.REMOVED),
    (NodeState.REMOVED, 1, False, NodeState.REMOVED),
    (NodeState.NEW, 0, True, NodeState.NEW),
])
def test_effective_state(admin: NodeState, number: int, live: bool, state: NodeState) -> None:
    """A node without a live report is down; dead is dead whatever it reports; removed
    wins; unnumbered is new."""
    n = node(admin, number=number, live=live)
    assert n.state is state
    assert n.readable == (state in (NodeState.ACTIVE, NodeState.DRAINING))


def test_free_space_figures() -> None:
    """Free bytes and fraction come from capacity minus used, never negative."""
    r = report()
    assert (r.free_bytes, r.free_fraction) == (75, 0.75)
    full = LoadReport("n", "h:1", "a", "ssd", 100, 150, 0, 0.0, 0.0)
    assert (full.free_bytes, full.free_fraction) == (0, 0.0)
    assert LoadReport("n", "h:1", "a", "ssd", 0, 0, 0, 0.0, 0.0).free_fraction == 0.0


def test_parse_report_reads_what_objstored_builds() -> None:
    """The hash objstore.reporter.build_report produces parses into the same figures."""
    ident = Identity(node_id="obj-1", address="127.0.0.1:11211", zone="b", tier="hdd")
    zeros = [0] * len(OP_NAMES)
    first = LoadSample(at=100.0, capacity_bytes=1000, used_bytes=400, items=7, ops=zeros)
    second = LoadSample(at=102.0, capacity_bytes=1000, used_bytes=410, items=8,
                        ops=[10] * len(OP_NAMES))
    fields, _hot = build_report(ident, first, second, hot_keys=4)
    raw = {k.encode(): v.encode() for k, v in fields.items()}
    parsed = parse_report(raw)
    assert parsed is not None
    assert parsed.ops_per_sec == pytest.approx(5.0 * len(OP_NAMES))
    assert parsed == LoadReport(node_id="obj-1", address="127.0.0.1:11211", zone="b",
                                tier="hdd", capacity_bytes=1000, used_bytes=410, items=8,
                                ops_per_sec=parsed.ops_per_sec, reported_at=102.0)
    full = dataclasses.replace(second, fs_free_bytes=777,
                               system=SystemCounters(50, 10, 20, 0, 4000, None, 100))
    first = dataclasses.replace(first, system=SystemCounters(0, 0, 10, 0, 0, None, 100))
    fields, _hot = build_report(ident, first, full, hot_keys=4, interval=5.0, ttl=30)
    loaded = parse_report(fields, ttl_left=28.5)
    assert loaded is not None
    assert (loaded.fs_free_bytes, loaded.cpu_process, loaded.cpu_host, loaded.io_write_bps,
            loaded.report_interval, loaded.report_ttl, loaded.age) == (
        777, 0.25, 1.0, 2000.0, 5.0, 30.0, 1.5)


@pytest.mark.parametrize("fields", [
    {},
    {b"node_id": b"x", b"addr": b"h:1"},
    {b"node_id": b"x", b"addr": b"h:1", b"capacity_bytes": b"lots", b"used_bytes": b"1",
     b"reported_at": b"1"},
])
def test_parse_report_rejects_incomplete_hashes(fields: dict[bytes, bytes]) -> None:
    """An empty (expired) or malformed report counts as no report."""
    assert parse_report(fields) is None


def test_late_report_makes_a_node_down_before_its_ttl() -> None:
    """A report older (by Redis's TTL countdown) than three report intervals plus slack
    means the node is down at once: a killed node is suspect within seconds, not after
    the report's whole TTL; a report without its schedule never goes stale."""
    ident = Identity(node_id="obj-1", address="127.0.0.1:11211", zone="b", tier="ssd")
    zeros = [0] * len(OP_NAMES)
    fields, _hot = build_report(ident, None, LoadSample(100.0, 1000, 10, 1, zeros), 4,
                                interval=5.0, ttl=30)
    fresh = parse_report(fields, ttl_left=29.0)
    late = parse_report(fields, ttl_left=12.0)
    assert fresh is not None and late is not None
    assert (fresh.age, fresh.stale) == (1.0, False)
    assert (late.age, late.stale) == (18.0, True)
    assert Node("obj-1", 1, "h:1", "b", "ssd", 1.0, NodeState.ACTIVE, late).state \
        is NodeState.DOWN
    old = {k: v for k, v in fields.items() if k not in ("report_interval", "report_ttl")}
    assert not parse_report(old, ttl_left=1.0).stale  # type: ignore[union-attr]


def test_free_bytes_never_exceed_the_filesystems() -> None:
    """A configured capacity larger than what the filesystem still has: the free bytes
    placement sees are the filesystem's."""
    r = dataclasses.replace(report(), capacity_bytes=1000, used_bytes=100, fs_free_bytes=50)
    assert (r.free_bytes, r.free_fraction) == (50, 0.05)

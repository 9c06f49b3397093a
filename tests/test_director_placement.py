"""Unit tests of placement: weighted rendezvous hashing, damping, zones, exclusions."""

from __future__ import annotations

import hashlib
import random
from collections import Counter

import pytest

from director.nodes import LoadReport, Node, NodeState
from director.placement import Placer, node_weight, place, read_order
from director.policy import PlacementPolicy

GIB = 1 << 30
IDS = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(100_000)]


def make_node(i: int, *, zone: str = "a", tier: str = "ssd", weight: float = 1.0,
              state: NodeState = NodeState.ACTIVE, capacity: int = 1000 * GIB,
              used: int = 500 * GIB, ops: float = 100.0, reported: bool = True,
              node_id: str | None = None) -> Node:
    nid = node_id or f"node-{i}"
    report = LoadReport(node_id=nid, address=f"127.255.0.{i}:11211", zone=zone, tier=tier,
                        capacity_bytes=capacity, used_bytes=used, items=0, ops_per_sec=ops,
                        reported_at=1.0) if reported else None
    return Node(id=nid, number=i, address=f"127.255.0.{i}:11211", zone=zone, tier=tier,
                weight=weight, admin_state=state, report=report, added_at=1.0)


def primary_shares(placer: Placer, ids: list[str]) -> dict[str, float]:
    counts = Counter(placer.place(i).targets[0].id for i in ids)
    return {k: v / len(ids) for k, v in counts.items()}


def test_primary_share_follows_configured_weights() -> None:
    """Over 100k ids each node is first choice in proportion to its weight (within 3%)."""
    nodes = [make_node(i, weight=w) for i, w in enumerate([1.0, 2.0, 3.0, 4.0], start=1)]
    placer = Placer(nodes, PlacementPolicy(replicas=1))
    shares = primary_shares(placer, IDS)
    total = sum(n.weight for n in nodes)
    for n in nodes:
        expected = n.weight / total
        assert shares[n.id] == pytest.approx(expected, rel=0.03), n.id


def test_equal_nodes_share_replicas_evenly() -> None:
    """With equal weights and replicas 2, every node holds about 2/N of the replicas."""
    nodes = [make_node(i) for i in range(1, 9)]
    placer = Placer(nodes, PlacementPolicy(replicas=2, tier=None))
    counts: Counter[str] = Counter()
    for blob in IDS[:50_000]:
        counts.update(n.id for n in placer.place(blob).targets)
    for n in nodes:
        assert counts[n.id] / 100_000 == pytest.approx(1 / 8, rel=0.03)


def test_new_empty_node_is_damped_by_the_root_of_free_space() -> None:
    """An empty node draws (1/0.3)^(1/3) ~ 1.49x the writes of a 70%-full peer, not 3.3x."""
    old = [make_node(i, used=700 * GIB) for i in range(1, 4)]
    new = make_node(4, used=0)
    placer = Placer([*old, new], PlacementPolicy(replicas=1))
    shares = primary_shares(placer, IDS)
    ratio = shares[new.id] / (sum(shares[n.id] for n in old) / 3)
    assert ratio == pytest.approx((1.0 / 0.3) ** (1 / 3), rel=0.05)
    undamped = Placer([*old, new], PlacementPolicy(replicas=1, free_root=1.0))
    shares1 = primary_shares(undamped, IDS[:30_000])
    ratio1 = shares1[new.id] / (sum(shares1[n.id] for n in old) / 3)
    assert ratio1 == pytest.approx(1.0 / 0.3, rel=0.08)


def test_busy_node_loses_weight() -> None:
    """A node at twice its peers' load gets less weight than its peers; idle ones gain none."""
    policy = PlacementPolicy(load_penalty=0.5)
    busy = make_node(1, ops=300.0)
    calm = make_node(2, ops=100.0)
    mean = 200.0
    assert node_weight(busy, policy, mean) == pytest.approx(
        node_weight(calm, policy, mean) / 1.25)
    assert node_weight(calm, policy, mean) == pytest.approx(0.5 ** (1 / 3))


def test_adding_nth_node_moves_about_one_nth() -> None:
    """Adding an 11th node changes about 1/11 of first choices, all of them to the new node."""
    nodes = [make_node(i) for i in range(1, 11)]
    before = Placer(nodes, PlacementPolicy(replicas=1))
    after = Placer([*nodes, make_node(11)], PlacementPolicy(replicas=1))
    ids = IDS[:50_000]
    moved = [(before.place(i).targets[0].id, after.place(i).targets[0].id) for i in ids]
    changed = [(a, b) for a, b in moved if a != b]
    assert len(changed) / len(ids) == pytest.approx(1 / 11, rel=0.06)
    assert all(b == "node-11" for _a, b in changed)


def test_removing_a_node_only_moves_its_own_blobs() -> None:
    """Taking one of 10 nodes out moves only the blobs it was first choice for."""
    nodes = [make_node(i) for i in range(1, 11)]
    before = Placer(nodes, PlacementPolicy(replicas=1))
    gone = nodes[3].id
    after = Placer([n for n in nodes if n.id != gone], PlacementPolicy(replicas=1))
    for blob in IDS[:20_000]:
        a, b = before.place(blob).targets[0].id, after.place(blob).targets[0].id
        assert a in (b, gone)


def test_replicas_land_in_distinct_zones() -> None:
    """With 3 zones of unequal size and replicas 3, every blob has one copy per zone."""
    nodes = [make_node(1, zone="a"), make_node(2, zone="a"), make_node(3, zone="a"),
             make_node(4, zone="b"), make_node(5, zone="b"), make_node(6, zone="c")]
    placer = Placer(nodes, PlacementPolicy(replicas=3))
    for blob in IDS[:5_000]:
        targets = placer.place(blob).targets
        assert sorted(n.zone for n in targets) == ["a", "b", "c"]


def test_fewer_zones_than_replicas_still_spreads() -> None:
    """Two zones and three replicas: both zones are used, on three distinct nodes."""
    nodes = [make_node(i, zone="ab"[i % 2]) for i in range(1, 7)]
    placer = Placer(nodes, PlacementPolicy(replicas=3))
    for blob in IDS[:5_000]:
        targets = placer.place(blob).targets
        assert len({n.id for n in targets}) == 3
        assert {n.zone for n in targets[:2]} == {"a", "b"}


def test_zone_rule_keeps_fallbacks_zone_diverse() -> None:
    """Fallbacks continue the zone rounds: the first fallback is in a zone not yet used
    when one exists."""
    nodes = [make_node(i, zone=z) for i, z in enumerate("aabbcc", start=1)]
    placer = Placer(nodes, PlacementPolicy(replicas=2))
    for blob in IDS[:2_000]:
        p = placer.place(blob)
        used = {n.zone for n in p.targets}
        assert p.fallbacks[0].zone not in used
        assert len(p.candidates) == 6


@pytest.mark.parametrize("bad", [
    {"state": NodeState.DRAINING},
    {"state": NodeState.REMOVED},
    {"reported": False},  # down: its report expired
    {"tier": "hdd"},
    {"used": 995 * GIB},  # under 2% free
    {"weight": 0.0},
])
def test_ineligible_nodes_are_never_chosen(bad: dict[str, object]) -> None:
    """Draining, removed, down, wrong-tier, full and zero-weight nodes get no blob at all."""
    good = [make_node(i) for i in range(1, 4)]
    excluded = make_node(9, **bad)  # type: ignore[arg-type]
    placer = Placer([*good, excluded], PlacementPolicy(replicas=2))
    assert excluded.id not in placer.weights
    for blob in IDS[:3_000]:
        assert excluded.id not in {n.id for n in placer.place(blob).candidates}


def test_unregistered_node_gets_nothing() -> None:
    """A reporting node that was never added (number 0, state new) is not a candidate."""
    new = make_node(0, node_id="fresh")
    assert new.state is NodeState.NEW
    placer = Placer([new, make_node(1)], PlacementPolicy(replicas=2))
    assert [n.id for n in placer.place(IDS[0]).candidates] == ["node-1"]


def test_too_few_nodes_gives_fewer_targets() -> None:
    """One eligible node and replicas 2: one target, no fallbacks, no duplicates."""
    placer = Placer([make_node(1)], PlacementPolicy(replicas=2))
    p = placer.place(IDS[0])
    assert [n.id for n in p.targets] == ["node-1"]
    assert p.fallbacks == ()
    assert Placer([], PlacementPolicy()).place(IDS[0]).targets == ()


def test_placement_is_deterministic_and_order_free() -> None:
    """The same snapshot gives the same ranking whatever order the nodes come in."""
    nodes = [make_node(i, zone="abc"[i % 3], weight=1 + i % 4) for i in range(1, 13)]
    forward = Placer(nodes)
    backward = Placer(list(reversed(nodes)))
    for blob in IDS[:2_000]:
        a = [n.id for n in forward.place(blob).candidates]
        b = [n.id for n in backward.place(blob).candidates]
        assert a == b
        assert a == [n.id for n in place(blob, nodes).candidates]


def test_remembered_candidates_are_the_computed_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    """A placer remembers each key's candidates (bounded: cleared when full); what it
    answers from memory is what it computes, in a list of the caller's own."""
    import director.placement as placement

    monkeypatch.setattr(placement, "MEMO_ENTRIES", 50)
    nodes = [make_node(i, zone="abc"[i % 3], weight=1 + i % 4) for i in range(1, 13)]
    placer = Placer(nodes)
    for _round in range(3):
        for blob in IDS[:120]:
            got = placer.candidates(blob)
            assert got == placer._candidates(blob)
            got.clear()  # the caller's list: the memory is untouched
            assert placer.candidates(blob) == Placer(nodes)._candidates(blob)
    assert len(placer._memo) <= 50


def test_tier_none_accepts_every_tier() -> None:
    """Without a write tier, ssd and hdd nodes both take blobs."""
    nodes = [make_node(1, tier="ssd"), make_node(2, tier="hdd")]
    placer = Placer(nodes, PlacementPolicy(replicas=1, tier=None))
    assert set(primary_shares(placer, IDS[:2_000])) == {"node-1", "node-2"}


def test_capacity_share_weighs_placement() -> None:
    """At equal free fractions a node with twice the capacity is first choice for about
    twice the blobs: capacity comes from the reports, the configured weight stays 1."""
    nodes = [make_node(1, capacity=1000 * GIB, used=100 * GIB),
             make_node(2, capacity=1000 * GIB, used=100 * GIB),
             make_node(3, capacity=2000 * GIB, used=200 * GIB)]
    shares = primary_shares(Placer(nodes, PlacementPolicy(replicas=1)), IDS[:40_000])
    assert shares["node-3"] == pytest.approx(0.5, rel=0.05)
    assert shares["node-1"] == pytest.approx(0.25, rel=0.05)


def first_choices(nodes: list[Node], reads: int, seed: int = 1,
                  suspect: tuple[str, ...] = ()) -> Counter[str]:
    rng = random.Random(seed)
    return Counter(read_order(nodes, rng, suspect=suspect)[0].id for _ in range(reads))


def test_reads_spread_over_equally_loaded_replicas() -> None:
    """Replicas with equal (or no) reported load each take about half of the first
    reads: no single replica gets them all."""
    nodes = [make_node(1, ops=50.0), make_node(2, ops=50.0)]
    firsts = first_choices(nodes, 10_000)
    assert firsts["node-1"] / 10_000 == pytest.approx(0.5, abs=0.03)
    silent = [make_node(1, ops=0.0), make_node(2, ops=0.0), make_node(3, ops=0.0)]
    assert all(c / 9_000 == pytest.approx(1 / 3, abs=0.03)
               for c in first_choices(silent, 9_000).values())


def test_reads_favour_the_idle_replica_without_herding() -> None:
    """An idle replica beside one at 179 ops/s (a report up to 5 s old) takes three reads
    in four, not all of them; feeding each round's split back as the next reports
    converges to an even split instead of swinging 0 <-> all."""
    busy = [make_node(1, ops=0.0), make_node(2, ops=179.0)]
    firsts = first_choices(busy, 10_000)
    assert firsts["node-1"] / 10_000 == pytest.approx(0.75, abs=0.03)
    loads = [0.0, 179.0]
    rng = random.Random(7)
    shares = []
    for _round in range(8):
        nodes = [make_node(1, ops=loads[0]), make_node(2, ops=loads[1])]
        picks = Counter(read_order(nodes, rng)[0].id for _ in range(2000))
        share = picks["node-1"] / 2000
        shares.append(share)
        loads = [180.0 * share, 180.0 * (1 - share)]
    assert max(shares) < 0.8 and min(shares) > 0.2, shares
    assert abs(shares[-1] - 0.5) < 0.05, shares


def test_read_order_puts_suspect_then_unreadable_replicas_last() -> None:
    """Live replicas come first, then suspect ones, then down or dead ones (a last
    resort); the same seed gives the same order."""
    live = make_node(1)
    suspect = make_node(2)
    down = make_node(3, reported=False)
    dead = make_node(4, state=NodeState.DEAD)
    nodes = [dead, down, suspect, live]
    order = read_order(nodes, random.Random(3), suspect=["node-2"])
    assert [n.id for n in order] == ["node-1", "node-2", "node-4", "node-3"]
    assert read_order(nodes, random.Random(5)) == read_order(nodes, random.Random(5))

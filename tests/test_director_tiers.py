"""Unit tests of the storage hierarchy as policy: tier layouts in placement, repair,
drain, leveling pools and reads (pure, no I/O)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from director.config import DirectorConfig, TierConfig
from director.nodes import NodeState
from director.placement import Placer, read_order
from director.planner import Health, Replica, copies_left, plan_drain, plan_repair
from director.policy import PlacementPolicy
from director.tiers import Tier, TierPolicy, is_cold, is_hot
from runtime.config import ConfigError
from tests.test_director_placement import IDS, make_node

SSD_HDD = (TierConfig("ssd", 0, 1, 0), TierConfig("hdd", 1, 1, 2))


def policy() -> PlacementPolicy:
    return PlacementPolicy.from_config(DirectorConfig(tiers=SSD_HDD, write_quorum=2))


def cluster() -> list:
    """Three SSD nodes (zones a, b, c) and three HDD nodes (zones a, b, c)."""
    return [make_node(i, zone="abc"[(i - 1) % 3], tier="ssd" if i <= 3 else "hdd")
            for i in range(1, 7)]


def test_config_builds_the_hierarchy_and_checks_it() -> None:
    """``[[director.tiers]]`` becomes a policy whose replicas are the hot layout's;
    repeated names, layouts without a copy and a quorum above the copies are refused."""
    p = policy()
    assert p.tiers is not None and p.replicas == 2 and p.tier is None
    assert p.tiers.hot == {"ssd": 1, "hdd": 1} and p.tiers.cold == {"hdd": 2}
    assert p.min_copies == 2
    with pytest.raises(ConfigError, match="tiers"):
        DirectorConfig(tiers=(TierConfig("ssd", 0, 1, 1), TierConfig("ssd", 1, 1, 1)))
    with pytest.raises(ConfigError, match="tiers"):
        DirectorConfig(tiers=(TierConfig("ssd", 0, 1, 0),))
    with pytest.raises(ConfigError, match="write_quorum"):
        DirectorConfig(tiers=(TierConfig("ssd", 0, 1, 1),), write_quorum=2)
    with pytest.raises(ConfigError, match="name"):
        TierConfig("", 0, 1, 1)


def test_new_blobs_get_one_copy_per_tier_of_the_hot_layout() -> None:
    """With ssd 1 + hdd 1, every new blob's targets are one SSD node and one HDD node,
    spread over the nodes of each tier; the fallbacks of each tier follow."""
    placer = Placer(cluster(), policy())
    firsts: Counter[str] = Counter()
    for bid in IDS[:3000]:
        placement = placer.place(bid)
        assert [n.tier for n in placement.targets] == ["ssd", "hdd"]
        assert [n.tier for n in placement.fallbacks] == ["ssd", "ssd", "hdd", "hdd"]
        firsts[placement.targets[0].id] += 1
    assert set(firsts) == {"node-1", "node-2", "node-3"}
    assert min(firsts.values()) > 800


def test_nodes_of_an_unnamed_tier_take_no_copies() -> None:
    """A node registered with a tier the hierarchy does not name is never a target."""
    nodes = [*cluster(), make_node(9, tier="tape")]
    assert all(n.id != "node-9" for n in Placer(nodes, policy()).candidates(IDS[0]))


def test_repair_fills_the_tier_that_lost_a_copy() -> None:
    """A hot blob whose SSD copy is gone gets a new SSD copy, not a second HDD one; a
    cold blob (hdd 2) that lost one of its HDD copies gets an HDD copy."""
    nodes = cluster()
    by_id = {n.id: n for n in nodes}
    p = policy()
    assert p.tiers is not None
    candidates = Placer(nodes, p).candidates(IDS[1])
    hot = [Replica(1, by_id["node-1"], Health.MISSING), Replica(4, by_id["node-4"], Health.GOOD)]
    gone_ssd = [Replica(4, by_id["node-4"], Health.GOOD),
                Replica(7, None, Health.GONE)]
    plan = plan_repair(gone_ssd, candidates, p.replicas, tiers=p.tiers, layout=p.tiers.hot)
    assert plan.need == 1 and plan.targets[0].tier == "ssd"
    # A missing copy on an active node is rewritten in place: no new one is needed.
    plan = plan_repair(hot, candidates, p.replicas, tiers=p.tiers, layout=p.tiers.hot)
    assert plan.need == 0 and [n.id for n in plan.rewrite] == ["node-1"]
    cold = [Replica(5, by_id["node-5"], Health.GOOD), Replica(7, None, Health.GONE)]
    plan = plan_repair(cold, candidates, p.replicas, tiers=p.tiers, layout=p.tiers.cold)
    assert plan.need == 1 and plan.targets[0].tier == "hdd"
    assert plan.targets[0].id != "node-5"


def test_drain_keeps_a_copy_in_its_tier() -> None:
    """A copy leaving a draining HDD node goes to another HDD node first."""
    nodes = cluster()
    p = policy()
    candidates = Placer(nodes, p).candidates(IDS[2])
    by_number = {n.number: n for n in nodes}
    plan = plan_drain([1, 4], 4, by_number, candidates, p.min_copies, tiers=p.tiers)
    assert plan.targets[0].tier == "hdd" and plan.need == 1
    plan = plan_drain([1, 4], 1, by_number, candidates, p.min_copies, tiers=p.tiers)
    assert plan.targets[0].tier == "ssd"


def test_reads_prefer_the_fastest_tier_holding_a_copy() -> None:
    """Whatever the load, a live SSD copy is read before HDD copies; a suspect or down
    SSD node falls behind live HDD ones."""
    nodes = cluster()
    tiers = policy().tiers
    assert tiers is not None
    rng = random.Random(5)
    holders = [nodes[4], nodes[0], nodes[5]]  # hdd, ssd, hdd
    for _ in range(50):
        assert tiers.fastest_first(read_order(holders, rng))[0].id == "node-1"
    order = tiers.fastest_first(read_order(holders, rng, suspect=["node-1"]), ["node-1"])
    assert [n.tier for n in order] == ["hdd", "hdd", "ssd"]
    down = make_node(1, tier="ssd", reported=False)
    order = tiers.fastest_first(read_order([down, nodes[4]], rng))
    assert [n.id for n in order] == ["node-5", "node-1"]


def test_layout_arithmetic_and_leveling_pools() -> None:
    """needs/surplus say which tiers lack or hold too many copies; leveling pools are
    one per tier, fastest first; coldness needs both age and few reads."""
    tiers = TierPolicy((Tier("hdd", 1, 1, 2), Tier("ssd", 0, 1, 0)))
    assert tiers.names == ("ssd", "hdd")
    assert tiers.needs({"ssd": 1, "hdd": 1}, tiers.cold) == {"hdd": 1}
    assert tiers.surplus({"ssd": 1, "hdd": 1}, tiers.cold) == {"ssd": 1}
    assert tiers.matches({"hdd": 2}, tiers.cold) and not tiers.matches({"hdd": 2}, tiers.hot)
    pools = tiers.pools(cluster())
    assert [[n.tier for n in pool] for pool in pools] == [["ssd"] * 3, ["hdd"] * 3]
    assert is_cold(100.0, 0.5, 1000.0, cold_after=600, hot_reads=8)
    assert not is_cold(500.0, 0.5, 1000.0, cold_after=600, hot_reads=8)
    assert not is_cold(100.0, 9.0, 1000.0, cold_after=600, hot_reads=8)
    assert is_hot(8.0, hot_reads=8) and not is_hot(7.9, hot_reads=8)


def test_without_tiers_placement_is_as_before() -> None:
    """No ``[[director.tiers]]``: only the write tier's active nodes, ``replicas`` copies."""
    p = PlacementPolicy.from_config(DirectorConfig())
    assert p.tiers is None and p.tier == "ssd" and p.min_copies == p.replicas
    nodes = [*cluster(), make_node(8, tier="ssd", state=NodeState.DRAINING)]
    assert {n.tier for n in Placer(nodes, p).candidates(IDS[3])} == {"ssd"}


def test_the_sweep_finds_entries_filling_neither_layout() -> None:
    """With hot = ssd 2 + hdd 1 and cold = hdd 2, an entry with one SSD and one HDD copy
    has the fewest copies of a layout yet fills neither: short; one with two HDD copies
    (cold) or the hot layout is whole."""
    tiers = TierPolicy((Tier("ssd", 0, 2, 0), Tier("hdd", 1, 1, 2)))
    nodes = {n.number: n for n in cluster()}
    assert copies_left([1, 4], nodes, tiers.fewest_copies, tiers=tiers) == 2
    assert copies_left([4, 5], nodes, tiers.fewest_copies, tiers=tiers) is None
    assert copies_left([1, 2, 4], nodes, tiers.fewest_copies, tiers=tiers) is None
    assert copies_left([1, 4], nodes, 2) is None  # without tiers: two copies are enough

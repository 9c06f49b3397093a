"""The site rule and site preferences (director/sites.py), without Redis: placement in
site rounds, repair and drain targets with room, crowded sites, leveling across sites, and
local-site reads."""

from __future__ import annotations

import hashlib
import random
from collections import Counter

import pytest

from director.config import DirectorConfig
from director.nodes import DEFAULT_SITE, LoadReport, Node, NodeState
from director.placement import Placer, read_order
from director.planner import (
    BlobCandidate,
    Health,
    NodeUsage,
    Replica,
    copies_left,
    plan_drain,
    plan_moves,
    plan_repair,
)
from director.policy import PlacementPolicy
from director.sites import SitePolicy, holding_sites
from runtime.config import ConfigError

GIB = 1 << 30
IDS = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(4000)]
RULE = SitePolicy(per_site=1)


def node(number: int, site: str, zone: str, state: NodeState = NodeState.ACTIVE, *,
         reporting: bool = True) -> Node:
    nid = f"n{number}"
    report = LoadReport(nid, f"127.0.0.1:{11000 + number}", zone, "ssd", 1000 * GIB,
                        100 * GIB, 0, 10.0, 1.0) if reporting else None
    return Node(nid, number, f"127.0.0.1:{11000 + number}", zone, "ssd", 1.0, state, report,
                site=site)


# Two sites of two nodes each (zones a, b in site x; zones a, b in site y: zone names may
# repeat across sites), and a down copy of node 3 for outages.
A1, A2 = node(1, "x", "a"), node(2, "x", "b")
B1, B2 = node(3, "y", "a"), node(4, "y", "b")
B1_DOWN, B2_DOWN = node(3, "y", "a", reporting=False), node(4, "y", "b", reporting=False)


def good(n: Node) -> Replica:
    return Replica(n.number, n, Health.GOOD)


def test_registry_record_without_site_is_in_the_default_site() -> None:
    """A node built without a site (a record from before sites) is in the default site, and
    one site never makes placement differ from zone rounds."""
    plain = Node("n9", 9, "127.0.0.1:1", "a", "ssd", 1.0, NodeState.ACTIVE)
    assert plain.site == DEFAULT_SITE
    nodes = [node(i, DEFAULT_SITE, "abc"[i % 3]) for i in range(1, 7)]
    with_rule = Placer(nodes, PlacementPolicy(sites=RULE))
    without = Placer(nodes, PlacementPolicy())
    for bid in IDS[:200]:
        assert with_rule.candidates(bid) == without.candidates(bid)


def test_replicas_land_in_distinct_sites_before_distinct_zones() -> None:
    """With two sites, the two replicas of every blob go one to each site, with or without
    the rule (sites come before zones), and shares stay even."""
    for sites in (SitePolicy(), RULE):
        placer = Placer([A1, A2, B1, B2], PlacementPolicy(replicas=2, sites=sites))
        counts: Counter[str] = Counter()
        for bid in IDS:
            targets = placer.place(bid).targets
            assert {n.site for n in targets} == {"x", "y"}
            counts.update(n.id for n in targets)
        for n in (A1, A2, B1, B2):
            assert counts[n.id] / (2 * len(IDS)) == pytest.approx(0.25, rel=0.1)


def test_per_site_two_fills_a_site_pair_then_the_next_site() -> None:
    """replicas 3 with replicas_per_site 2: two copies in one site (distinct zones), one in
    the other."""
    placer = Placer([A1, A2, B1, B2], PlacementPolicy(replicas=3, write_quorum=1,
                                                      sites=SitePolicy(per_site=2)))
    for bid in IDS[:300]:
        targets = placer.place(bid).targets
        per_site = Counter(n.site for n in targets)
        assert sorted(per_site.values()) == [1, 2]
        crowded = max(per_site, key=lambda s: per_site[s])
        assert len({n.zone for n in targets if n.site == crowded}) == 2


def test_site_down_degrades_placement_to_the_sites_up() -> None:
    """While site y is down, both copies go to site x (durability first); that breaks the
    rule while y is registered, and is no fault in a one-site installation."""
    nodes = [A1, A2, B1_DOWN, B2_DOWN]
    placer = Placer(nodes, PlacementPolicy(replicas=2, sites=RULE))
    targets = placer.place(IDS[0]).targets
    assert {n.id for n in targets} == {"n1", "n2"}
    assert placer.sites == {"x", "y"}
    assert RULE.crowded([n.site for n in targets], placer.sites)
    assert not RULE.crowded(["x", "x"], holding_sites([A1, A2], "ssd"))
    assert not SitePolicy().crowded(["x", "x"], {"x", "y"})


def test_holding_sites_leave_out_removed_dead_and_other_tiers() -> None:
    """Sites owed copies are those of registered nodes of the tier that may come back."""
    gone = node(5, "z", "a", NodeState.REMOVED)
    dead = node(6, "w", "a", NodeState.DEAD)
    assert holding_sites([A1, B1_DOWN, gone, dead], "ssd") == {"x", "y"}
    assert holding_sites([A1, B1], "hdd") == frozenset()


def test_repair_waits_for_the_missing_site_then_moves_the_extra_copy() -> None:
    """A blob written with both copies in site x while y was down: repair keeps it queued
    while y is down, then copies it to y and drops one of x's copies."""
    owed = {"x", "y"}
    while_down = plan_repair([good(A1), good(A2)], [A1, A2], 2, sites=RULE, owed=owed)
    assert while_down.unplaced and while_down.need == 0 and while_down.whole
    back = plan_repair([good(A1), good(A2)], [B2, A1, B1, A2], 2, sites=RULE, owed=owed)
    assert back.need == 1 and back.targets[0].site == "y" and not back.unplaced
    assert len(back.surplus) == 1 and back.surplus[0].site == "x"
    assert back.drops(made=1) == 1 and back.drops(made=0) == 0
    # Placement prefers A1 for this blob (it ranks first): A2's copy is the one dropped.
    assert back.surplus[0].id == "n2"


def test_repair_drops_the_copy_made_in_the_wrong_site_during_an_outage() -> None:
    """After the grace, repair made a second copy in site x; when y is back with its old
    copy, the blob has three copies: the extra one in x is dropped, nothing is copied."""
    plan = plan_repair([good(A1), good(A2), good(B1)], [A1, B1, A2, B2], 2, sites=RULE,
                       owed={"x", "y"})
    assert plan.need == 0 and plan.drops(0) == 1 and not plan.whole
    assert [n.id for n in plan.surplus] == ["n2"]


def test_repair_of_a_lost_copy_goes_to_the_site_that_lacks_it() -> None:
    """A copy lost in site y is replaced in site y, even when site x ranks first."""
    plan = plan_repair([good(A1), Replica(3, B1, Health.MISSING)], [A2, B2, A1], 2,
                       sites=RULE, owed={"x", "y"})
    assert [n.number for n in plan.rewrite] == [3] and plan.need == 0
    dead = node(3, "y", "a", NodeState.DEAD)
    plan = plan_repair([good(A1), Replica(3, dead, Health.DOWN)], [A2, B2, A1], 2,
                       sites=RULE, owed={"x", "y"})
    assert plan.need == 1 and plan.targets[0].id == "n4"


def test_nothing_is_dropped_on_trust() -> None:
    """A copy on a down node within its grace counts, but is not verified: the crowded
    site keeps both its copies until the down node's copy is seen again."""
    plan = plan_repair([good(A1), good(A2), Replica(3, B1_DOWN, Health.DOWN)], [A1, A2], 2,
                       waiting=frozenset({3}), sites=RULE, owed={"x", "y"})
    assert plan.counted == 3 and plan.verified == 2 and plan.surplus
    assert plan.drops(0) == 0 and plan.whole


def test_without_the_rule_nothing_is_dropped() -> None:
    """No rule: a crowded site is no fault, extra copies stay."""
    plan = plan_repair([good(A1), good(A2), good(B1)], [A1, B1], 2, owed={"x", "y"})
    assert plan.whole and plan.surplus == ()


def test_sweep_flags_crowded_entries_only_while_another_site_is_owed() -> None:
    """The repairer's sweep queues an entry whose copies crowd a site when a registered
    site lacks its copy, and leaves it alone in a one-site installation."""
    nodes = {n.number: n for n in (A1, A2, B1_DOWN, B2_DOWN)}
    assert copies_left([1, 2], nodes, 2, sites=RULE, owed={"x", "y"}) == 2
    assert copies_left([1, 2], nodes, 2, sites=RULE, owed={"x"}) is None
    assert copies_left([1, 2], nodes, 2, owed={"x", "y"}) is None


def test_drain_keeps_the_copy_in_its_site() -> None:
    """Draining a node of site x moves its copy to the other node of site x, even when a
    node of site y ranks first."""
    draining = node(1, "x", "a", NodeState.DRAINING)
    nodes = {n.number: n for n in (draining, A2, B1, B2)}
    plan = plan_drain([1, 3], 1, nodes, [B2, A2], 2, sites=RULE)
    assert plan.need == 1 and plan.targets[0].id == "n2"


def usage_of(n: Node, used: int) -> NodeUsage:
    return NodeUsage(n.id, n.number, n.zone, used, 1000 * GIB, n.site)


def test_leveling_never_crowds_a_site() -> None:
    """A new empty node in site y takes only blobs whose y copy it can replace: a blob
    held in x and y moves from the y node, never from the x node."""
    new = node(5, "y", "c")
    nodes = [usage_of(A1, 300 * GIB), usage_of(B1, 300 * GIB), usage_of(new, 0)]
    blobs = [BlobCandidate(f"{i:064x}", GIB, (1, 3)) for i in range(200)]
    moves = plan_moves(nodes, {}, 0.1, 1 << 60, cold={"n1": blobs, "n3": blobs}, sites=RULE)
    assert moves and all(m.source == "n3" and m.target == "n5" for m in moves)


def test_leveling_keeps_site_spread_without_the_rule() -> None:
    """Without the rule, leveling still never takes a blob out of a site it would then
    lack (sites, like zones, never lose spread)."""
    new = node(5, "x", "c")
    nodes = [usage_of(A1, 0), usage_of(B1, 300 * GIB), usage_of(new, 0)]
    blobs = [BlobCandidate(f"{i:064x}", GIB, (1, 3)) for i in range(200)]
    moves = plan_moves(nodes, {}, 0.1, 1 << 60, cold={"n3": blobs})
    assert moves == []


def test_reads_try_the_local_site_first() -> None:
    """A frontend of site y reads site y's copy first, whatever the loads; a suspect or
    down local copy is not preferred; no site means the load-weighted order alone."""
    rng = random.Random(7)
    busy_y = node(3, "y", "a")
    local = SitePolicy(local="y")
    for _ in range(50):
        order = local.local_first(read_order([A1, busy_y], rng), lambda n: n.readable)
        assert order[0].id == "n3"
    order = local.local_first([A1, B1_DOWN], lambda n: n.readable)
    assert order[0].id == "n1"
    firsts = Counter(SitePolicy().local_first(read_order([A1, B1], rng), lambda n: True)[0].id
                     for _ in range(400))
    assert firsts["n1"] > 100 and firsts["n3"] > 100


def test_config_builds_the_site_policy() -> None:
    """[director] replicas_per_site and site become the policy's sites; the rule cannot
    ask for more than replicas."""
    policy = PlacementPolicy.from_config(DirectorConfig(replicas_per_site=1, site="y"))
    assert policy.sites == SitePolicy(per_site=1, local="y")
    with pytest.raises(ConfigError, match="replicas_per_site"):
        DirectorConfig(replicas=2, replicas_per_site=3)

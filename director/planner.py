"""What background work moves where: pure decisions for repair, drain and leveling.

Nothing here does I/O.  The repairer, drainer and leveler (``repairer.py``,
``drainer.py``, ``leveler.py``) gather facts (index entries, registry snapshot, what each
replica answered, load reports), call these functions, and carry the result out.  Every
function is deterministic for its inputs (and ``seed``), so the same facts give the same
plan on every director, and the plans are tested without Redis or object servers.

*Which copies count.*  A copy counts towards ``replicas`` when it was verified (or, for
drain, when its node is up) and its node is ``active`` or ``draining`` (a draining node's
copy is moved, never dropped, before the node goes).  A copy on a node that is ``down`` is
unknown: it still counts while the node is within its grace period (a reboot should not
trigger a full re-replication), and not after; a copy on a node the operator declared
``dead`` never counts.  Copies on ``removed`` nodes, or under numbers the registry no
longer knows, never count but may still serve as a source.

*Where new copies go.*  The placement candidates of the blob (rendezvous order over the
active nodes of the write tier, :meth:`director.placement.Placer.candidates`), minus the
nodes the index lists already, with nodes in zones that hold no counted copy first.

*Leveling* (:func:`plan_moves`).  Each node's *target* is its capacity's share of the
bytes stored: ``capacity * total used / total capacity`` (the mean bytes per node when
capacities are equal), which moves do not change; its *deviation* is how far its bytes
are from the target, relative to the target (-0.14 = 14% below it), so the tolerance
means the same at 0.1% fill as at 90%.  When some node deviates by more than
``tolerance``, the plan moves blobs until every node is within half of it (so that the
next reports, which lag and count bytes the plan estimated, still find them within): a
blob moves from the node furthest above its target that has a movable one to the node
furthest below, hot blobs first (the load reports name each node's hottest keys: moving
them spreads read load too), then others in a seeded pseudo-random order; a move must
reduce the larger of the two nodes' deviations, never lower a blob's zone spread, and
fit in the byte budget of the pass; a node either gives or takes within one plan, so no
blob is moved twice over.

*Load* (:func:`busy_nodes`, the ``busy`` argument of :func:`plan_moves`).  A node whose
CPU or storage I/O stays well above the mean of its peers (over ``BUSY_PASSES``
consecutive plans, and above a floor, so an idle cluster's noise moves nothing) gives
its hottest blobs, before any byte leveling, to the least loaded nodes, as long as the
receivers stay within tolerance of their byte targets: enough heat to bring it back
towards the mean, at most :data:`BUSY_MOVES` blobs per plan.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from director.nodes import DEFAULT_SITE, Node, NodeState
from director.placement import hash64
from director.sites import SitePolicy
from director.tiers import Layout, TierPolicy

#: No site rule (sites still come before zones when ranking targets).
NO_SITE_RULE: Final = SitePolicy()

#: Node states whose copies count towards ``replicas``.
COUNTING = frozenset({NodeState.ACTIVE, NodeState.DRAINING})


class Health(enum.Enum):
    """What one replica was found to be."""

    #: The node returned bytes that verify against the id.
    GOOD = "good"
    #: The node answered that it does not hold the blob (or one of its chunks).
    MISSING = "missing"
    #: The node returned bytes that do not verify.
    CORRUPT = "corrupt"
    #: The node could not be asked (refused, timed out, answered garbage).
    UNREACHABLE = "unreachable"
    #: Not asked: the node has no live load report.
    DOWN = "down"
    #: Not asked: a removed node, or a number the registry no longer knows.
    GONE = "gone"


@dataclass(frozen=True)
class Replica:
    """One location of a blob in the index and what it was found to be.

    :param node: the registered node, None when the number is not registered.
    """

    number: int
    node: Node | None
    health: Health

    @property
    def counts(self) -> bool:
        """A verified copy on a node that keeps it."""
        return (self.health is Health.GOOD and self.node is not None
                and self.node.state in COUNTING)


@dataclass(frozen=True)
class RepairPlan:
    """What to do for one blob.

    :param sources: numbers of replicas with verified bytes, best first.
    :param rewrite: active nodes listed for the blob whose copy is missing or corrupt:
        write the good bytes there again (they stay its locations).
    :param targets: nodes to copy to, in order of preference; take the first ``need``
        that accept, the rest are fallbacks.
    :param need: new copies wanted on ``targets``.
    :param forget: numbers to drop from the index entry once the copies are made.
    :param counted: copies that count now (verified, or waited for on a down node).
    :param surplus: copies beyond ``replicas_per_site`` in a crowded site, least wanted
        first: drop as many as leave ``replicas`` copies once the new ones are made.
    :param unplaced: the site rule wants copies in a site that cannot take them now (it
        is down): keep the blob queued.
    """

    sources: tuple[int, ...]
    rewrite: tuple[Node, ...]
    targets: tuple[Node, ...]
    need: int
    forget: tuple[int, ...]
    counted: int
    surplus: tuple[Node, ...] = ()
    unplaced: bool = False
    #: Copies wanted (``replicas``): drops never leave fewer.
    want: int = 0
    #: Of ``counted``, the copies verified just now (not a down node's, counted on trust):
    #: only those make a surplus copy safe to drop.
    verified: int = 0

    @property
    def whole(self) -> bool:
        """Nothing to do: enough copies, none to fix, nothing to forget or drop."""
        return not self.need and not self.rewrite and not self.forget and not self.drops(0)

    def drops(self, made: int, fixed: int | None = None) -> int:
        """Surplus copies to drop once ``made`` new copies and ``fixed`` rewrites (default:
        all of them) exist: never so many that fewer than ``want`` verified copies stay."""
        fixed = len(self.rewrite) if fixed is None else fixed
        return max(0, min(len(self.surplus), self.verified + fixed + made - self.want))

    @property
    def possible(self) -> bool:
        """There is a good copy to repair from (or nothing to copy)."""
        return bool(self.sources) or (not self.need and not self.rewrite)


def rank_targets(candidates: Iterable[Node], holders: Iterable[int],
                 held: Iterable[Node], sites: SitePolicy = NO_SITE_RULE) -> list[Node]:
    """Placement candidates that do not hold the blob: in sites with room under the site
    rule first (:meth:`SitePolicy.split`), new sites, then new zones first (stable)."""
    taken = set(holders)
    held = list(held)
    held_sites = {n.site for n in held}
    zones = {(n.site, n.zone) for n in held}
    free = sorted((n for n in candidates if n.number not in taken),
                  key=lambda n: (n.site in held_sites, (n.site, n.zone) in zones))
    room, rest = sites.split(free, (n.site for n in held))
    return room + rest


def plan_repair(replicas: Sequence[Replica], candidates: Sequence[Node], want: int, *,
                waiting: frozenset[int] = frozenset(), tiers: TierPolicy | None = None,
                layout: Layout | None = None, sites: SitePolicy = NO_SITE_RULE,
                owed: Collection[str] = ()) -> RepairPlan:
    """Plan the repair of one blob from what its replicas were found to be.

    :param replicas: every location the index lists, with its health.
    :param candidates: the blob's placement candidates (active nodes of the write tier,
        in rendezvous order).
    :param want: copies wanted (``director.replicas``).
    :param waiting: numbers of down nodes still within their grace period: their copies
        count as if good, and they are neither rewritten nor forgotten.
    :param tiers: the storage hierarchy, with ``layout`` the blob's (hot or cold): copies
        are wanted per tier (``want`` is then unused); targets fill the tiers short of
        copies first (:meth:`TierPolicy.arrange`).
    :param sites: the site rule; ``owed``: the sites that could take copies, up or not
        (:attr:`director.placement.Placer.sites`).  Copies in a crowded site count once
        per allowed copy: the missing ones go to sites with room, then the surplus is
        dropped; when no site with room is up, the blob keeps its copies and stays
        queued (``unplaced``).  With a storage hierarchy only the per-tier needs apply
        (the site rule is not combined with tier layouts).
    """
    good = [r for r in replicas if r.health is Health.GOOD]
    # Prefer active sources, then draining, then whatever else answered (removed nodes).
    order = {NodeState.ACTIVE: 0, NodeState.DRAINING: 1}
    sources = tuple(r.number for r in sorted(
        good, key=lambda r: order.get(r.node.state, 2) if r.node else 3))
    counted = [r for r in replicas if r.counts or (r.number in waiting
                                                   and r.health is not Health.GOOD)]
    rewrite = tuple(r.node for r in replicas
                    if r.health in (Health.MISSING, Health.CORRUPT) and r.node is not None
                    and r.node.state is NodeState.ACTIVE)
    forget = tuple(r.number for r in replicas
                   if r.health is Health.GONE
                   or (r.health in (Health.MISSING, Health.CORRUPT)
                       and (r.node is None or r.node.state is not NodeState.ACTIVE)))
    have = len(counted) + len(rewrite)
    need = max(0, want - have)
    held = [r.node for r in counted if r.node is not None] + list(rewrite)
    ranked = rank_targets(candidates, (r.number for r in replicas), held, sites)
    if tiers is not None and layout is not None:
        per_tier = TierPolicy.counts(held)
        needs = tiers.needs(per_tier, layout)
        need = sum(needs.values())
        ranked = tiers.arrange(ranked, needs) if need else []
        return RepairPlan(sources, rewrite, tuple(ranked), need, forget, len(counted),
                          want=want, verified=sum(1 for r in replicas if r.counts))
    surplus: list[Node] = []
    unplaced = False
    if sites.crowded((n.site for n in held), owed):
        # Copies a site with room should hold: made there, then the surplus dropped.
        short = max(0, want - sites.valid(n.site for n in held))
        room, _rest = sites.split(ranked, (n.site for n in held))
        need = max(need, min(short, len(room)))
        unplaced = short > len(room)
        # Keep the copies placement prefers; drop the others first.
        position = {n.id: i for i, n in enumerate(candidates)}
        surplus = sites.surplus(sorted(held, key=lambda n: position.get(n.id, len(position))))
    targets = tuple(ranked) if need else ()
    return RepairPlan(sources, rewrite, targets, need, forget, len(counted),
                      tuple(surplus), unplaced, want, sum(1 for r in replicas if r.counts))


def copies_left(locations: Sequence[int], nodes: Mapping[int, Node], want: int, *,
                waiting: frozenset[int] = frozenset(),
                tiers: TierPolicy | None = None, sites: SitePolicy = NO_SITE_RULE,
                owed: Collection[str] = ()) -> int | None:
    """How many copies an under-replicated index entry has left, from the registry alone
    (the repairer's sweep; nothing is probed), or None when it looks whole: it is short
    with fewer than ``want`` locations on up nodes that keep their copies (or down ones
    within their grace), or with a location on a removed or unknown node; with a storage
    hierarchy (``tiers``), also when those copies fill neither the hot nor the cold
    layout (a tier lacks a copy of each); with the site rule, also when they crowd a
    site while another in ``owed`` could hold them."""
    counted = 0
    gone = False
    kept: list[Node] = []
    for number in locations:
        node = nodes.get(number)
        if node is None or node.state is NodeState.REMOVED:
            gone = True
        elif node.state in COUNTING or number in waiting:
            counted += 1
            kept.append(node)
    if tiers is not None and not gone and counted >= want:
        have = TierPolicy.counts(kept)
        gone = bool(tiers.needs(have, tiers.hot)) and bool(tiers.needs(have, tiers.cold))
    elif not gone and counted >= want:
        gone = sites.crowded((n.site for n in kept), owed)
    return counted if gone or counted < want else None


def needs_repair(locations: Sequence[int], nodes: Mapping[int, Node], want: int, *,
                 waiting: frozenset[int] = frozenset(), sites: SitePolicy = NO_SITE_RULE,
                 owed: Collection[str] = ()) -> bool:
    """Whether an index entry looks under-replicated (:func:`copies_left`)."""
    return copies_left(locations, nodes, want, waiting=waiting, sites=sites,
                       owed=owed) is not None


def lost_nodes(nodes: Iterable[Node], waiting: frozenset[int]) -> frozenset[str]:
    """Ids of nodes whose copies no longer count: declared dead, removed, or down past
    their grace (not in ``waiting``).  A node joining this set is what makes the
    repairer sweep the whole index at once."""
    return frozenset(n.id for n in nodes if n.number and (
        n.state in (NodeState.DEAD, NodeState.REMOVED)
        or (n.state is NodeState.DOWN and n.number not in waiting)))


def down_waiting(nodes: Iterable[Node], down_since: Mapping[str, float], now: float,
                 grace: float) -> frozenset[int]:
    """Numbers of down nodes whose copies still count: down for less than ``grace``
    seconds (``down_since``: node id -> when it was first seen down)."""
    return frozenset(n.number for n in nodes if n.state is NodeState.DOWN
                     and now - down_since.get(n.id, now) < grace)


@dataclass(frozen=True)
class DrainPlan:
    """Where one blob of a draining node goes.

    :param targets: nodes to copy to, best first; the first ``need`` that accept.
    :param need: copies to make (at least one: the draining node's copy must go
        somewhere; more when the blob is short of copies elsewhere).
    """

    targets: tuple[Node, ...]
    need: int


def plan_drain(locations: Sequence[int], draining: int, nodes: Mapping[int, Node],
               candidates: Sequence[Node], want: int, *,
               tiers: TierPolicy | None = None,
               sites: SitePolicy = NO_SITE_RULE) -> DrainPlan:
    """Plan moving one blob off the ``draining`` node.

    The other locations are not probed (that is the repairer's work): a copy elsewhere
    counts when its node is up and active or draining.  Targets in sites with room under
    the site rule come first (the draining node's own site, when it held the site's
    copy), then new zones.  With a storage hierarchy (``tiers``) the copy stays in its
    tier: that tier's candidates come first (sites then order them within it).
    """
    others = [nodes[n] for n in locations if n != draining and n in nodes
              and nodes[n].state in COUNTING]
    need = max(1, want - len(others))
    targets = rank_targets(candidates, locations, others, sites)
    leaving = nodes.get(draining)
    if tiers is not None and leaving is not None:
        targets = tiers.same_tier_first(targets, leaving.tier)
    return DrainPlan(tuple(targets), need)


# -- leveling -------------------------------------------------------------------------

#: Once a plan starts, it aims at this fraction of the tolerance (see the module docstring).
AIM: Final = 0.5
#: A node is busy when its CPU or I/O is above (1 + BUSY_MARGIN) times its peers' mean...
BUSY_MARGIN: Final = 0.5
#: ...and above these floors (cores; bytes/s)...
BUSY_CPU_FLOOR: Final = 0.25
BUSY_IO_FLOOR: Final = 1 << 20
#: ...in this many consecutive plans.
BUSY_PASSES: Final = 2
#: Hot blobs a busy node gives away per plan at most.
BUSY_MOVES: Final = 16


@dataclass(frozen=True)
class NodeUsage:
    """How full one node is (from its load report)."""

    node_id: str
    number: int
    zone: str
    used: int
    capacity: int
    site: str = DEFAULT_SITE

    @property
    def fraction(self) -> float:
        return self.used / self.capacity if self.capacity > 0 else 0.0


@dataclass(frozen=True)
class NodeLoad:
    """How busy one node is (from its load report).

    :param cpu: cores its processes used.
    :param io: bytes/s its processes read from and wrote to storage.
    """

    node_id: str
    cpu: float
    io: float


@dataclass(frozen=True)
class BlobCandidate:
    """A blob a node holds that leveling could move.

    :param size: bytes it occupies on the node (an estimate is fine).
    :param holders: node numbers the index lists for it.
    :param heat: reads per second on this node (0 when not among its hottest).
    """

    blob_id: str
    size: int
    holders: tuple[int, ...]
    heat: float = 0.0


@dataclass(frozen=True)
class Move:
    """Move one copy of ``blob_id`` from ``source`` to ``target`` (node ids).

    :param busy: moved to take read load off a busy source, not for its bytes.
    """

    blob_id: str
    source: str
    target: str
    source_number: int
    target_number: int
    size: int
    heat: float = 0.0
    busy: bool = False


@dataclass(frozen=True)
class Usage:
    """Usage figures of a set of nodes.

    :param mean: the cluster-wide fraction of capacity used (total used / total capacity).
    :param spread: the largest deviation of a node from its target (relative: 0.1 = 10%).
    :param fractions: node id -> its fraction of capacity used.
    :param targets: node id -> its target bytes (its capacity's share of the bytes).
    :param deviations: node id -> (used - target) / target.
    """

    mean: float
    spread: float
    fractions: dict[str, float] = field(default_factory=dict)
    targets: dict[str, float] = field(default_factory=dict)
    deviations: dict[str, float] = field(default_factory=dict)

    def to_move(self, used: Mapping[str, int]) -> int:
        """Bytes above their targets, all nodes together: what leveling has to move."""
        return int(sum(max(0.0, used[n] - t) for n, t in self.targets.items() if n in used))


def deviation(used: float, target: float) -> float:
    """How far ``used`` bytes are from ``target``, relative to it (0 when both are 0)."""
    if target > 0:
        return (used - target) / target
    return 0.0 if used <= 0 else float("inf")


def usage(nodes: Sequence[NodeUsage]) -> Usage:
    """The cluster-wide fraction used, each node's target and the largest deviation."""
    live = [n for n in nodes if n.capacity > 0]
    capacity = sum(n.capacity for n in live)
    if not capacity:
        return Usage(0.0, 0.0)
    mean = sum(n.used for n in live) / capacity
    targets = {n.node_id: mean * n.capacity for n in live}
    deviations = {n.node_id: deviation(n.used, targets[n.node_id]) for n in live}
    spread = max(abs(d) for d in deviations.values())
    return Usage(mean, spread, {n.node_id: n.fraction for n in live}, targets, deviations)


def busy_nodes(loads: Sequence[NodeLoad], streaks: Mapping[str, int], *,
               margin: float = BUSY_MARGIN, passes: int = BUSY_PASSES
               ) -> tuple[frozenset[str], dict[str, int]]:
    """Which nodes stay busy: their CPU or I/O above ``1 + margin`` times the mean of
    ``loads`` (and above the floors) in ``passes`` consecutive plans.

    :param streaks: node id -> consecutive earlier plans it was above (the leveler keeps
        them in its job state).
    :returns: the busy node ids, and the streaks to keep for the next plan.
    """
    if len(loads) < 2:
        return frozenset(), {}
    mean_cpu = sum(n.cpu for n in loads) / len(loads)
    mean_io = sum(n.io for n in loads) / len(loads)
    now: dict[str, int] = {}
    for n in loads:
        above = (n.cpu > max(BUSY_CPU_FLOOR, (1 + margin) * mean_cpu)
                 or n.io > max(BUSY_IO_FLOOR, (1 + margin) * mean_io))
        if above:
            now[n.node_id] = streaks.get(n.node_id, 0) + 1
    return frozenset(k for k, v in now.items() if v >= passes), now


def plan_moves(nodes: Sequence[NodeUsage], hot: Mapping[str, Sequence[BlobCandidate]],
               tolerance: float, budget: int, *,
               cold: Mapping[str, Sequence[BlobCandidate]] | None = None,
               busy: Collection[str] = (), loads: Mapping[str, float] | None = None,
               seed: int = 0, sites: SitePolicy = NO_SITE_RULE,
               places: Mapping[int, tuple[str, str]] | None = None) -> list[Move]:
    """Moves that bring every node within ``tolerance`` of its byte target, after taking
    hot blobs off ``busy`` nodes (see the module docstring).

    :param nodes: the nodes to level among (one tier, active, with a capacity).
    :param hot: node id -> blobs among its hottest keys (heat = reads/s there).
    :param cold: node id -> other blobs it holds (from an index scan).
    :param tolerance: allowed deviation of a node's bytes from its target, relative to
        the target (0.1 = within 10%).
    :param budget: bytes the moves may add up to.
    :param busy: ids of nodes whose CPU or I/O stays above the mean
        (:func:`busy_nodes`): they give hot blobs away first.
    :param loads: node id -> load relative to the mean (busy nodes' hot blobs go to the
        least loaded first; default: all equal).
    :param seed: orders blobs of equal heat, so that passes and directors vary which
        cold blobs they take.
    :param sites: the site rule: a move never puts more than ``replicas_per_site`` copies
        in a site (nor takes a blob out of a site it would then lack: sites, like zones,
        never lose spread).
    :param places: node number -> (site, zone) of every registered node (default: those
        of ``nodes``), so copies on nodes not levelled here still count.
    :returns: moves in the order to carry them out (each blob moves at most once).
    """
    live = [n for n in nodes if n.capacity > 0]
    if len(live) < 2 or budget <= 0:
        return []
    stat = usage(live)
    target = stat.targets
    used = {n.node_id: n.used for n in live}
    place_of = dict(places) if places is not None else {}
    for n in nodes:
        place_of.setdefault(n.number, (n.site, n.zone))
    queues = {n.node_id: _queue(n.node_id, hot, cold or {}, seed) for n in live}
    planned: set[str] = set()
    moves: list[Move] = []
    spent = 0
    # A node gives or takes within one plan, never both: no blob travels A -> B -> C.
    gave: set[str] = set()
    took: set[str] = set()

    def dev(node_id: str, delta: int = 0) -> float:
        return deviation(used[node_id] + delta, target[node_id])

    def allowed(src: NodeUsage, dst: NodeUsage, blob: BlobCandidate) -> bool:
        if blob.blob_id in planned or dst.number in blob.holders \
                or src.number not in blob.holders or spent + blob.size > budget:
            return False
        others = [place_of[h] for h in blob.holders if h != src.number and h in place_of]
        zones = set(others)
        if (dst.site, dst.zone) in zones and (src.site, src.zone) not in zones:
            return False  # it would lose a zone
        if dst.site == src.site:
            return True
        in_site = [s for s, _z in others]
        if dst.site in in_site and src.site not in in_site:
            return False  # it would lose a site
        return not sites.enforced or in_site.count(dst.site) < sites.per_site

    def levels(src: NodeUsage, dst: NodeUsage, blob: BlobCandidate) -> bool:
        before = max(abs(dev(src.node_id)), abs(dev(dst.node_id)))
        after = max(abs(dev(src.node_id, -blob.size)), abs(dev(dst.node_id, blob.size)))
        return after < before

    def do(src: NodeUsage, dst: NodeUsage, blob: BlobCandidate, for_load: bool) -> None:
        nonlocal spent
        planned.add(blob.blob_id)
        queues[src.node_id].remove(blob)
        used[src.node_id] -= blob.size
        used[dst.node_id] += blob.size
        spent += blob.size
        gave.add(src.node_id)
        took.add(dst.node_id)
        moves.append(Move(blob.blob_id, src.node_id, dst.node_id, src.number, dst.number,
                          blob.size, blob.heat, for_load))

    # 1. Load: a busy node's hottest blobs go to the least loaded nodes that stay
    #    within tolerance of their byte targets.
    relative = loads or {}
    for src in sorted((n for n in live if n.node_id in busy),
                      key=lambda n: (-relative.get(n.node_id, 1.0), n.node_id)):
        load = relative.get(src.node_id, 1.0)
        heats = [b.heat for b in queues[src.node_id] if b.heat > 0]
        # Shed the share of its heat that is above the mean (half of it when unknown).
        want = sum(heats) * (1.0 - 1.0 / load if load > 1 else 0.5)
        shed, count = 0.0, 0
        receivers = sorted((n for n in live if n.node_id not in busy
                            and n.node_id != src.node_id and n.node_id not in gave),
                           key=lambda n: (relative.get(n.node_id, 1.0), dev(n.node_id),
                                          n.node_id))
        for blob in [b for b in queues[src.node_id] if b.heat > 0]:
            if shed >= want or count >= BUSY_MOVES or src.node_id in took:
                break
            dst = next((d for d in receivers if allowed(src, d, blob)
                        and dev(d.node_id, blob.size) <= tolerance), None)
            if dst is not None:
                do(src, dst, blob, True)
                shed += blob.heat
                count += 1

    # 2. Bytes.
    if max(abs(dev(n.node_id)) for n in live) <= tolerance:
        return moves
    aim = tolerance * AIM
    while max(abs(dev(n.node_id)) for n in live) > aim:
        sources = sorted((n for n in live if dev(n.node_id) > 0 and n.node_id not in took),
                         key=lambda n: (-dev(n.node_id), n.node_id))
        targets = sorted((n for n in live if dev(n.node_id) < 0 and n.node_id not in gave),
                         key=lambda n: (dev(n.node_id), n.node_id))
        chosen: tuple[NodeUsage, NodeUsage, BlobCandidate] | None = None
        for src in sources:
            for dst in targets:
                pick = next((b for b in queues[src.node_id]
                             if allowed(src, dst, b) and levels(src, dst, b)), None)
                if pick is not None:
                    chosen = (src, dst, pick)
                    break
            if chosen is not None:
                break
        if chosen is None:
            break
        do(*chosen, False)
    return moves


def _queue(node_id: str, hot: Mapping[str, Sequence[BlobCandidate]],
           cold: Mapping[str, Sequence[BlobCandidate]], seed: int) -> list[BlobCandidate]:
    """A node's blobs in the order to move them: hottest first, then seeded order."""
    def shuffle(b: BlobCandidate) -> int:
        return hash64(f"{seed}:{b.blob_id}")

    first = sorted(hot.get(node_id, ()), key=lambda b: (-b.heat, shuffle(b)))
    seen = {b.blob_id for b in first}
    rest = sorted((b for b in cold.get(node_id, ()) if b.blob_id not in seen), key=shuffle)
    return first + rest

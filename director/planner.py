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
trigger a full re-replication), and not after.  Copies on ``removed`` nodes, or under
numbers the registry no longer knows, never count but may still serve as a source.

*Where new copies go.*  The placement candidates of the blob (rendezvous order over the
active nodes of the write tier, :meth:`director.placement.Placer.candidates`), minus the
nodes the index lists already, with nodes in zones that hold no counted copy first.

*Leveling* (:func:`plan_moves`).  Usage is the fraction of capacity used; the target is
the cluster-wide fraction (total used / total capacity), which moves do not change.
While some node is further than ``tolerance`` from it, a blob moves from the fullest node
that has a movable one to the emptiest node that can take it, hot blobs first (the load
reports name each node's hottest keys: moving them spreads read load too), then others
in a seeded pseudo-random order; a move must reduce the larger of the two nodes'
deviations, never lower a blob's zone spread, and fit in the byte budget of the pass; a
node either gives or takes within one plan, so no blob is moved twice over.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from director.nodes import Node, NodeState
from director.placement import hash64

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
    """

    sources: tuple[int, ...]
    rewrite: tuple[Node, ...]
    targets: tuple[Node, ...]
    need: int
    forget: tuple[int, ...]
    counted: int

    @property
    def whole(self) -> bool:
        """Nothing to do: enough copies, none to fix, nothing to forget."""
        return not self.need and not self.rewrite and not self.forget

    @property
    def possible(self) -> bool:
        """There is a good copy to repair from (or nothing to copy)."""
        return bool(self.sources) or (not self.need and not self.rewrite)


def rank_targets(candidates: Iterable[Node], holders: Iterable[int],
                 held_zones: Iterable[str]) -> list[Node]:
    """Placement candidates that do not hold the blob, new zones first (stable)."""
    taken = set(holders)
    zones = set(held_zones)
    free = [n for n in candidates if n.number not in taken]
    return sorted(free, key=lambda n: n.zone in zones)


def plan_repair(replicas: Sequence[Replica], candidates: Sequence[Node], want: int, *,
                waiting: frozenset[int] = frozenset()) -> RepairPlan:
    """Plan the repair of one blob from what its replicas were found to be.

    :param replicas: every location the index lists, with its health.
    :param candidates: the blob's placement candidates (active nodes of the write tier,
        in rendezvous order).
    :param want: copies wanted (``director.replicas``).
    :param waiting: numbers of down nodes still within their grace period: their copies
        count as if good, and they are neither rewritten nor forgotten.
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
    zones = {r.node.zone for r in counted if r.node is not None} | {n.zone for n in rewrite}
    targets = tuple(rank_targets(candidates, (r.number for r in replicas), zones)) \
        if need else ()
    return RepairPlan(sources, rewrite, targets, need, forget, len(counted))


def needs_repair(locations: Sequence[int], nodes: Mapping[int, Node], want: int, *,
                 waiting: frozenset[int] = frozenset()) -> bool:
    """Whether an index entry looks under-replicated, from the registry alone (the
    repairer's sweep; nothing is probed): fewer than ``want`` locations on up nodes
    that keep their copies (or down ones within their grace), or a location on a
    removed or unknown node."""
    counted = 0
    for number in locations:
        node = nodes.get(number)
        if node is None or node.state is NodeState.REMOVED:
            return True
        if node.state in COUNTING or number in waiting:
            counted += 1
    return counted < want


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
               candidates: Sequence[Node], want: int) -> DrainPlan:
    """Plan moving one blob off the ``draining`` node.

    The other locations are not probed (that is the repairer's work): a copy elsewhere
    counts when its node is up and active or draining.
    """
    others = [nodes[n] for n in locations if n != draining and n in nodes
              and nodes[n].state in COUNTING]
    need = max(1, want - len(others))
    targets = rank_targets(candidates, locations, (n.zone for n in others))
    return DrainPlan(tuple(targets), need)


# -- leveling -------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeUsage:
    """How full one node is (from its load report)."""

    node_id: str
    number: int
    zone: str
    used: int
    capacity: int

    @property
    def fraction(self) -> float:
        return self.used / self.capacity if self.capacity > 0 else 0.0


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
    """Move one copy of ``blob_id`` from ``source`` to ``target`` (node ids)."""

    blob_id: str
    source: str
    target: str
    source_number: int
    target_number: int
    size: int
    heat: float = 0.0


@dataclass(frozen=True)
class Usage:
    """Usage figures of a set of nodes."""

    mean: float
    spread: float
    fractions: dict[str, float] = field(default_factory=dict)


def usage(nodes: Sequence[NodeUsage]) -> Usage:
    """The cluster-wide fraction used and the largest deviation from it."""
    capacity = sum(n.capacity for n in nodes if n.capacity > 0)
    if not capacity:
        return Usage(0.0, 0.0, {})
    mean = sum(n.used for n in nodes if n.capacity > 0) / capacity
    fractions = {n.node_id: n.fraction for n in nodes if n.capacity > 0}
    spread = max(abs(f - mean) for f in fractions.values())
    return Usage(mean, spread, fractions)


def plan_moves(nodes: Sequence[NodeUsage], hot: Mapping[str, Sequence[BlobCandidate]],
               tolerance: float, budget: int, *,
               cold: Mapping[str, Sequence[BlobCandidate]] | None = None,
               seed: int = 0) -> list[Move]:
    """Moves that bring every node within ``tolerance`` of the mean fraction used.

    :param nodes: the nodes to level among (one tier, active, with a capacity).
    :param hot: node id -> blobs among its hottest keys (heat = reads/s there).
    :param cold: node id -> other blobs it holds (from an index scan).
    :param tolerance: allowed deviation of a node's fraction from the mean (0.05 = 5
        points of capacity).
    :param budget: bytes the moves may add up to.
    :param seed: orders blobs of equal heat, so that passes and directors vary which
        cold blobs they take.
    :returns: moves in the order to carry them out (each blob moves at most once).
    """
    live = [n for n in nodes if n.capacity > 0]
    if len(live) < 2 or budget <= 0:
        return []
    stat = usage(live)
    mean = stat.mean
    used = {n.node_id: n.used for n in live}
    by_id = {n.node_id: n for n in live}
    zone_of = {n.number: n.zone for n in nodes}
    queues = {n.node_id: _queue(n.node_id, hot, cold or {}, seed) for n in live}
    planned: set[str] = set()
    moves: list[Move] = []
    spent = 0

    def frac(node_id: str, delta: int = 0) -> float:
        return (used[node_id] + delta) / by_id[node_id].capacity

    def movable(src: NodeUsage, dst: NodeUsage, blob: BlobCandidate) -> bool:
        if blob.blob_id in planned or dst.number in blob.holders \
                or src.number not in blob.holders or spent + blob.size > budget:
            return False
        others = {zone_of[h] for h in blob.holders if h != src.number and h in zone_of}
        if dst.zone in others and src.zone not in others:
            return False  # the blob would lose a zone
        before = max(abs(frac(src.node_id) - mean), abs(frac(dst.node_id) - mean))
        after = max(abs(frac(src.node_id, -blob.size) - mean),
                    abs(frac(dst.node_id, blob.size) - mean))
        return after < before

    # A node gives or takes within one plan, never both: no blob travels A -> B -> C.
    gave: set[str] = set()
    took: set[str] = set()
    while max(abs(frac(n.node_id) - mean) for n in live) > tolerance:
        sources = sorted((n for n in live if frac(n.node_id) > mean and n.node_id not in took),
                         key=lambda n: (-frac(n.node_id), n.node_id))
        targets = sorted((n for n in live if frac(n.node_id) < mean and n.node_id not in gave),
                         key=lambda n: (frac(n.node_id), n.node_id))
        chosen: tuple[NodeUsage, NodeUsage, BlobCandidate] | None = None
        for src in sources:
            for dst in targets:
                blob = next((b for b in queues[src.node_id] if movable(src, dst, b)), None)
                if blob is not None:
                    chosen = (src, dst, blob)
                    break
            if chosen is not None:
                break
        if chosen is None:
            break
        src, dst, blob = chosen
        planned.add(blob.blob_id)
        queues[src.node_id].remove(blob)
        used[src.node_id] -= blob.size
        used[dst.node_id] += blob.size
        spent += blob.size
        gave.add(src.node_id)
        took.add(dst.node_id)
        moves.append(Move(blob.blob_id, src.node_id, dst.node_id, src.number, dst.number,
                          blob.size, blob.heat))
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

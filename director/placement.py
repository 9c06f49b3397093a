"""Where a new blob goes: weighted rendezvous hashing over the active nodes.

Theory of operation.  Every (blob, node) pair gets a pseudo-random ``u`` in (0, 1)
from a 64-bit mix of the blob key's hash and the node id's hash; the node's score is
``weight / -ln(u)`` and nodes are ranked by score (highest random weight hashing in
its weighted form: a node wins a blob with probability proportional to its weight,
and adding or removing a node only moves the blobs it wins or held).

Weights combine three things, each damped so that placement nudges rather than
stampedes (the leveler moves existing data; placement only steers new writes):

* the configured weight (leave it at 1 unless some hardware should get more or less
  than its capacity's share: capacity is weighed already);
* the node's capacity relative to the mean of the candidates' (what its reports say: by
  default its data dir's filesystem, used + free), so a disk twice as large draws twice
  the writes;
* the free fraction of the node's capacity raised to ``1 / free_root``: with the
  default cube root a new empty node draws about 1.5 times the writes of a 70%-full
  peer instead of 3.3 times, so it is not flooded with every new (hot) blob;
* the reported load: a node busier than the average of its peers loses weight as
  ``1 / (1 + load_penalty * (ops / mean - 1))``.

Nodes that are not ``active`` (draining, down, removed, new), not in the write tier
or nearly full (free fraction below ``min_free_fraction``) are never candidates.

Replicas go to distinct zones when there are enough: the ranked list is reordered
in *zone rounds* (each zone's best node, by score, then each zone's second best...),
so the first ``replicas`` entries span as many zones as exist and the fallbacks
keep the same preference.  Sites come above zones: the zone rounds are then reordered in
*site rounds* (:meth:`director.sites.SitePolicy.rounds`: each site's best
``replicas_per_site`` nodes, one without that rule, then the next ones), and a zone is
named by its site and its name.  Everything here is pure and deterministic.

*Reads* (:func:`read_order`) pick among a blob's replicas at random, weighted by inverse
load with damping: a replica whose load is ``r`` times the mean of the replicas' gets
weight ``1 / (1 + r)``.  Loads come from reports up to one report interval old, so
"always the least loaded" would send every read to the same node until the next report
and then every read to another (ops/s swinging 0 -> 179 between reports); with the
damped weights an idle replica takes three reads in four from one twice the mean, equal
loads split evenly, and the split converges instead of oscillating.  The randomness is
the caller's seeded ``Random``.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from director.nodes import Node
from director.policy import PlacementPolicy
from director.sites import holding_sites

_MASK = (1 << 64) - 1
_TWO64 = float(1 << 64)


def hash64(text: str) -> int:
    """64-bit hash of a string (blob key or node id)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def node_weight(node: Node, policy: PlacementPolicy, mean_ops: float,
                mean_capacity: float = 0.0) -> float:
    """Placement weight of ``node``; 0 means it takes no new blobs.

    :param mean_ops: mean reported ops/s over the eligible nodes (load reference).
    :param mean_capacity: mean reported capacity over them (0: capacity not weighed).
    """
    report = node.report
    if not policy.may_hold(node) or report is None or node.weight <= 0:
        return 0.0
    free = report.free_fraction
    if free < policy.min_free_fraction or free <= 0:
        return 0.0
    weight = node.weight * free ** (1.0 / policy.free_root)
    if mean_capacity > 0:
        weight *= report.capacity_bytes / mean_capacity
    if policy.load_penalty and mean_ops > 0 and report.ops_per_sec > mean_ops:
        weight /= 1.0 + policy.load_penalty * (report.ops_per_sec / mean_ops - 1.0)
    return weight


def _mean_ops(nodes: Iterable[Node]) -> float:
    loads = [n.report.ops_per_sec for n in nodes if n.report is not None]
    return sum(loads) / len(loads) if loads else 0.0


def _mean_capacity(nodes: Iterable[Node]) -> float:
    sizes = [n.report.capacity_bytes for n in nodes
             if n.report is not None and n.report.capacity_bytes > 0]
    return sum(sizes) / len(sizes) if sizes else 0.0


@dataclass(frozen=True)
class Placement:
    """Ranked candidates for one blob."""

    #: Where the blob goes: the first ``replicas`` candidates (fewer if too few nodes).
    targets: tuple[Node, ...]
    #: The remaining candidates in order, to use when a write to a target fails.
    fallbacks: tuple[Node, ...]

    @property
    def candidates(self) -> tuple[Node, ...]:
        return self.targets + self.fallbacks


#: Keys whose candidates one :class:`Placer` remembers (a key written again before the
#: registry's next refresh costs no scoring; about 150 bytes an entry).
MEMO_ENTRIES: Final = 16384


class Placer:
    """Placement over one snapshot of the registry; build once, call per put.

    The weights are computed at construction, so a placer reflects the reports it
    was built from; rebuild it when the registry snapshot is refreshed.
    """

    def __init__(self, nodes: Iterable[Node], policy: PlacementPolicy | None = None) -> None:
        nodes = list(nodes)
        self.policy = policy or PlacementPolicy()
        pool = [n for n in nodes if self.policy.may_hold(n)]
        mean, size = _mean_ops(pool), _mean_capacity(pool)
        weighted = [(n, node_weight(n, self.policy, mean, size)) for n in pool]
        # Sorted by id so that equal scores (practically never) break ties the same way.
        self._eligible = sorted(((n, w) for n, w in weighted if w > 0), key=lambda p: p[0].id)
        self._seeds = [(hash64(n.id), w, n) for n, w in self._eligible]
        #: Sites owed copies under the site rule (up or not): see director.sites.
        self.sites = holding_sites(nodes, self.policy.tier)
        #: Recent answers of :meth:`candidates` (a placer never changes: a plain
        #: function of the key); cleared when full.
        self._memo: dict[str, tuple[Node, ...]] = {}

    @property
    def weights(self) -> dict[str, float]:
        """Node id -> weight, for the eligible nodes only."""
        return {n.id: w for n, w in self._eligible}

    @property
    def eligible(self) -> list[Node]:
        return [n for n, _w in self._eligible]

    def ranked(self, key: str) -> list[Node]:
        """Eligible nodes by descending rendezvous score for ``key`` (no zone rule)."""
        return [n for _s, n in self._scored(key)]

    def _scored(self, key: str) -> list[tuple[float, Node]]:
        h = hash64(key)
        log = math.log
        scored = []
        for seed, weight, node in self._seeds:
            # splitmix64's finaliser (a bijective 64-bit avalanche) of key ^ node,
            # inlined: this loop runs once per node per put.
            x = h ^ seed
            x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
            x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
            x ^= x >> 31
            u = (x + 0.5) / _TWO64
            scored.append((-weight / log(u), node))
        scored.sort(key=lambda p: p[0], reverse=True)
        return scored

    def candidates(self, key: str) -> list[Node]:
        """Every eligible node, ordered in site rounds of zone rounds of descending score
        (with a storage hierarchy, rearranged by :meth:`director.tiers.TierPolicy.arrange`
        so that the first ``replicas`` fill the hot layout; within a tier the site
        rounds' order is kept).  A new list each call (callers may change it)."""
        known = self._memo.get(key)
        if known is None:
            if len(self._memo) >= MEMO_ENTRIES:
                self._memo.clear()
            known = self._memo[key] = tuple(self._candidates(key))
        return list(known)

    def _candidates(self, key: str) -> list[Node]:
        rounds: dict[tuple[str, str], int] = {}
        keyed = []
        for position, (_score, node) in enumerate(self._scored(key)):
            zone = (node.site, node.zone)
            r = rounds.get(zone, 0)
            rounds[zone] = r + 1
            keyed.append((r, position, node))
        keyed.sort(key=lambda t: (t[0], t[1]))
        ordered = self.policy.sites.rounds([node for _r, _p, node in keyed])
        tiers = self.policy.tiers
        # A storage hierarchy: the first ones fill a new blob's (hot) tier layout.
        return tiers.arrange(ordered, tiers.hot) if tiers is not None else ordered

    def place(self, key: str, replicas: int | None = None) -> Placement:
        """Targets and fallbacks for a new blob ``key`` (its id)."""
        want = self.policy.replicas if replicas is None else replicas
        ordered = self.candidates(key)
        return Placement(tuple(ordered[:want]), tuple(ordered[want:]))


def place(key: str, nodes: Sequence[Node], policy: PlacementPolicy | None = None) -> Placement:
    """One-off placement (builds a :class:`Placer`; keep one for repeated use)."""
    return Placer(nodes, policy).place(key)


def relative_loads(*columns: Sequence[float]) -> list[float]:
    """Each node's load relative to the mean: for every node (one value per column, the
    nodes in the same order in each), the largest of its values over their column's
    mean (a column nobody reports, all 0, counts as 0)."""
    out: list[float] = []
    for column in columns:
        mean = sum(column) / len(column) if column else 0.0
        rel = [v / mean if mean > 0 else 0.0 for v in column]
        out = rel if not out else [max(a, b) for a, b in zip(out, rel, strict=True)]
    return out


def read_loads(nodes: Sequence[Node]) -> list[float]:
    """Each node's load for reads, relative to the others': the larger of its ops/s and
    its CPU over their means."""
    return relative_loads([n.report.ops_per_sec if n.report else 0.0 for n in nodes],
                          [n.report.cpu_process if n.report else 0.0 for n in nodes])


class ReadOrder:
    """What :func:`read_order` computes from the nodes alone, done once; :meth:`draw`
    then orders them for one read.  Reads of many blobs with the same replicas (a batch
    of item reads) share one.
    """

    __slots__ = ("_exponents", "_live", "_rest")

    def __init__(self, nodes: Sequence[Node], suspect: Collection[str] = ()) -> None:
        live = [n for n in nodes if n.readable and n.id not in suspect]
        #: Efraimidis-Spirakis: sorting by u ** (1 / w) samples without replacement
        #: with probability proportional to w (the weight: inverse load, damped).
        self._exponents = ([1.0 / (1.0 / (1.0 + r)) for r in read_loads(live)]
                           if len(live) > 1 else [])
        self._live = live
        later = [n for n in nodes if n.readable and n.id in suspect]
        last = [n for n in nodes if not n.readable]
        self._rest = later + last

    def draw(self, rng: random.Random) -> list[Node]:
        """One read's order (a new list); the randomness is ``rng``'s."""
        live = self._live
        if len(live) > 1:
            keys = [rng.random() ** e for e in self._exponents]
            live = [n for _k, n in sorted(zip(keys, live, strict=True), key=lambda p: -p[0])]
        return live + self._rest


def read_order(nodes: Sequence[Node], rng: random.Random, *,
               suspect: Collection[str] = ()) -> list[Node]:
    """The order in which to try a blob's replicas for one read.

    Readable nodes that are not ``suspect`` (ids of nodes that failed a request lately)
    come first, in a random order weighted by inverse load with damping (see the module
    docstring); then suspect ones; then the rest (down, dead: a late report is not a dead
    disk, so they are still worth a try last).  Pure: the randomness is ``rng``'s.
    """
    return ReadOrder(nodes, suspect).draw(rng)

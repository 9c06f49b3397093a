"""Sites: the failure domain above zones, and the rule "at most N copies of a blob per site".

A *site* is a building or a region: every node has one (``objmail node add --site``;
``default`` for nodes registered before sites existed, so an upgraded installation is one
site and behaves as before).  Zones are failure domains within a site; a zone is named by
``(site, zone)``, so two sites may both have a zone ``a``.

Theory of operation.  :class:`SitePolicy` is one concern of the
:class:`~director.policy.PlacementPolicy`, built from ``[director] replicas_per_site``
and ``[director] site``; everything here is pure.

* *Placement* orders the candidates of a blob in site rounds (:meth:`SitePolicy.rounds`):
  each site's best ``replicas_per_site`` nodes (one when there is no rule), then the next
  ones, so the first ``replicas`` candidates span as many sites as exist, and within a
  site as many zones.
* *The rule* (``replicas_per_site`` > 0): a site holding more copies than that is
  *crowded*.  That is only a fault while there is another site that could take copies (a
  registered node, up or not, of the write tier: :func:`holding_sites`): an installation
  of one site is never at fault.
* *Degraded writes.*  When a site is down, puts go to the sites that are up (placement
  only ever offers live nodes; durability first: the write still makes ``replicas``
  copies) and are queued for repair; the repairer keeps them queued until the site is
  back, then copies each to it and drops the extra copy of the crowded site
  (:meth:`SitePolicy.surplus`).  Repair, drain and level place new copies in sites with
  room first (:meth:`SitePolicy.split`), and leveling never moves a copy into a site that
  would then be crowded or out of a site the blob would then lack.
* *Reads* try the copies in the frontend's own site first (:meth:`SitePolicy.local_first`),
  then the others; every copy is verified whatever its site.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass

from director.nodes import DEFAULT_SITE, Node, NodeState

__all__ = ["DEFAULT_SITE", "SitePolicy", "holding_sites"]


@dataclass(frozen=True)
class SitePolicy:
    """How copies spread over sites, and which site this process reads from first."""

    #: At most this many copies of a blob in one site (0: no rule, only a preference).
    per_site: int = 0
    #: This process's site: reads try copies there first ("" = no preference).
    local: str = ""

    def __post_init__(self) -> None:
        if self.per_site < 0:
            raise ValueError(f"replicas_per_site must not be negative, got {self.per_site}")

    @property
    def enforced(self) -> bool:
        return self.per_site > 0

    # -- placement ------------------------------------------------------------------------

    def rounds(self, ordered: Sequence[Node]) -> list[Node]:
        """``ordered`` (best first) in site rounds: each site's first ``per_site`` nodes
        (one without a rule), then each site's next ones...; stable otherwise."""
        size = self.per_site or 1
        seen: Counter[str] = Counter()
        keyed = []
        for position, node in enumerate(ordered):
            keyed.append((seen[node.site] // size, position, node))
            seen[node.site] += 1
        keyed.sort(key=lambda t: (t[0], t[1]))
        return [node for _r, _p, node in keyed]

    def split(self, candidates: Sequence[Node], held: Iterable[str]
              ) -> tuple[list[Node], list[Node]]:
        """Candidates for new copies, given the sites of the copies that stay (``held``):
        those whose site has room (taking the first ``k`` of them never puts more than
        ``per_site`` copies in a site), in site rounds, and the rest in their order.
        Without a rule every candidate has room."""
        if not self.enforced:
            return list(candidates), []
        count = Counter(held)
        room, rest = [], []
        for node in self.rounds(candidates):
            if count[node.site] < self.per_site:
                count[node.site] += 1
                room.append(node)
            else:
                rest.append(node)
        order = {id(n): i for i, n in enumerate(candidates)}
        rest.sort(key=lambda n: order[id(n)])
        return room, rest

    def valid(self, held: Iterable[str]) -> int:
        """Copies that count under the rule: at most ``per_site`` per site."""
        count = Counter(held)
        if not self.enforced:
            return sum(count.values())
        return sum(min(c, self.per_site) for c in count.values())

    def crowded(self, held: Iterable[str], sites: Collection[str]) -> bool:
        """Whether copies in these sites break the rule: some site holds more than
        ``per_site`` while there is another site (``sites``: those that could take
        copies) to hold them."""
        if not self.enforced:
            return False
        count = Counter(held)
        return any(c > self.per_site for c in count.values()) and \
            len(set(sites) | set(count)) > 1

    def surplus(self, nodes: Sequence[Node]) -> list[Node]:
        """Copies beyond ``per_site`` in a site, among ``nodes`` (the counted copies, best
        to keep first): what repair drops once the blob has its copies elsewhere.  Only
        copies on active nodes are offered (a draining node's copy is the drainer's)."""
        if not self.enforced:
            return []
        kept: Counter[str] = Counter()
        out = []
        for node in sorted(nodes, key=lambda n: n.state is not NodeState.ACTIVE):
            if kept[node.site] < self.per_site:
                kept[node.site] += 1
            elif node.state is NodeState.ACTIVE:
                out.append(node)
        return out[::-1]  # the least preferred first

    # -- reads ----------------------------------------------------------------------------

    def local_first(self, order: Sequence[Node], usable: Callable[[Node], bool]
                    ) -> list[Node]:
        """A read order with the usable copies in this process's site moved to the front
        (stable: the load-weighted order is kept within each part)."""
        if not self.local:
            return list(order)
        near = [n for n in order if n.site == self.local and usable(n)]
        ids = {id(n) for n in near}
        return near + [n for n in order if id(n) not in ids]


def holding_sites(nodes: Iterable[Node], tier: str | None) -> frozenset[str]:
    """Sites that could take copies of a blob: those of registered nodes of ``tier``
    (None: any) that are not removed, dead or never added, up or not (a site that is down
    is still owed its copies)."""
    return frozenset(n.site for n in nodes
                     if n.state not in (NodeState.REMOVED, NodeState.DEAD, NodeState.NEW)
                     and (tier is None or n.tier == tier))

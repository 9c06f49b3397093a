"""Storage hierarchy as policy: tiers, their speed, and how many copies each holds.

Theory of operation.  ``[[director.tiers]]`` lists the tiers (a node belongs to the tier
it was registered with, ``objmail node add --tier``).  Each has a speed *rank* (0 =
fastest) and two replica counts: the copies a *hot* blob keeps on it (new blobs are hot)
and the copies a *cold* one keeps (not read for ``director.tier_cold_after``).  A blob's
*layout* is one of the two: tier name -> copies.  With ``ssd: 1/0`` and ``hdd: 1/2`` a
new blob gets one copy on an SSD node and one on an HDD node; once cold it has two HDD
copies; read again often it gets its SSD copy back.

One :class:`TierPolicy` is built from the config with the placement policy
(:class:`director.policy.PlacementPolicy.tiers`) and asked, purely, by:

* placement (:meth:`TierPolicy.arrange`): the rendezvous-ordered candidates rearranged so
  that the first ones fill the hot layout, tier by tier, the others follow as fallbacks
  (a failed write to one tier's node falls back to the same tier first);
* repair (:meth:`needs`: which tiers miss copies of a blob's layout) and drain (a copy
  leaving a node goes to the same tier: :meth:`same_tier_first`);
* leveling (:meth:`pools`: each tier levelled on its own, never across tiers);
* reads (:meth:`fastest_first`: the fastest tier holding a readable copy first);
* the tier job (:mod:`director.tiering`), which moves blobs between the two layouts.

Nodes of a tier no ``[[director.tiers]]`` names take no new copies and rank after every
named tier for reads.  Nothing here does I/O.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

from director.config import DirectorConfig
from director.nodes import Node

#: Layout: tier name -> copies wanted there.
Layout = Mapping[str, int]


@dataclass(frozen=True)
class Tier:
    """One tier: ``rank`` orders reads (0 = fastest); ``replicas`` and ``cold_replicas``
    are the copies a hot and a cold blob keep on it."""

    name: str
    rank: int
    replicas: int
    cold_replicas: int


@dataclass(frozen=True)
class TierPolicy:
    """The storage hierarchy (see the module docstring); tiers by rank, then name."""

    tiers: tuple[Tier, ...]

    def __post_init__(self) -> None:
        names = [t.name for t in self.tiers]
        if len(set(names)) != len(names):
            raise ValueError(f"tier names repeat: {names}")
        if not self.tiers or sum(t.replicas for t in self.tiers) < 1 \
                or sum(t.cold_replicas for t in self.tiers) < 1:
            raise ValueError("tiers need at least one hot and one cold copy in all")
        object.__setattr__(self, "tiers", tuple(sorted(self.tiers,
                                                       key=lambda t: (t.rank, t.name))))

    @classmethod
    def from_config(cls, dconf: DirectorConfig) -> TierPolicy | None:
        """The ``[[director.tiers]]`` hierarchy; None when none is configured."""
        if not dconf.tiers:
            return None
        return cls(tuple(Tier(t.name, t.rank, t.replicas, t.cold_replicas)
                         for t in dconf.tiers))

    # -- facts ----------------------------------------------------------------------------

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tiers)

    @property
    def hot(self) -> dict[str, int]:
        """The layout of new and hot blobs."""
        return {t.name: t.replicas for t in self.tiers if t.replicas}

    @property
    def cold(self) -> dict[str, int]:
        """The layout of cold blobs."""
        return {t.name: t.cold_replicas for t in self.tiers if t.cold_replicas}

    @property
    def fewest_copies(self) -> int:
        """The smaller of the two layouts' copy counts: an index entry with fewer
        counted copies is short whatever its layout."""
        return min(sum(self.hot.values()), sum(self.cold.values()))

    def layout(self, *, cold: bool) -> dict[str, int]:
        return self.cold if cold else self.hot

    def holds(self, tier: str) -> bool:
        """Whether nodes of ``tier`` take copies (some layout wants copies there)."""
        return any(t.name == tier and (t.replicas or t.cold_replicas) for t in self.tiers)

    def rank(self, tier: str) -> int:
        """Read preference of ``tier`` (unnamed tiers after every named one)."""
        for t in self.tiers:
            if t.name == tier:
                return t.rank
        return 1 << 30

    # -- decisions ------------------------------------------------------------------------

    @staticmethod
    def counts(nodes: Iterable[Node]) -> Counter[str]:
        """Copies per tier among ``nodes``."""
        return Counter(n.tier for n in nodes)

    @staticmethod
    def needs(have: Mapping[str, int], layout: Layout) -> dict[str, int]:
        """Copies each tier lacks for ``layout`` (tiers lacking none left out)."""
        return {t: w - have.get(t, 0) for t, w in layout.items() if w > have.get(t, 0)}

    @staticmethod
    def surplus(have: Mapping[str, int], layout: Layout) -> dict[str, int]:
        """Copies each tier holds beyond ``layout`` (tiers with none left out)."""
        return {t: n - layout.get(t, 0) for t, n in have.items() if n > layout.get(t, 0)}

    def matches(self, have: Mapping[str, int], layout: Layout) -> bool:
        return not self.needs(have, layout) and not self.surplus(have, layout)

    def wanted(self, have: Mapping[str, int], *, cold: bool, hot: bool) -> dict[str, int]:
        """The layout a blob with copies ``have`` per tier should have, by the rules the
        tier job moves blobs with: the cold one once ``cold`` (:func:`is_cold`); a blob
        already in the cold layout stays there until ``hot`` (:func:`is_hot`: promotion
        needs ``tier_hot_reads``, not one read after a demotion); anything else (a new
        blob, a mix of neither layout) the hot one."""
        if cold or (not hot and self.matches(have, self.cold)):
            return self.cold
        return self.hot

    def arrange(self, candidates: Sequence[Node], layout: Layout) -> list[Node]:
        """``candidates`` (in placement order) rearranged: first, for each tier by rank,
        its first ``layout[tier]`` candidates (the targets); then the rest of each tier
        that ``layout`` uses, by rank (fallbacks: a failed target's stand-in is of the
        fastest tier still short); then any others.  Order within a tier is kept."""
        by_tier: dict[str, list[Node]] = {}
        for node in candidates:
            by_tier.setdefault(node.tier, []).append(node)
        used = [t.name for t in self.tiers if layout.get(t.name, 0) > 0]
        targets = [n for name in used for n in by_tier.get(name, [])[:layout[name]]]
        rest = [n for name in used for n in by_tier.get(name, [])[layout[name]:]]
        taken = {id(n) for n in targets + rest}
        return targets + rest + [n for n in candidates if id(n) not in taken]

    @staticmethod
    def same_tier_first(candidates: Sequence[Node], tier: str) -> list[Node]:
        """Where a copy leaving a node of ``tier`` goes: that tier's candidates first."""
        return sorted(candidates, key=lambda n: n.tier != tier)

    def fastest_first(self, ordered: Sequence[Node], suspect: Collection[str] = ()
                      ) -> list[Node]:
        """Replicas in read order (:func:`director.placement.read_order`) with the fastest
        tier's first within each of its groups (live, suspect, not readable); the order
        within a tier (load-weighted) is kept."""
        def group(n: Node) -> int:
            if not n.readable:
                return 2
            return 1 if n.id in suspect else 0

        return sorted(ordered, key=lambda n: (group(n), self.rank(n.tier)))

    def pools(self, nodes: Iterable[Node]) -> list[list[Node]]:
        """``nodes`` split by tier, tiers by rank (levelling never moves across them)."""
        out: dict[str, list[Node]] = {}
        for node in nodes:
            out.setdefault(node.tier, []).append(node)
        return [out[name] for name in sorted(out, key=lambda t: (self.rank(t), t))]


def is_cold(accessed_before: float, reads: float, now: float, *, cold_after: float,
            hot_reads: float) -> bool:
    """Whether a blob is cold: last accessed (read or written) no later than
    ``cold_after`` seconds before ``now``, and its decayed reads below ``hot_reads``.

    :param accessed_before: an upper bound of its last access
        (:attr:`director.temperature.Heat.accessed_before`).
    """
    return accessed_before < now - cold_after and reads < hot_reads


def is_hot(reads: float, *, hot_reads: float) -> bool:
    """Whether a blob is hot enough to be promoted: its decayed reads reach
    ``hot_reads``."""
    return reads >= hot_reads

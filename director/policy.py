"""Placement policy: where copies of a blob may go and how many are wanted.

One :class:`PlacementPolicy` is built from the ``[director]`` config when the blob client
starts (:meth:`PlacementPolicy.from_config`) and asked by everything that places or
counts copies: puts (:mod:`director.placement` ranks the nodes it allows), repair, drain
and level.  Nothing else reads ``replicas``, ``write_quorum`` or ``write_tier``, so a
richer policy (more tiers, sites) changes this object and what it answers, not its
callers.  Each further concern is an object of its own held here: sites
(:class:`director.sites.SitePolicy`, ``replicas_per_site`` and the frontend's ``site``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from director.config import DirectorConfig
from director.nodes import Node, NodeState
from director.sites import SitePolicy
from director.tiers import TierPolicy


@dataclass(frozen=True)
class PlacementPolicy:
    """Where copies of a blob may go and how many are wanted: built once from the
    ``[director]`` config (:meth:`from_config`) and asked by placement, puts, repair,
    drain and level alike.  Defaults are the recommended values."""

    #: Copies of each blob (DirectorConfig.replicas).
    replicas: int = 2
    #: Copies a put must have made before it succeeds (DirectorConfig.write_quorum).
    write_quorum: int = 1
    #: Only nodes of this tier take new copies; None = any tier (DirectorConfig.write_tier).
    tier: str | None = "ssd"
    #: Weight grows as free_fraction ** (1 / free_root); 1 = proportional to free space.
    free_root: float = 3.0
    #: Nodes with less free space than this fraction of capacity take no new blobs.
    min_free_fraction: float = 0.02
    #: How strongly a node busier than its peers' mean is avoided (0 = ignore load).
    load_penalty: float = 0.5
    #: The storage hierarchy (``[[director.tiers]]``, :mod:`director.tiers`); None = one
    #: tier, ``tier``.  When set, ``replicas`` is its hot layout's copies and every tier
    #: it names takes copies.
    tiers: TierPolicy | None = None
    #: How copies spread over sites, and the site reads prefer (director.sites).
    sites: SitePolicy = field(default_factory=SitePolicy)

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ValueError(f"replicas must be at least 1, got {self.replicas}")
        if not 1 <= self.write_quorum <= self.replicas:
            raise ValueError(f"write_quorum must be 1..replicas ({self.replicas}), "
                             f"got {self.write_quorum}")
        if self.free_root < 1:
            raise ValueError(f"free_root must be at least 1, got {self.free_root}")
        if not 0 <= self.min_free_fraction < 1:
            raise ValueError(f"min_free_fraction must be in [0, 1), got {self.min_free_fraction}")
        if self.load_penalty < 0:
            raise ValueError(f"load_penalty must not be negative, got {self.load_penalty}")

    @classmethod
    def from_config(cls, dconf: DirectorConfig) -> PlacementPolicy:
        """The policy the ``[director]`` section describes."""
        sites = SitePolicy(dconf.replicas_per_site, dconf.site)
        tiers = TierPolicy.from_config(dconf)
        if tiers is not None:
            return cls(replicas=sum(tiers.hot.values()), write_quorum=dconf.write_quorum,
                       tier=None, tiers=tiers, sites=sites)
        return cls(replicas=dconf.replicas, write_quorum=dconf.write_quorum,
                   tier=dconf.write_tier or None, sites=sites)

    def may_hold(self, node: Node) -> bool:
        """Whether ``node`` may take new copies (before weighing how much room and load
        it has): an active node of the write tier, or of any tier of the hierarchy."""
        if node.state is not NodeState.ACTIVE:
            return False
        if self.tiers is not None:
            return self.tiers.holds(node.tier)
        return self.tier is None or node.tier == self.tier

    @property
    def min_copies(self) -> int:
        """Counted copies below which an index entry is short whatever its tier layout
        (the repairer's sweep; the per-tier check is the repair plan's)."""
        return self.tiers.fewest_copies if self.tiers is not None else self.replicas

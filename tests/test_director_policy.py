"""Unit tests of the placement policy: validation, built from config, who may hold copies."""

from __future__ import annotations

import pytest

from director.config import DirectorConfig
from director.nodes import NodeState
from director.policy import PlacementPolicy
from tests.test_director_placement import make_node


def test_policy_rejects_nonsense() -> None:
    """A policy with zero replicas, a root below 1 or a write quorum above its replicas is
    refused with the name of what is wrong."""
    with pytest.raises(ValueError, match="replicas"):
        PlacementPolicy(replicas=0)
    with pytest.raises(ValueError, match="free_root"):
        PlacementPolicy(free_root=0.5)
    with pytest.raises(ValueError, match="write_quorum"):
        PlacementPolicy(replicas=2, write_quorum=3)


def test_policy_from_config_says_who_may_hold_copies() -> None:
    """The policy built from [director] carries replicas, write quorum and write tier;
    only active nodes of that tier may take copies (an empty tier means any tier)."""
    policy = PlacementPolicy.from_config(
        DirectorConfig(replicas=3, write_quorum=2, write_tier="hdd"))
    assert (policy.replicas, policy.write_quorum, policy.tier) == (3, 2, "hdd")
    assert policy.may_hold(make_node(1, tier="hdd"))
    assert not policy.may_hold(make_node(2, tier="ssd"))
    assert not policy.may_hold(make_node(3, tier="hdd", state=NodeState.DRAINING))
    anywhere = PlacementPolicy.from_config(DirectorConfig(write_tier=""))
    assert anywhere.tier is None and anywhere.may_hold(make_node(4, tier="ssd"))

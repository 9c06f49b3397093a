"""Tests of opening the director's Redis state from the config."""

from __future__ import annotations

import asyncio
import hashlib
import uuid

import pytest

from director.errors import IndexLayoutMismatch
from director.keys import Keyspace
from director.redisstate import RedisState
from ops.config import ClusterConfig, DirectorConfig
from tests.conftest import RunningRedis


def test_registry_index_and_queue_share_one_runner(redis_cluster: RunningRedis) -> None:
    """One open gives registry, index and repair queue over the same connection pool,
    enough for a put's bookkeeping: node numbers, locations, a repair entry."""
    keys = Keyspace(f"t-{uuid.uuid4().hex[:8]}:")
    cluster = ClusterConfig(redis_nodes=tuple(redis_cluster.nodes))
    blob = hashlib.sha256(b"state").hexdigest()

    async def go() -> tuple[bool, tuple[int, ...], int]:
        async with await RedisState.open(cluster, DirectorConfig(index_buckets=128),
                                         keys=keys, auth=redis_cluster.auth) as state:
            node = await state.registry.add("n1", "127.255.0.1:1", zone="a", tier="ssd")
            await state.index.add_locations(blob, [node.number])
            await state.repairs.add([blob])
            shared = state.index.runner is state.registry.runner is state.repairs.runner
            return shared, await state.index.locations(blob), await state.repairs.backlog()

    assert asyncio.run(go()) == (True, (1,), 1)


def test_config_bucket_count_must_match_the_index(redis_cluster: RunningRedis) -> None:
    """A director configured with another index_buckets than the index has is refused."""
    keys = Keyspace(f"t-{uuid.uuid4().hex[:8]}:")
    cluster = ClusterConfig(redis_nodes=tuple(redis_cluster.nodes))

    async def go(buckets: int) -> None:
        state = await RedisState.open(cluster, DirectorConfig(index_buckets=buckets), keys=keys,
                                      auth=redis_cluster.auth)
        await state.aclose()

    asyncio.run(go(1024))
    with pytest.raises(IndexLayoutMismatch, match="created with 1024 buckets"):
        asyncio.run(go(2048))

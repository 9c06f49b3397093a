"""A job's persisted progress against the real Redis Cluster, writes fenced by its lease."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from director.errors import LeaseLost
from director.jobstate import JobState, integer, number
from director.keys import Keyspace
from director.lease import Lease
from director.redisconn import ClusterRunner
from tests.conftest import RunningRedis


def test_state_round_trips_and_is_fenced_by_the_lease(redis_cluster: RunningRedis) -> None:
    """The lease holder saves progress; a director without the lease cannot overwrite it
    (LeaseLost, nothing written); anyone can read it; clear removes it."""
    async def go() -> None:
        runner = ClusterRunner(redis_cluster.client())
        keys = Keyspace(f"t-{uuid.uuid4().hex[:8]}:")
        try:
            holder = Lease(runner, keys, "drain:n1", ttl=30)
            other = Lease(runner, keys, "drain:n1", ttl=30)
            assert await holder.acquire()
            mine = JobState(runner, keys, "drain:n1", lease=holder)
            theirs = JobState(runner, keys, "drain:n1", lease=other)
            reader = JobState(runner, keys, "drain:n1")
            assert await reader.load() == {}
            await mine.save({"cursor": 17, "moved": 3, "swept_at": 12.5, "phase": "blobs"})
            with pytest.raises(LeaseLost):
                await theirs.save({"cursor": 999})
            fields = await reader.load()
            assert fields == {"cursor": "17", "moved": "3", "swept_at": "12.5",
                              "phase": "blobs"}
            assert integer(fields, "cursor") == 17 and number(fields, "swept_at") == 12.5
            assert integer(fields, "absent", 4) == 4
            await mine.forget("phase")
            assert "phase" not in await reader.load()
            await holder.release()
            with pytest.raises(LeaseLost):
                await mine.save({"cursor": 18})
            await reader.clear()
            assert await reader.load() == {}
        finally:
            await runner.aclose()

    asyncio.run(go())

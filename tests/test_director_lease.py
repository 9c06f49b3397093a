"""Job leases against the real Redis Cluster: one holder at a time, renewals, expiry."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from director.errors import LeaseLost
from director.keys import Keyspace
from director.lease import Lease, new_token
from director.redisconn import ClusterRunner, Command
from tests.conftest import RunningRedis


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def with_runner(redis_cluster: RunningRedis,
                body: Callable[[ClusterRunner, Keyspace], Awaitable[Any]]) -> Any:
    async def go() -> Any:
        runner = ClusterRunner(redis_cluster.client())
        try:
            return await body(runner, Keyspace(f"t-{uuid.uuid4().hex[:8]}:"))
        finally:
            await runner.aclose()

    return asyncio.run(go())


def test_one_holder_at_a_time(redis_cluster: RunningRedis) -> None:
    """While one director holds a job's lease another cannot take it; the holder's token
    names it; once released the other can."""
    async def body(runner: ClusterRunner, keys: Keyspace) -> None:
        a = Lease(runner, keys, "repair", ttl=30)
        b = Lease(runner, keys, "repair", ttl=30)
        other_job = Lease(runner, keys, "level", ttl=30)
        assert await a.acquire() and a.held
        assert not await b.acquire() and not b.held
        assert await other_job.acquire(), "leases are per job"
        assert await b.holder() == a.token
        assert await a.release()
        assert await b.holder() is None
        assert await b.acquire()
        assert not await a.release(), "a release never deletes another holder's lease"
        assert await b.holder() == b.token

    with_runner(redis_cluster, body)


def test_acquire_is_idempotent_for_its_holder(redis_cluster: RunningRedis) -> None:
    """Acquiring a lease one holds already succeeds (a batch retried after a failover
    must not lock its own holder out)."""
    async def body(runner: ClusterRunner, keys: Keyspace) -> None:
        token = new_token()
        first = Lease(runner, keys, "drain:n1", ttl=30, token=token)
        again = Lease(runner, keys, "drain:n1", ttl=30, token=token)
        assert await first.acquire()
        assert await again.acquire()

    with_runner(redis_cluster, body)


def test_expired_lease_is_lost_to_the_next_director(redis_cluster: RunningRedis) -> None:
    """A holder that let its lease run out finds it taken: renewing raises LeaseLost and
    releasing leaves the new holder alone."""
    async def body(runner: ClusterRunner, keys: Keyspace) -> None:
        slow = Lease(runner, keys, "level", ttl=0.2)
        fast = Lease(runner, keys, "level", ttl=30)
        assert await slow.acquire()
        await asyncio.sleep(0.4)
        assert await fast.acquire()
        with pytest.raises(LeaseLost):
            await slow.renew()
        assert not slow.held
        with pytest.raises(LeaseLost):
            await slow.keep()
        assert not await slow.release()
        assert await fast.holder() == fast.token

    with_runner(redis_cluster, body)


def test_keep_renews_after_a_third_of_the_ttl(redis_cluster: RunningRedis) -> None:
    """keep() is free until a third of the TTL has passed on the injected clock, then
    pushes the expiry a full TTL ahead."""
    async def body(runner: ClusterRunner, keys: Keyspace) -> tuple[int, int, int]:
        clock = Clock()
        lease = Lease(runner, keys, "repair", ttl=10, clock=clock)
        assert await lease.acquire()
        await asyncio.sleep(0.3)

        async def pttl() -> int:
            (ms,) = await runner.run("t", [Command(lease.key, ("PTTL", lease.key))])
            return int(ms)

        before = await pttl()
        clock.now += 3.0  # less than 10 / 3
        await lease.keep()
        unchanged = await pttl()
        clock.now += 1.0
        await lease.keep()
        renewed = await pttl()
        return before, unchanged, renewed

    before, unchanged, renewed = with_runner(redis_cluster, body)
    assert before <= 9800 and unchanged <= before
    assert renewed > 9800


def test_lease_key_names_the_job_under_the_prefix() -> None:
    """The lease and the job state share the job's hash tag under the prefix."""
    keys = Keyspace("objmail:")
    assert keys.lease("drain:objstored-1") == "objmail:lease:{drain:objstored-1}"
    assert keys.job("drain:objstored-1") == "objmail:job:{drain:objstored-1}"
    with pytest.raises(ValueError):
        keys.lease("bad job")

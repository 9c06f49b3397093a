"""Tests of the under-replication queue against the real Redis Cluster, clock injected."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from director.keys import InvalidBlobId, Keyspace
from director.redisconn import ClusterRunner
from director.repairqueue import RepairQueue
from tests.conftest import RunningRedis


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def blob_ids(n: int, salt: str) -> list[str]:
    return [hashlib.sha256(f"{salt}{i}".encode()).hexdigest() for i in range(n)]


def with_queue(redis_cluster: RunningRedis, clock: Clock,
               body: Callable[[RepairQueue], Awaitable[Any]]) -> Any:
    async def go() -> Any:
        runner = ClusterRunner(redis_cluster.client())
        queue = RepairQueue(runner, Keyspace(f"t-{uuid.uuid4().hex[:8]}:"), clock=clock)
        try:
            return await body(queue)
        finally:
            await runner.aclose()

    return asyncio.run(go())


def test_queue_deduplicates_and_keeps_the_earliest_due_time(
        redis_cluster: RunningRedis) -> None:
    """A blob reported again is one entry, still due at its first time."""
    clock = Clock()
    ids = blob_ids(5, "dedup")

    async def body(q: RepairQueue) -> tuple[int, int, int, list[str]]:
        first = await q.add(ids[:3])
        again = await q.add(ids, delay=60)
        backlog = await q.backlog()
        return first, again, backlog, await q.claim(10)

    first, again, backlog, claimed = with_queue(redis_cluster, clock, body)
    assert (first, again, backlog) == (3, 2, 5)
    assert sorted(claimed) == sorted(ids[:3])  # the two new ones are due in a minute


def test_claims_are_leases(redis_cluster: RunningRedis) -> None:
    """Claimed blobs are not handed out again until the lease runs out; done ones never."""
    clock = Clock()
    ids = blob_ids(40, "lease")

    async def body(q: RepairQueue) -> tuple[Any, ...]:
        await q.add(ids)
        first = await q.claim(100, lease=30)
        during = await q.claim(100, lease=30)
        await q.done(first[:10])
        clock.now += 31
        after = await q.claim(100, lease=30)
        return first, during, after, await q.backlog()

    first, during, after, backlog = with_queue(redis_cluster, clock, body)
    assert sorted(first) == sorted(ids)
    assert during == []
    assert sorted(after) == sorted(first[10:])
    assert backlog == 30


def test_claim_limit_is_respected_and_every_entry_comes_out_once(
        redis_cluster: RunningRedis) -> None:
    """Small claims never exceed their limit and, shard after shard, hand out every
    queued blob exactly once."""
    clock = Clock()
    ids = blob_ids(100, "limit")

    async def body(q: RepairQueue) -> list[list[str]]:
        await q.add(ids)
        rounds = []
        for _ in range(60):
            got = await q.claim(7, lease=600)
            rounds.append(got)
            if not got and await q.backlog() == 100 and sum(map(len, rounds)) == 100:
                break
        return rounds

    rounds = with_queue(redis_cluster, clock, body)
    assert all(len(r) <= 7 for r in rounds)
    everything = [b for r in rounds for b in r]
    assert sorted(everything) == sorted(ids)


def test_queue_refuses_non_blob_ids(redis_cluster: RunningRedis) -> None:
    """Only blob ids can be queued."""

    async def body(q: RepairQueue) -> None:
        with pytest.raises(InvalidBlobId):
            await q.add(["../etc"])

    with_queue(redis_cluster, Clock(), body)


def test_retry_later_puts_claimed_entries_back_with_a_delay(
        redis_cluster: RunningRedis) -> None:
    """A claimed blob sent back with a delay is due again only after it (not after the
    claim's lease); with no delay it is due at once."""
    clock = Clock()
    ids = blob_ids(4, "retry")

    async def body(q: RepairQueue) -> tuple[Any, ...]:
        await q.add(ids)
        claimed = await q.claim(10, lease=300)
        await q.retry_later(claimed[:2], 60)
        await q.retry_later(claimed[2:3], 0)
        now = await q.claim(10, lease=300)
        clock.now += 61
        later = await q.claim(10, lease=300)
        return claimed, now, later

    claimed, now, later = with_queue(redis_cluster, clock, body)
    assert now == claimed[2:3]
    assert sorted(later) == sorted(claimed[:2])


def test_blobs_with_fewer_copies_left_are_claimed_first(redis_cluster: RunningRedis) -> None:
    """Claims take due entries by priority: no copies left, then one, then the others
    (a priority queued later still goes first); a normal entry queued again with a more
    urgent priority moves up; retries and leases keep an entry's priority; entries not
    yet due wait whatever their priority; backlog(urgent=True) counts the prioritised."""
    clock = Clock()
    normal, one, none, later = (blob_ids(6, "n"), blob_ids(6, "o"), blob_ids(3, "z"),
                                blob_ids(2, "l"))

    async def body(q: RepairQueue) -> tuple[Any, ...]:
        assert await q.add(normal) == 6
        assert await q.add(one, priority=1) == 6
        assert await q.add(none, priority=0) == 3
        assert await q.add(later, priority=0, delay=60) == 2
        assert await q.add(normal[:2], priority=1) == 0  # moved up, not new
        assert await q.add(one[:1]) == 0                  # a normal add keeps priority 1
        counts = (await q.backlog(), await q.backlog(urgent=True))
        first = await q.claim(4, lease=30)
        second = await q.claim(5, lease=30)
        await q.retry_later(first, 10)
        clock.now += 31  # every lease ran out; the retries are due too
        again = await q.claim(100, lease=30)
        clock.now += 60
        last = await q.claim(100)
        return counts, first, second, again, last

    counts, first, second, again, last = with_queue(redis_cluster, clock, body)
    assert counts == (17, 13)
    assert set(first[:3]) == set(none) and first[3] in one + normal[:2]
    assert set(second) <= set(one + normal[:2]) and len(second) == 5
    urgent = set(none) | set(one) | set(normal[:2])
    assert set(again[:len(urgent)]) == urgent, "priorities survive leases and retries"
    assert set(again[len(urgent):]) == set(normal[2:])
    assert set(again[:3]) == set(none)
    assert set(last) >= set(later)

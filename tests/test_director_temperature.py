"""Tests of the read temperature: decayed counters in the real Redis Cluster, clock
injected, and the frontends' sampler."""

from __future__ import annotations

import asyncio
import hashlib
import random
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from director.keys import HEAT_SHARDS, Keyspace
from director.redisconn import ClusterRunner
from director.temperature import (
    RESCALE_HALF_LIVES,
    ReadSampler,
    TemperatureSettings,
    TemperatureStore,
    decay_factor,
    forward_weight,
)
from tests.conftest import RunningRedis

HOUR = 3600.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def blob_ids(n: int, salt: str) -> list[str]:
    return [hashlib.sha256(f"{salt}{i}".encode()).hexdigest() for i in range(n)]


def with_store(redis_cluster: RunningRedis, clock: Clock,
               body: Callable[[TemperatureStore], Awaitable[Any]],
               settings: TemperatureSettings | None = None) -> Any:
    async def go() -> Any:
        runner = ClusterRunner(redis_cluster.client())
        store = TemperatureStore(runner, Keyspace(f"t-{uuid.uuid4().hex[:8]}:"),
                                 settings or TemperatureSettings(half_life=HOUR), clock=clock)
        try:
            return await body(store)
        finally:
            for shard in range(HEAT_SHARDS):
                k = store.keys
                await runner.client.delete(k.heat(shard), k.heat_seen(shard),
                                           k.heat_meta(shard))
            await runner.aclose()

    return asyncio.run(go())


def test_decay_math_halves_each_half_life() -> None:
    """A forward-decayed read is worth 1 at its time and half of it a half-life later."""
    assert forward_weight(100.0, 100.0, 10.0) * decay_factor(100.0, 100.0, 10.0) == 1.0
    assert forward_weight(130.0, 100.0, 10.0) * decay_factor(140.0, 100.0, 10.0) == 0.5


def test_counts_decay_with_the_half_life(redis_cluster: RunningRedis) -> None:
    """Reads recorded now count fully; an hour later (the half-life) half; reads added
    later count fully on top of the decayed ones."""
    clock = Clock()
    a, b = blob_ids(2, "decay")

    async def body(store: TemperatureStore) -> list[dict[str, float]]:
        seen = []
        await store.record({a: 8.0, b: 2.0})
        seen.append({k: h.reads for k, h in (await store.lookup([a, b])).items()})
        clock.now += HOUR
        seen.append({k: h.reads for k, h in (await store.lookup([a, b])).items()})
        await store.record({b: 4.0})
        clock.now += HOUR
        seen.append({k: h.reads for k, h in (await store.lookup([a, b])).items()})
        seen.append(dict(await store.hottest(2)))
        return seen

    now, hour, two = with_store(redis_cluster, clock, body)[:3]
    assert now == pytest.approx({a: 8.0, b: 2.0})
    assert hour == pytest.approx({a: 4.0, b: 1.0})
    assert two == pytest.approx({a: 2.0, b: 2.5})


def test_hottest_are_ordered_and_last_access_kept(redis_cluster: RunningRedis) -> None:
    """The hottest list is ordered by decayed reads across shards; a write is an access
    that adds no reads."""
    clock = Clock()
    ids = blob_ids(20, "order")

    start = clock.now

    async def body(store: TemperatureStore) -> tuple[list[tuple[str, float]], Any]:
        unknown = await store.lookup([ids[11]])  # before anything was recorded
        await store.record({bid: float(i + 1) for i, bid in enumerate(ids[:10])})
        clock.now += 60
        await store.record({ids[10]: 0.0, ids[11]: 0.0})
        clock.now += 60
        return await store.hottest(3), (unknown, await store.lookup(ids[:12]))

    keys = Keyspace()
    # A blob of ids[0]'s shard, never recorded: its shard began at ``start``.
    sibling = next(b for b in blob_ids(2000, "sibling")
                   if keys.heat_shard_of(b) == keys.heat_shard_of(ids[0]) and b not in ids)

    async def body_and_sibling(store: TemperatureStore) -> Any:
        got = await body(store)
        return got, await store.lookup([sibling])

    (hottest, (unknown, heat)), near = with_store(redis_cluster, clock, body_and_sibling)
    assert near[sibling].last_access is None
    assert near[sibling].accessed_before == pytest.approx(start)
    assert [bid for bid, _r in hottest] == [ids[9], ids[8], ids[7]]
    assert heat[ids[0]].last_access == pytest.approx(start)
    assert heat[ids[10]].reads == 0 and heat[ids[10]].last_access == pytest.approx(start + 60)
    # Nothing known of a blob of a shard never written: it counts as accessed just now.
    assert unknown[ids[11]].last_access is None
    assert unknown[ids[11]].accessed_before == pytest.approx(start)


def test_memory_stays_bounded_and_the_floor_remembers(redis_cluster: RunningRedis) -> None:
    """Each shard keeps at most ``keep`` entries, the hottest reads and the latest
    accesses; a trimmed blob's last access is bounded by its shard's floor."""
    clock = Clock()
    keep = 16
    ids = blob_ids(HEAT_SHARDS * keep * 3, "bound")
    order = {bid: i for i, bid in enumerate(ids)}

    async def body(store: TemperatureStore) -> tuple[tuple[int, int], Any, Any]:
        for start in range(0, len(ids), 500):
            await store.record({bid: 1.0 + order[bid] for bid in ids[start:start + 500]})
            clock.now += 1
        return await store.sizes(), await store.lookup([ids[0], ids[-1]]), \
            await store.hottest(5)

    sizes, heat, hottest = with_store(redis_cluster, clock, body,
                                      TemperatureSettings(half_life=HOUR, keep=keep))
    assert sizes[0] <= HEAT_SHARDS * keep and sizes[1] <= HEAT_SHARDS * keep
    assert sizes[0] >= HEAT_SHARDS * keep * 0.9  # every shard used, none starved
    first, last = heat[ids[0]], heat[ids[-1]]
    assert first.last_access is None and first.reads == 0
    assert 0 < first.floor < clock.now and first.accessed_before >= clock.now - 10
    assert last.last_access is not None and last.reads > 0
    assert [b for b, _r in hottest] == sorted(ids, key=order.__getitem__, reverse=True)[:5]


def test_a_shard_is_rescaled_lazily_after_many_half_lives(redis_cluster: RunningRedis
                                                          ) -> None:
    """Scores relative to an old landmark are rescaled by the next write, and read the
    same decayed counts as before."""
    clock = Clock()
    a, b = blob_ids(2, "rescale")
    half = 10.0

    async def body(store: TemperatureStore) -> tuple[float, float, float]:
        await store.record({a: 2.0 ** 20})
        clock.now += half * (RESCALE_HALF_LIVES - 12)
        before = (await store.lookup([a]))[a].reads
        clock.now += half * 13  # past the rescale point
        await store.record({b: 1.0})
        after = (await store.lookup([a, b]))
        return before, after[a].reads, after[b].reads

    before, after, fresh = with_store(redis_cluster, clock, body,
                                      TemperatureSettings(half_life=half))
    assert before == pytest.approx(2.0 ** 20 / 2 ** (RESCALE_HALF_LIVES - 12))
    assert after == pytest.approx(before / 2 ** 13)
    assert fresh == pytest.approx(1.0)


def test_sampler_batches_and_weighs_sampled_reads(redis_cluster: RunningRedis) -> None:
    """Reads are counted in memory and written in one flush; with a sample of 1/4 each
    sampled read counts 4, so the estimate stays unbiased; a full batch drops reads."""
    clock = Clock()
    a, b, c = blob_ids(3, "sampler")

    async def body(store: TemperatureStore) -> tuple[float, float, int, int]:
        sampler = ReadSampler(store, TemperatureSettings(sample=0.25, max_pending=2),
                              rng=random.Random(3))
        for _ in range(400):
            sampler.read(a)
        for _ in range(40):
            sampler.read(b)
        for _ in range(40):
            sampler.read(c)  # a third blob: the batch holds two
        before = (await store.lookup([a]))[a].reads
        await sampler.flush()
        heat = await store.lookup([a, b, c])
        await sampler.aclose()
        return before, heat[a].reads, sum(1 for h in heat.values() if h.reads), \
            sampler.stats.dropped

    before, after, recorded, dropped = with_store(redis_cluster, clock, body)
    assert before == 0
    assert 300 <= after <= 500 and after % 4 == 0
    assert recorded == 2 and dropped > 0


def test_sampler_flushes_off_the_read_path(redis_cluster: RunningRedis) -> None:
    """A read only updates a dict; the flush task of the event loop writes the batch
    once its interval has passed (the wait is the test's own)."""
    clock = Clock()
    a, b = blob_ids(2, "offpath")

    async def body(store: TemperatureStore) -> tuple[Any, Any]:
        tick = asyncio.Event()

        async def sleep(_seconds: float) -> None:
            await tick.wait()
            tick.clear()

        sampler = ReadSampler(store, sleep=sleep)
        sampler.read(a)
        sampler.wrote(b)
        await asyncio.sleep(0)  # the flush task starts and waits for its tick
        before = await store.lookup([a, b])
        tick.set()
        while sampler.stats.flushes == 0:
            await asyncio.sleep(0.01)
        after = await store.lookup([a, b])
        await sampler.aclose()
        return before, after

    before, after = with_store(redis_cluster, clock, body)
    assert before[a].reads == 0 and before[b].last_access is None
    assert after[a].reads == pytest.approx(1.0) and after[a].last_access == clock.now
    assert after[b].reads == 0 and after[b].last_access == clock.now


def test_closing_waits_for_a_batch_being_sent(redis_cluster: RunningRedis) -> None:
    """A client closed while its flush task is sending a batch (a slow Redis) waits for
    that send instead of cancelling it: the batch was taken out of the pending reads, so
    a cancelled send would lose them."""
    clock = Clock()
    (a,) = blob_ids(1, "closing")

    async def body(store: TemperatureStore) -> float:
        sending = asyncio.Event()

        async def sleep(_seconds: float) -> None:
            sending.set()  # returns at once: the task goes on into its send

        sampler = ReadSampler(store, sleep=sleep)
        for _ in range(5):
            sampler.read(a)
        await sending.wait()  # the task now waits on Redis inside its send
        assert sampler.stats.flushes == 0
        await sampler.aclose()
        return (await store.lookup([a]))[a].reads

    assert with_store(redis_cluster, clock, body) == pytest.approx(5.0)

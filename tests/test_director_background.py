"""The drivers of background work: PassControl checkpoints and the LoopingCall loop,
on an injected task.Clock (leases against the real Redis Cluster where they matter)."""

from __future__ import annotations

import asyncio
import uuid
from typing import cast

from twisted.internet import task
from twisted.internet.interfaces import IReactorTime

from director.background import Loop, PassControl, PassStats, RateLimiter, TokenBucket
from director.errors import LeaseHeld
from director.keys import Keyspace
from director.lease import Lease
from director.redisconn import ClusterRunner
from tests.conftest import RunningRedis


async def settle() -> None:
    """Let tasks started by the clock run to their end."""
    for _ in range(10):
        await asyncio.sleep(0)


def test_checkpoint_honours_item_limit_and_stop_request() -> None:
    """A pass may go on until its item limit or a stop request; then it is marked
    interrupted; progress sees every checkpoint."""
    async def go() -> None:
        seen: list[int] = []
        stats = PassStats(job="t")
        control = PassControl(max_items=2, progress=lambda s: seen.append(s.items))
        stats.items = 1
        assert await control.checkpoint(stats) and not stats.interrupted
        stats.items = 2
        assert not await control.checkpoint(stats) and stats.interrupted
        assert seen == [1, 2]
        stop = [False]
        other = PassStats(job="t")
        control = PassControl(stop=lambda: stop[0])
        assert await control.checkpoint(other)
        stop[0] = True
        assert not await control.checkpoint(other) and other.interrupted

    asyncio.run(go())


def test_checkpoint_stops_a_pass_whose_lease_was_lost(redis_cluster: RunningRedis) -> None:
    """A pass whose lease ran out and was taken by another director stops at its next
    checkpoint."""
    async def go() -> None:
        runner = ClusterRunner(redis_cluster.client())
        keys = Keyspace(f"t-{uuid.uuid4().hex[:8]}:")
        try:
            now = [0.0]
            mine = Lease(runner, keys, "repair", ttl=0.3, clock=lambda: now[0])
            assert await mine.acquire()
            control = PassControl(lease=mine)
            stats = PassStats(job="repair")
            assert await control.checkpoint(stats)
            await asyncio.sleep(0.5)
            assert await Lease(runner, keys, "repair", ttl=30).acquire()
            now[0] = 1.0
            assert not await control.checkpoint(stats)
            assert control.lost and stats.interrupted
        finally:
            await runner.aclose()

    asyncio.run(go())


def test_loop_runs_work_on_the_injected_clock() -> None:
    """run_forever's loop runs its work once per interval of the injected clock, not
    before the first interval, and a failing or lease-held run does not stop it."""
    async def go() -> None:
        clock = task.Clock()
        calls: list[float] = []
        outcomes = iter([None, RuntimeError("boom"), LeaseHeld("repair", "other"), None])

        async def work() -> None:
            calls.append(clock.seconds())
            outcome = next(outcomes)
            if outcome is not None:
                raise outcome

        loop = Loop(cast(IReactorTime, clock), 30.0, "repair", work)
        loop.start()
        await settle()
        assert calls == [] and loop.running
        for _ in range(4):
            clock.advance(30.0)
            await settle()
        assert calls == [30.0, 60.0, 90.0, 120.0]
        assert loop.failures == 1 and loop.running
        await loop.stop()
        clock.advance(60.0)
        await settle()
        assert len(calls) == 4 and not loop.running

    asyncio.run(go())


def test_loop_waits_for_a_slow_pass_and_stop_cancels_it() -> None:
    """A pass longer than the interval is not overlapped by the next one; stop() cancels
    a pass in progress and lets its cleanup run."""
    async def go() -> None:
        clock = task.Clock()
        started = 0
        cleaned = asyncio.Event()
        gate = asyncio.Event()

        async def work() -> None:
            nonlocal started
            started += 1
            try:
                await gate.wait()
            finally:
                cleaned.set()

        loop = Loop(cast(IReactorTime, clock), 10.0, "drain", work)
        loop.start()
        clock.advance(10.0)
        await settle()
        clock.advance(10.0)
        clock.advance(10.0)
        await settle()
        assert started == 1, "no second pass while the first runs"
        await loop.stop()
        assert cleaned.is_set() and not loop.running

    asyncio.run(go())


def test_loop_reports_passes_to_job_metrics() -> None:
    """Each run on the injected clock moves the job metrics: a success sets the
    last-success time and the duration, a failure counts, a run that found the lease
    held changes neither; progress reported by the pass shows."""
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from runtime.metrics import JobMetrics, new_registry

    def value(name: str) -> float | None:
        for family in text_string_to_metric_families(generate_latest(registry).decode()):
            for s in family.samples:
                if s.name == name and s.labels == {"job": "repair"}:
                    return s.value
        return None

    clock = task.Clock()
    registry = new_registry("directord", "t")
    jobs = JobMetrics(registry, "directord", clock.seconds)

    async def go() -> None:
        outcomes = iter([None, RuntimeError("boom"), LeaseHeld("repair", "other")])

        async def work() -> None:
            assert loop.recorder is not None
            loop.recorder.progress(3, 10)
            clock.advance(2.0)  # the pass takes two seconds of the clock
            outcome = next(outcomes)
            if outcome is not None:
                raise outcome

        loop = Loop(cast(IReactorTime, clock), 30.0, "repair", work, jobs.job("repair"))
        loop.start()
        clock.advance(30.0)
        await settle()
        assert value("directord_job_last_success_timestamp_seconds") == 32.0
        assert value("directord_job_duration_seconds") == 2.0
        assert (value("directord_job_pass_items"), value("directord_job_pass_items_expected")) \
            == (3, 10)
        clock.advance(30.0)
        await settle()
        assert value("directord_job_failures_total") == 1
        clock.advance(30.0)
        await settle()
        assert value("directord_job_failures_total") == 1
        assert value("directord_job_last_success_timestamp_seconds") == 32.0
        assert value("directord_job_running") == 0
        await loop.stop()

    asyncio.run(go())


def test_token_bucket_paces_to_its_rate() -> None:
    """A bucket of 100 units/s lets one second's worth through at once, then makes each
    taker wait until its units are paid for; an item larger than the burst passes and
    the next waits for it; a quiet spell refills it only up to the burst."""
    clock = task.Clock()
    bucket = TokenBucket(100, clock=clock.seconds)
    assert bucket.take(60) == 0 and bucket.take(40) == 0
    assert bucket.take(50) == 0.5
    clock.advance(0.5)
    assert bucket.take(0) == 0
    assert bucket.take(300) == 3.0  # larger than the burst: it goes, the debt is paid later
    clock.advance(3.0)
    assert bucket.take(1) == 0.01
    clock.advance(60)
    assert bucket.take(100) == 0 and bucket.take(100) == 1.0
    assert TokenBucket(0, clock=clock.seconds).take(10**12) == 0  # no limit


def test_rate_limiter_waits_for_the_total_and_each_source() -> None:
    """With 100/s in total and 60/s per source, one source is held to 60/s while two
    together share 100/s; moving at the waits' pace keeps both limits."""
    clock = task.Clock()
    limiter = RateLimiter(100, 60, clock=clock.seconds)
    assert limiter.take("a", 60) == 0
    assert limiter.take("a", 30) == 0.5       # a's own bucket is empty
    assert limiter.take("b", 10) == 0         # the total still had 10 left
    assert limiter.take("b", 50) == 0.5       # now the total is 50 in debt
    # Steady movers, each waiting as told: beyond the first burst, at most the rates.
    one = RateLimiter(100, 60, clock=clock.seconds)
    start, moved = clock.seconds(), 0
    for _ in range(200):
        clock.advance(one.take("a", 6))
        moved += 6
    assert moved - 60 <= 60 * (clock.seconds() - start) < moved
    both = RateLimiter(100, 60, clock=clock.seconds)
    start, moved = clock.seconds(), 0
    for i in range(400):
        clock.advance(both.take("ab"[i % 2], 5))
        moved += 5
    assert moved - 100 <= 100 * (clock.seconds() - start) < moved
    assert not RateLimiter(0, 0, clock=clock.seconds).limited

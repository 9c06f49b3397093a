"""The drivers of background work: PassControl checkpoints and the LoopingCall loop,
on an injected task.Clock (leases against the real Redis Cluster where they matter)."""

from __future__ import annotations

import asyncio
import uuid
from typing import cast

from twisted.internet import task
from twisted.internet.interfaces import IReactorTime

from director.background import Loop, PassControl, PassStats
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

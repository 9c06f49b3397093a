"""objstored's expiry sweep as a background job: steps on an injected clock, a position
kept across restarts, and the job metrics it moves.  A real LMDB store in tmp_path."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import task
from twisted.internet.interfaces import IReactorTime

from objstore.expiry import STATE_FILE, ExpirySweep
from objstore.groupcommit import GroupCommitter
from objstore.items import StoreOp
from objstore.lmdbstore import LmdbStore
from runtime.metrics import JobMetrics, new_registry

MIB = 1024 * 1024
NOW = 1_800_000_000.0


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LmdbStore]:
    now = [NOW]
    s = LmdbStore(tmp_path / "db", map_size=64 * MIB, max_item_size=MIB, clock=lambda: now[0])
    for i in range(25):
        s.execute(StoreOp(b"set", b"k%02d" % i, b"v", exptime=5 if i % 2 else 0))
    now[0] += 10  # the odd keys (12 of them) have expired
    yield s
    s.close()


def as_reactor(clock: task.Clock) -> IReactorTime:
    return cast(IReactorTime, clock)


class Job:
    """The expiry job's samples in a registry."""

    def __init__(self, clock: task.Clock) -> None:
        self.registry = new_registry("objstore", "t")
        self.jobs = JobMetrics(self.registry, "objstore", clock.seconds)

    def __getitem__(self, name: str) -> float | None:
        for family in text_string_to_metric_families(generate_latest(self.registry).decode()):
            for s in family.samples:
                if s.name == f"objstore_job_{name}" and s.labels == {"job": "expiry"}:
                    return s.value
        return None


def test_a_pass_walks_the_store_in_steps_and_moves_the_job_metrics(
        store: LmdbStore, tmp_path: Path) -> None:
    """One step per interval of the clock, ``batch`` keys each; progress shows keys
    examined of the items there were; the pass that wraps deletes every expired item and
    sets the last success and the duration."""
    clock = task.Clock()
    job = Job(clock)
    sweep = ExpirySweep(store, tmp_path / STATE_FILE, as_reactor(clock), job.jobs.job("expiry"), batch=10)
    sweep.run_forever(60.0)
    clock.advance(59.0)
    assert job["pass_items"] is None, "no step before the first interval"
    clock.advance(1.0)
    assert (job["pass_items"], job["pass_items_expected"], job["running"]) == (10, 25, 1)
    assert job["last_success_timestamp_seconds"] is None
    clock.advance(60.0)
    clock.advance(60.0)
    assert sweep.passes == 1 and store.info()["curr_items"] == 13
    assert job["last_success_timestamp_seconds"] == 180.0
    assert job["duration_seconds"] == 120.0
    assert (job["pass_items"], job["running"], job["failures_total"]) == (25, 0, 0)
    assert store.counters["reclaimed"] == 12
    sweep.stop()
    assert not sweep.running


def test_a_restart_resumes_the_pass_where_it_stopped(store: LmdbStore, tmp_path: Path) -> None:
    """The position is saved after every step: a new sweep (a restarted objstored)
    carries on from the next key, with the pass's start and counts."""
    clock = task.Clock()
    first = ExpirySweep(store, tmp_path / STATE_FILE, as_reactor(clock), batch=10)
    clock.advance(30.0)
    first.step()
    assert first.state.cursor and first.state.scanned == 10
    job = Job(clock)
    clock.advance(30.0)
    again = ExpirySweep(store, tmp_path / STATE_FILE, as_reactor(clock), job.jobs.job("expiry"), batch=10)
    assert (again.state.cursor, again.state.started) == (first.state.cursor, 30.0)
    again.step()
    again.step()
    assert again.passes == 1 and job["pass_items"] == 25
    assert job["duration_seconds"] == 30.0, "the pass began before the restart"
    (tmp_path / STATE_FILE).write_text("not json")
    assert ExpirySweep(store, tmp_path / STATE_FILE, as_reactor(clock)).state.cursor == b""


def test_a_failed_step_is_counted_and_retried_from_the_same_key(
        store: LmdbStore, tmp_path: Path) -> None:
    """A step the store refuses (it is shutting down) counts a failure and leaves the
    position; the next step starts from that same key."""
    clock = task.Clock()
    job = Job(clock)
    sweep = ExpirySweep(store, tmp_path / STATE_FILE, as_reactor(clock), job.jobs.job("expiry"), batch=10)
    sweep.step()
    cursor = sweep.state.cursor
    stopped = GroupCommitter(store, lambda _batch: None, 8)
    stopped.start()
    stopped.stop()
    store.use_committer(stopped)
    d = sweep.step()
    assert d.called, "the failure is handled, never left in the Deferred"
    assert job["failures_total"] == 1 and sweep.state.cursor == cursor
    store.use_committer(None)
    sweep.step()
    sweep.step()
    assert sweep.passes == 1 and job["failures_total"] == 1
    assert job["last_success_timestamp_seconds"] == 0.0

"""Counters, hot keys and the slots that share them between worker processes."""

from __future__ import annotations

import collections
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from objstore.stats import (
    COMMIT_BUCKETS,
    COUNTER_NAMES,
    GET,
    LATENCY_BUCKETS,
    LATENCY_NAMES,
    OP_INDEX,
    OP_NAMES,
    SET,
    STORE_NAMES,
    Counters,
    HotKeys,
    LatencySampler,
    SharedSlots,
    count_commit,
    histogram,
    quantile,
    totals,
)


def test_counters_snapshot_and_reset() -> None:
    """A snapshot lists every counter, every op, then the store's counts; reset keeps the
    connection gauge."""
    c = Counters()
    c.cmd_get += 3
    c.curr_connections = 2
    c.ops[OP_INDEX[b"mg"]] += 5
    store: collections.Counter[str] = collections.Counter()
    count_commit(store, 0.003, 4)
    count_commit(store, 2.0, 1)
    c.sync_store(store)
    snap = c.snapshot()
    assert len(snap) == len(COUNTER_NAMES) + len(OP_NAMES) + len(STORE_NAMES) + \
        len(LATENCY_NAMES)
    t = totals([snap, snap])
    assert t["cmd_get"] == 6 and t["ops_mg"] == 10
    assert (t["commits"], t["committed_ops"], t["commit_microseconds"]) == (4, 10, 4_006_000)
    # 3 ms falls in the 5 ms bucket, 2 s above the last bound (+Inf).
    assert t[f"commit_bucket_{COMMIT_BUCKETS.index(0.005)}"] == 2
    assert t[f"commit_bucket_{len(COMMIT_BUCKETS)}"] == 2
    c.reset()
    assert c.cmd_get == 0 and c.curr_connections == 2 and sum(c.ops) == 0


def test_hot_keys_rank_and_bound() -> None:
    """The hottest keys rank first and the table never exceeds its capacity."""
    hot = HotKeys(capacity=100, sample=1)
    for i in range(1000):
        hot.hit(b"cold%d" % i)
        if i % 2 == 0:
            hot.hit(b"hot")
    assert len(hot.counts) <= 100
    assert hot.top(1) == [(b"hot", 500)]


def test_hot_keys_sampling_estimates_counts() -> None:
    """With one read in n counted as n, totals stay right on average."""
    hot = HotKeys(sample=8, rng=random.Random(1))
    for _ in range(8000):
        hot.hit(b"k")
    ((key, count),) = hot.top(1)
    assert key == b"k" and 7000 < count < 9000
    hot.clear()
    assert hot.top(5) == []


def test_hot_keys_sampling_sees_every_key_of_a_short_cycle() -> None:
    """A client cycling over a few keys gets each of them counted (no fixed stride)."""
    hot = HotKeys(sample=8, rng=random.Random(2))
    for _ in range(1000):
        for key in (b"a", b"b", b"c", b"d"):
            hot.hit(key)
    counts = dict(hot.top(4))
    assert set(counts) == {b"a", b"b", b"c", b"d"}
    assert all(700 < c < 1300 for c in counts.values())


@pytest.mark.system
def test_shared_slots_between_processes(tmp_path: Path) -> None:
    """What one worker process publishes, another reads, hot keys included."""
    path = tmp_path / "workers.stats"
    mine = SharedSlots(path, workers=2, index=0)
    assert mine.others() == []
    script = (
        "import sys\n"
        "from objstore.stats import SharedSlots, Counters\n"
        "c = Counters(); c.cmd_get = 41; c.ops[0] = 7\n"
        "SharedSlots(sys.argv[1], 2, 1).publish(c.snapshot(), [(b'hotkey', 99)])\n"
    )
    subprocess.run([sys.executable, "-c", script, str(path)], check=True,
                   cwd=Path(__file__).resolve().parents[1])
    [(numbers, hot)] = mine.others()
    t = totals([numbers])
    assert t["cmd_get"] == 41 and t["ops_get"] == 7
    assert hot == [(b"hotkey", 99)]
    mine.publish(Counters().snapshot(), [])
    assert SharedSlots(path, 2, 1).read(0) == ([0] * len(numbers), [])
    assert os.path.getsize(path) > 0
    mine.close()


def test_latency_sampler_times_one_request_in_n_into_histograms() -> None:
    """About one request in 16 is due for timing; recorded latencies land in their kind's
    bucket (above the last bound: +Inf), summed across workers by totals, and reset."""
    c = Counters()
    sampler = LatencySampler(c, rng=random.Random(3))
    due = sum(sampler.due() for _ in range(16_000))
    assert 900 <= due <= 1100
    sampler.record(GET, 0.00015)
    sampler.record(GET, 0.00015)
    sampler.record(SET, 0.003)
    sampler.record(SET, 30.0)
    t = totals([c.snapshot(), c.snapshot()])
    gets = histogram(t, "get_latency_bucket_", len(LATENCY_BUCKETS))
    sets = histogram(t, "set_latency_bucket_", len(LATENCY_BUCKETS))
    assert gets[LATENCY_BUCKETS.index(0.0002)] == 4 and sum(gets) == 4
    assert sets[LATENCY_BUCKETS.index(0.005)] == 2 and sets[-1] == 2
    c.reset()
    assert sum(c.latency) == 0


def test_quantile_of_histogram_deltas() -> None:
    """The p99 between two readings is the bound of the bucket holding it: what was
    counted before the first reading does not count; nothing counted is 0."""
    bounds = (0.001, 0.01, 0.1)
    before = [1000, 0, 0, 0]
    after = [1098, 1, 1, 0]        # 100 new: 98 fast, one at 10 ms, one at 100 ms
    assert quantile(bounds, before, after, 0.99) == 0.01
    assert quantile(bounds, before, after, 0.5) == 0.001
    assert quantile(bounds, before, [1000, 0, 0, 5], 0.99) == 0.1  # +Inf: the last bound
    assert quantile(bounds, before, before, 0.99) == 0.0

"""Load reports: what is reported (pure), and the schedule with Redis failing."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer, task

from objstore.reporter import (
    MAX_BACKOFF,
    Identity,
    LoadReporter,
    LoadSample,
    ProcReader,
    Registration,
    SystemCounters,
    build_report,
    disk_space,
    hot_key,
    parse_cpu_line,
    parse_diskstats,
    parse_pid_io,
    parse_pid_stat,
    report_key,
    system_rates,
)
from objstore.stats import COMMIT_BUCKETS, OP_NAMES

IDENT = Identity("n1", "127.0.0.1:11211", "a", "ssd", workers=2, version="v")


def sample(at: float, gets: int, hot: list[tuple[bytes, int]] | None = None) -> LoadSample:
    ops = [0] * len(OP_NAMES)
    ops[OP_NAMES.index("get")] = gets
    ops[OP_NAMES.index("set")] = gets // 2
    return LoadSample(at=at, capacity_bytes=1000, used_bytes=100, items=3, ops=ops,
                      hot=hot or [], extra={"corrupt_reads": 1})


def test_key_names_use_a_hash_tag() -> None:
    """A node's keys share the hash tag {node_id}, hence one cluster slot."""
    assert report_key("n1") == "objmail:node:{n1}:report"
    assert hot_key("n1") == "objmail:node:{n1}:hot"


def test_key_names_follow_the_configured_prefix() -> None:
    """cluster.redis_prefix replaces objmail: so installations sharing a Redis Cluster
    keep their reports apart."""
    assert report_key("n1", "site2:") == "site2:node:{n1}:report"
    assert hot_key("n1", "site2:") == "site2:node:{n1}:hot"


def test_first_report_has_identity_and_zero_rates() -> None:
    """The first report names the node and its usage; rates need a second sample."""
    fields, hot = build_report(IDENT, None, sample(100.0, 50, [(b"k", 10)]), 32)
    assert fields["node_id"] == "n1" and fields["addr"] == "127.0.0.1:11211"
    assert (fields["zone"], fields["tier"], fields["workers"]) == ("a", "ssd", "2")
    assert (fields["capacity_bytes"], fields["used_bytes"], fields["items"]) == (
        "1000", "100", "3")
    assert fields["ops_get"] == "0.0" and fields["ops_per_sec"] == "0.0"
    assert fields["corrupt_reads"] == "1"
    assert hot == {}


def test_rates_and_hot_keys_over_the_interval() -> None:
    """Rates are per second between samples; hot keys are ranked and capped."""
    prev = sample(100.0, 50)
    cur = sample(110.0, 250, [(b"a", 100), (b"b", 300), (b"c", 10)])
    fields, hot = build_report(IDENT, prev, cur, hot_keys=2)
    assert fields["ops_get"] == "20.0" and fields["ops_set"] == "10.0"
    assert fields["ops_per_sec"] == "30.0"
    assert hot == {b"b": 30.0, b"a": 10.0}


def test_capacity_is_what_the_filesystem_can_hold(tmp_path: Path) -> None:
    """With capacity_bytes 0 a node offers the bytes its store occupies plus its data
    dir's filesystem's free bytes (statvfs), capped by the LMDB map size; a configured
    capacity wins."""
    st = os.statvfs(tmp_path)
    free, total = st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
    space = disk_space(tmp_path, occupied=5 << 20, map_size=1 << 50)
    assert space.fs_total == total
    assert abs(space.fs_free - free) < 64 << 20  # other writers on the filesystem
    assert space.capacity == space.fs_free + (5 << 20)
    assert disk_space(tmp_path, occupied=5 << 20, map_size=1 << 20).capacity == 1 << 20
    configured = disk_space(tmp_path, occupied=0, map_size=1 << 50, configured=8 << 20)
    assert (configured.capacity, configured.fs_total) == (8 << 20, total)


def test_report_carries_free_space_and_the_report_schedule() -> None:
    """The report names the filesystem's free bytes and the interval and TTL of reports
    (directors see a late report from them)."""
    cur = dataclasses.replace(sample(110.0, 5), fs_free_bytes=12345)
    fields, _hot = build_report(IDENT, sample(100.0, 0), cur, 4, interval=5.0, ttl=30)
    assert (fields["fs_free_bytes"], fields["report_interval"], fields["report_ttl"]) == (
        "12345", "5", "30")


PROC_STAT = "cpu  100 5 50 800 40 3 2 0 7 0\ncpu0 50 2 25 400 20 1 1 0 0 0\n"
PID_STAT = "4242 (objstored worker (0)) S 1 4242 4242 0 -1 4194560 500 0 0 0 " \
    "130 70 0 0 20 0 3 0 100 1000 200\n"
PID_IO = "rchar: 10\nwchar: 20\nsyscr: 1\nsyscw: 2\nread_bytes: 4096\n" \
    "write_bytes: 8192\ncancelled_write_bytes: 0\n"
DISKSTATS = ("   7       0 loop0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n"
             " 254       0 vda 1000 10 80000 500 2000 20 160000 3000 0 1200 3500 0 0 0 0\n"
             " 254       1 vda1 900 10 70000 450 1900 20 150000 2900 0 1100 3300 0 0 0 0\n")


def test_proc_parsers() -> None:
    """/proc figures are read as documented: a command name with blanks and parentheses,
    host busy time without idle and iowait, the device by major:minor."""
    assert parse_pid_stat(PID_STAT) == 200
    assert parse_cpu_line(PROC_STAT) == (160, 1000)
    assert parse_pid_io(PID_IO) == (4096, 8192)
    assert parse_diskstats(DISKSTATS, 254, 1) == (900, 70000, 450, 1900, 150000, 2900, 1100)
    assert parse_diskstats(DISKSTATS, 8, 0) is None


def test_proc_reader_reads_a_proc_tree_and_tolerates_gaps(tmp_path: Path) -> None:
    """ProcReader sums the node's processes and reads the data dir's device; a missing
    process or file counts as 0 instead of failing the report."""
    (tmp_path / "4242").mkdir()
    (tmp_path / "4242" / "stat").write_text(PID_STAT)
    (tmp_path / "4242" / "io").write_text(PID_IO)
    (tmp_path / "stat").write_text(PROC_STAT)
    (tmp_path / "diskstats").write_text(DISKSTATS)
    reader = ProcReader(tmp_path, proc=tmp_path)
    reader.device = (254, 0)
    got = reader.read([4242, 999999])
    assert (got.cpu_ticks, got.host_busy, got.host_total) == (200, 160, 1000)
    assert (got.io_read, got.io_write) == (4096, 8192)
    assert got.disk == (1000, 80000, 500, 2000, 160000, 3000, 1200)
    assert ProcReader(tmp_path, proc=tmp_path / "nothing").read([1]) == SystemCounters(
        ticks_per_second=reader.ticks)


def test_system_rates_between_two_readings() -> None:
    """CPU in cores and host fraction, storage bytes/s, device bytes/s, ms per request and
    busy fraction come from the differences over the interval; counters that went
    backwards (a restart) count as 0."""
    before = SystemCounters(100, 1000, 4000, 0, 0, (10, 100, 50, 20, 200, 60, 100), 100)
    after = SystemCounters(300, 1500, 5000, 4 << 20, 1 << 20,
                           (20, 2148, 150, 70, 4296, 560, 1100), 100)
    rates = system_rates(before, after, 2.0)
    assert rates["cpu_process"] == pytest.approx(1.0)        # 200 ticks in 2 s at 100/s
    assert rates["cpu_host"] == pytest.approx(0.5)
    assert rates["io_read_bps"] == 2 << 20 and rates["io_write_bps"] == 1 << 19
    assert rates["disk_read_bps"] == 2048 * 512 / 2
    assert rates["disk_read_ms"] == 10.0 and rates["disk_write_ms"] == 10.0
    assert rates["disk_util"] == 0.5
    back = system_rates(after, before, 2.0)
    assert back["cpu_process"] == 0 and back["disk_util"] == 0
    no_disk = system_rates(dataclasses.replace(before, disk=None), after, 2.0)
    assert "disk_util" not in no_disk and no_disk["cpu_process"] == pytest.approx(1.0)


def test_report_carries_load_figures_and_latency_p99() -> None:
    """A report after the first adds the CPU and I/O rates and each latency histogram's
    p99 over the interval, in milliseconds."""
    def with_load(at: float, ticks: int, commits: list[int]) -> LoadSample:
        return dataclasses.replace(
            sample(at, 0), system=SystemCounters(ticks, 0, 0, 0, 0, None, 100),
            latency={"commit": (COMMIT_BUCKETS, commits)})

    zero = [0] * (len(COMMIT_BUCKETS) + 1)
    slow = list(zero)
    slow[COMMIT_BUCKETS.index(0.002)] = 90
    slow[COMMIT_BUCKETS.index(0.05)] = 10
    fields, _hot = build_report(IDENT, with_load(100.0, 0, zero), with_load(110.0, 500, slow),
                                4)
    assert fields["cpu_process"] == "0.500"
    assert fields["commit_p99_ms"] == "50"
    first, _hot = build_report(IDENT, None, with_load(100.0, 0, zero), 4)
    assert "cpu_process" not in first and "commit_p99_ms" not in first


class Sink:
    def __init__(self) -> None:
        self.fail = False
        self.writes: list[tuple[str, dict[str, str], dict[bytes, float], int]] = []

    def write(self, node_id: str, fields: dict[str, str], hot: dict[bytes, float],
              ttl: int) -> Registration | None:
        if self.fail:
            raise ConnectionError("redis is down")
        self.writes.append((node_id, fields, hot, ttl))
        return None  # never registered

    def close(self) -> None:
        pass


def run_now(fn: Any, *args: Any) -> defer.Deferred[Any]:
    return defer.maybeDeferred(fn, *args)


def test_schedule_backoff_and_recovery() -> None:
    """Reports go every interval; while Redis fails the gap doubles up to a third of the
    report's lifetime (so a recovered Redis hears from the node before it looks down),
    and the first success returns to the normal interval."""
    clock = task.Clock()
    sink = Sink()
    n = [0]

    def take() -> LoadSample:
        n[0] += 1
        return sample(clock.seconds(), n[0] * 10)

    reporter = LoadReporter(IDENT, take, sink, clock, run_now, interval=5.0, ttl=60)
    reporter.start()
    clock.advance(0)
    assert len(sink.writes) == 1 and sink.writes[0][3] == 60
    clock.advance(5)
    assert len(sink.writes) == 2
    sink.fail = True
    gaps: list[float] = []
    for _ in range(6):
        before = clock.seconds()
        while reporter.failures == len(gaps):
            clock.advance(1)
        gaps.append(clock.seconds() - before)
    assert gaps == [5, 10, 20, 20, 20, 20]
    assert max(gaps) <= MAX_BACKOFF
    sink.fail = False
    clock.advance(MAX_BACKOFF)
    assert reporter.failures == 0 and len(sink.writes) == 3
    clock.advance(5)
    assert len(sink.writes) == 4
    reporter.stop()
    clock.advance(100)
    assert len(sink.writes) == 4


class RegisteredSink(Sink):
    """A sink that answers with a registry record, as RedisClusterSink does."""

    def __init__(self) -> None:
        super().__init__()
        self.registration: Registration | None = None

    def write(self, node_id: str, fields: dict[str, str], hot: dict[bytes, float],
              ttl: int) -> Registration | None:
        super().write(node_id, fields, hot, ttl)
        return self.registration


def test_reports_carry_the_number_the_registry_gave() -> None:
    """A node reports the number it kept; it follows the number its registry record
    says (told to on_number), keeps it while the record is gone (a lost registry), and
    forgets it once the record says removed."""
    clock = task.Clock()
    sink = RegisteredSink()
    kept: list[int] = []
    reporter = LoadReporter(IDENT, lambda: sample(clock.seconds(), 1), sink, clock, run_now,
                            interval=5.0, ttl=60, number=3, on_number=kept.append)
    reporter.start()
    clock.advance(0)
    sink.registration = Registration(7)
    clock.advance(5)
    sink.registration = None
    clock.advance(5)
    sink.registration = Registration(7, removed=True)
    clock.advance(5)
    clock.advance(5)
    reporter.stop()
    numbers = [w[1].get("number") for w in sink.writes]
    assert numbers == ["3", "3", "7", "7", None]
    assert kept == [7, 0]

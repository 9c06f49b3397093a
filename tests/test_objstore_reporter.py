"""Load reports: what is reported (pure), and the schedule with Redis failing."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, task

from objstore.reporter import (
    MAX_BACKOFF,
    Identity,
    LoadReporter,
    LoadSample,
    Registration,
    build_report,
    hot_key,
    report_key,
)
from objstore.stats import OP_NAMES

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

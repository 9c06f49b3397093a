"""directord's metrics: per-request counting and what the collector exports, parsed back
with prometheus_client's own parser."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from director.client import ClientStats
from director.locationcache import LocationCache
from director.metrics import DirectordCollector, ProxyMetrics
from director.redisconn import RunnerStats
from director.tracking import TrackerStats
from runtime.metrics import new_registry


def scrape(collector: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = new_registry("directord", "t")
    registry.register(collector)
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            out[s.name, tuple(sorted(s.labels.items()))] = s.value
    return out


def test_requests_errors_and_cumulative_histogram() -> None:
    """Requests and errors are counted per command; buckets are cumulative and end at
    +Inf with the total count; dedup and cache counters are exported."""
    m = ProxyMetrics()
    m.observe("get", 0.0004)
    m.observe("get", 0.003)
    m.observe("set", 0.02, "server")
    m.observe("incr", 0.0, "unsupported")
    m.dedup_hits = 2
    m.cache_hits, m.cache_misses = 5, 1
    got = scrape(DirectordCollector(m, lambda: 3, lambda: None))
    assert got["directord_requests_total", (("command", "get"),)] == 2
    assert got["directord_errors_total", (("command", "set"), ("kind", "server"))] == 1
    assert got["directord_errors_total", (("command", "incr"), ("kind", "unsupported"))] == 1
    bucket = "directord_request_seconds_bucket"
    assert got[bucket, (("command", "get"), ("le", "0.0005"))] == 1
    assert got[bucket, (("command", "get"), ("le", "0.0025"))] == 1
    assert got[bucket, (("command", "get"), ("le", "0.005"))] == 2
    assert got[bucket, (("command", "get"), ("le", "+Inf"))] == 2
    assert got["directord_request_seconds_count", (("command", "get"),)] == 2
    assert abs(got["directord_request_seconds_sum", (("command", "get"),)] - 0.0034) < 1e-12
    assert got["directord_dedup_hits_total", ()] == 2
    assert (got["directord_cache_hits_total", ()], got["directord_cache_misses_total", ()]) \
        == (5, 1)
    assert got["directord_open_connections", ()] == 3
    assert ("directord_failovers_total", ()) not in got, "no client yet: no client counters"


def test_client_counters_and_errors_by_node() -> None:
    """Once the blob client is open its counters are exported, and failed requests to
    object servers are counted per node under directord_object_server_errors_total."""
    stats = ClientStats(failovers=4, bad_replicas=1, item_puts=9)
    stats.by_node_errors.update({"obj-1": 2, "obj-2": 5})
    runner_stats = RunnerStats()
    runner_stats.retries = 6
    client = SimpleNamespace(stats=stats, index=SimpleNamespace(
        runner=SimpleNamespace(stats=runner_stats)))
    got = scrape(DirectordCollector(ProxyMetrics(), lambda: 0, lambda: client))
    assert got["directord_failovers_total", ()] == 4
    assert got["directord_bad_replicas_total", ()] == 1
    assert got["directord_item_puts_total", ()] == 9
    assert got["directord_index_retries_total", ()] == 6
    assert got["directord_object_server_errors_total", (("node", "obj-1"),)] == 2
    assert got["directord_object_server_errors_total", (("node", "obj-2"),)] == 5


def test_location_cache_figures_are_exported() -> None:
    """With directord's location cache on, its size, readiness, hits, misses,
    invalidations and flushes and the tracking connections lost are exported."""
    cache = LocationCache(10)
    cache.usable = True
    ticket = cache.begin(["b"])
    cache.finish(ticket, {"id": ((1, 2), "b")})
    cache.get("id")
    cache.get("other")
    cache.invalidate(["b"])
    cache.flush()
    tracker = SimpleNamespace(cache=cache, stats=TrackerStats(lost=3))
    client = SimpleNamespace(stats=ClientStats(), tracker=tracker, index=SimpleNamespace(
        runner=SimpleNamespace(stats=RunnerStats())))
    got = scrape(DirectordCollector(ProxyMetrics(), lambda: 0, lambda: client))
    assert got["directord_location_cache_entries", ()] == 0
    assert got["directord_location_cache_ready", ()] == 1
    assert got["directord_location_cache_hits_total", ()] == 1
    assert got["directord_location_cache_misses_total", ()] == 1
    assert got["directord_location_cache_invalidations_total", ()] == 1
    assert got["directord_location_cache_flushes_total", ()] == 1
    assert got["directord_tracking_lost_total", ()] == 3

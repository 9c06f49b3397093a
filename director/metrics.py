"""directord's Prometheus metrics: requests, errors and latency, the blob client's counters.

:class:`ProxyMetrics` is plain bookkeeping (no I/O, a few tens of nanoseconds a request):
the proxy handler counts every request by command, every error by command and kind,
dedup and cache hits, and observes each request's latency in a fixed-bucket histogram.
:class:`DirectordCollector` turns that, with the blob client's counters and the open
connections, into metric families when Prometheus scrapes; it is registered in the
process's registry (:func:`runtime.metrics.new_registry`) and served by
:func:`runtime.metrics.listen_metrics`.  Every name is listed in docs/metrics.md.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.metrics_core import Metric

from runtime.metrics import Histogram, counter_family, gauge_family, histogram_family

__all__ = ["DirectordCollector", "ProxyMetrics"]


class ProxyMetrics:
    """What directord counts per request."""

    def __init__(self) -> None:
        self.requests: Counter[str] = Counter()
        self.errors: Counter[tuple[str, str]] = Counter()
        self.latency: dict[str, Histogram] = {}
        self.dedup_hits = 0
        self.cache_hits = 0
        self.cache_misses = 0

    def observe(self, command: str, seconds: float, error: str | None = None) -> None:
        """Count one request of ``command`` that took ``seconds``; ``error`` is its kind
        (``client``, ``server``, ``unsupported``...) when it failed."""
        self.requests[command] += 1
        if error is not None:
            self.errors[(command, error)] += 1
        hist = self.latency.get(command)
        if hist is None:
            hist = self.latency[command] = Histogram()
        hist.observe(seconds)

    def collect(self) -> Iterator[Metric]:
        yield counter_family("directord_requests", "Requests handled, by memcached command.",
                             ["command"], [((c,), n) for c, n in sorted(self.requests.items())])
        yield counter_family("directord_errors",
                             "Requests answered with an error, by command and kind.",
                             ["command", "kind"],
                             [((c, k), n) for (c, k), n in sorted(self.errors.items())])
        yield counter_family("directord_dedup_hits",
                             "Blob-id sets answered without upload: the index knew the blob.",
                             rows=[((), self.dedup_hits)])
        yield counter_family("directord_cache_hits",
                             "Blob-id gets served from directord's memory cache.",
                             rows=[((), self.cache_hits)])
        yield counter_family("directord_cache_misses",
                             "Blob-id gets that had to read an object server.",
                             rows=[((), self.cache_misses)])
        yield histogram_family("directord_request_seconds",
                               "Time from a parsed request to its reply, by command.",
                               ["command"],
                               [((c,), h) for c, h in sorted(self.latency.items())])


#: (metric, BlobClient.stats attribute, help) of the blob client's counters.
_CLIENT_COUNTERS = (
    ("directord_failovers", "failovers", "Reads that moved on to the next replica."),
    ("directord_bad_replicas", "bad_replicas", "Replicas that returned corrupt bytes."),
    ("directord_repairs_queued", "repairs_queued", "Blobs queued for re-replication."),
    ("directord_item_puts", "item_puts", "Items written to object servers."),
    ("directord_item_gets", "item_gets", "Item keys looked up."),
)


class DirectordCollector:
    """directord's figures read at scrape time: the per-request bookkeeping, the open
    connections and, once it is open, the blob client's counters.

    :param open_connections: the client connections open now.
    :param client: the blob client, None until it is open.
    """

    def __init__(self, metrics: ProxyMetrics, open_connections: Callable[[], int],
                 client: Callable[[], Any]) -> None:
        self.metrics = metrics
        self._open_connections = open_connections
        self._client = client

    def collect(self) -> Iterator[Metric]:
        yield from self.metrics.collect()
        yield gauge_family("directord_open_connections", "Open client connections.",
                           rows=[((), self._open_connections())])
        client = self._client()
        if client is None:
            return
        st = client.stats
        for name, attr, doc in _CLIENT_COUNTERS:
            yield counter_family(name, doc, rows=[((), getattr(st, attr))])
        yield counter_family("directord_index_retries",
                             "Redis Cluster batches retried (failover, timeouts).",
                             rows=[((), client.index.runner.stats.retries)])
        sampler = getattr(client, "temperature", None)
        if sampler is not None:
            yield from temperature_families("directord", sampler.stats)
        tracker = getattr(client, "tracker", None)
        if tracker is not None:
            yield from location_cache_families(tracker)
        yield counter_family("directord_object_server_errors",
                             "Failed requests to an object server, by node.", ["node"],
                             [((node,), n) for node, n in sorted(st.by_node_errors.items())])


def location_cache_families(tracker: Any) -> Iterator[Metric]:
    """directord's location cache of plain items and its tracking connections
    (:class:`director.tracking.InvalidationTracker`)."""
    cache = tracker.cache
    cs = cache.stats
    yield gauge_family("directord_location_cache_entries", "Index entries cached now.",
                       rows=[((), len(cache))])
    yield gauge_family("directord_location_cache_ready",
                       "1 while every Redis node is tracked and the cache is used.",
                       rows=[((), int(cache.usable))])
    for attr, doc in (("hits", "Plain-item lookups served by the location cache."),
                      ("misses", "Plain-item lookups the location cache lacked."),
                      ("invalidations", "Cached entries dropped by an invalidation."),
                      ("flushes", "Whole-cache flushes (tracking lost, topology changed)."),
                      ("evictions", "Entries evicted by the entry limit."),
                      ("fallbacks", "Cached locations that served nothing, looked up again."),
                      ("raced", "Lookups not cached: an invalidation or flush raced them.")):
        yield counter_family(f"directord_location_cache_{attr}", doc,
                             rows=[((), getattr(cs, attr))])
    yield counter_family("directord_tracking_lost",
                         "Tracking connections to Redis lost (each flushes the cache).",
                         rows=[((), tracker.stats.lost)])


def temperature_families(prefix: str, stats: Any) -> Iterator[Metric]:
    """A frontend's read-temperature reporting (:class:`director.temperature.SamplerStats`):
    reads seen, sampled, dropped (batch full), batches written and failed."""
    for attr, doc in (("reads", "Blob reads seen by the read-temperature sampler (cache "
                                "hits included)."),
                      ("sampled", "Blob reads counted into the read temperature."),
                      ("dropped", "Accesses dropped because the pending batch was full."),
                      ("flushes", "Batches of read counts written to Redis."),
                      ("failures", "Batches of read counts Redis refused (counts lost).")):
        yield counter_family(f"{prefix}_temperature_{attr}", doc,
                             rows=[((), getattr(stats, attr))])

"""Prometheus metrics of the daemons, with ``prometheus-client``, the reference library.

Theory of operation.  Each daemon process makes one :class:`CollectorRegistry` with
:func:`new_registry` (the library's process, platform and garbage-collector collectors,
plus ``<daemon>_build_info``) and passes it down to what registers metrics; nothing uses
the library's module-level registry.  :func:`listen_metrics` serves it at
``GET /metrics`` on the reactor.

Counting on hot paths (a memcached request, an IMAP command) stays plain bookkeeping:
integer attributes, ``collections.Counter`` and :class:`Histogram` below, which cost a
few tens of nanoseconds.  The library reads them only when scraped, through a collector
(an object with a ``collect()`` method yielding metric families, built with
:func:`counter_family`, :func:`gauge_family` and :func:`histogram_family`).  Rare events
(a background pass) use the library's own metric objects: :class:`JobMetrics`.

Background jobs export, under the daemon's prefix and a ``job`` label: the time of the
last successful pass, the duration of the last pass, the failures, and the progress of the
current pass where the job reports it (:class:`JobRecorder`).
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from twisted.web import resource, server

from runtime.config import parse_hostport

__all__ = ["CONTENT_TYPE", "LATENCY_BUCKETS", "Histogram", "JobMetrics", "JobRecorder",
           "MetricsResource", "build_version", "counter_family", "gauge_family",
           "histogram_family", "listen_metrics", "new_registry"]

#: Upper bounds (seconds) of the latency histograms' buckets; +Inf is implied.
LATENCY_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                          1.0, 2.5, 5.0)
#: What :func:`generate_latest` writes for our names (all in the classic character set):
#: the text format 0.0.4, which every Prometheus version reads.
CONTENT_TYPE: Final = b"text/plain; version=0.0.4; charset=utf-8"


def build_version() -> str:
    """objmail's installed version (``unknown`` when run from a bare checkout)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("objmail")
    except PackageNotFoundError:
        return "unknown"


def new_registry(prefix: str, version: str | None = None) -> CollectorRegistry:
    """The registry of one daemon process: the library's default collectors (process CPU,
    memory, file descriptors, start time; Python version; garbage collections) and
    ``<prefix>_build_info{version}`` = 1."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    info = Gauge(f"{prefix}_build_info", "Always 1; the labels say which objmail runs.",
                 ["version"], registry=registry)
    info.labels(version or build_version()).set(1)
    return registry


@dataclass
class Histogram:
    """Observations in fixed buckets, as plain bookkeeping (non-cumulative counts; the
    last is +Inf).  Exported through :func:`histogram_family`."""

    bounds: tuple[float, ...] = LATENCY_BUCKETS
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bucket (le = "<=").
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1


Row = tuple[Sequence[str], float]


def counter_family(name: str, doc: str, labels: Sequence[str] = (),
                   rows: Iterable[Row] = ()) -> CounterMetricFamily:
    """A counter (``name`` without ``_total``) with one sample per row of label values."""
    family = CounterMetricFamily(name, doc, labels=labels)
    for values, value in rows:
        family.add_metric(values, value)
    return family


def gauge_family(name: str, doc: str, labels: Sequence[str] = (),
                 rows: Iterable[Row] = ()) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=labels)
    for values, value in rows:
        family.add_metric(values, value)
    return family


def histogram_family(name: str, doc: str, labels: Sequence[str],
                     rows: Iterable[tuple[Sequence[str], Histogram]]) -> HistogramMetricFamily:
    """A histogram family from :class:`Histogram` bookkeeping, one per row of labels."""
    family = HistogramMetricFamily(name, doc, labels=labels)
    for values, hist in rows:
        family.add_metric(values, cumulative(hist.bounds, hist.counts), hist.total)
    return family


def cumulative(bounds: Sequence[float], counts: Sequence[int]) -> list[tuple[str, float]]:
    """Prometheus' cumulative ``(le, count)`` buckets from per-bucket counts (the last
    one +Inf)."""
    out: list[tuple[str, float]] = []
    running = 0
    for bound, count in zip((*bounds, float("inf")), counts, strict=True):
        running += count
        out.append(("+Inf" if bound == float("inf") else repr(bound), running))
    return out


class JobRecorder:
    """What one background job reports; see :class:`JobMetrics`.

    A pass is :meth:`started`, may report :meth:`progress`, and ends with
    :meth:`succeeded`, :meth:`failed` or :meth:`abandoned` (it did not run: another
    process holds the job, or the daemon is stopping).
    """

    def __init__(self, metrics: JobMetrics, job: str) -> None:
        self._metrics = metrics
        self.job = job
        self._started: float | None = None
        self._failures = metrics.failures.labels(job)
        self._running = metrics.running.labels(job)
        self._running.set(0)

    def started(self, at: float | None = None) -> None:
        """A pass begins (at ``at``, clock seconds, when it began earlier: a sweep
        resumed after a restart)."""
        if at is None and self._started is None:  # a fresh pass: nothing handled yet
            self._metrics.items.labels(self.job).set(0)
        self._started = self._metrics.clock() if at is None else at
        self._running.set(1)

    def progress(self, items: int, expected: int | None = None) -> None:
        """The current pass has handled ``items``, of ``expected`` when known."""
        m = self._metrics
        m.items.labels(self.job).set(items)
        if expected is not None:
            m.expected.labels(self.job).set(expected)

    def succeeded(self) -> None:
        m = self._metrics
        now = m.clock()
        m.last_success.labels(self.job).set(now)
        self._end(now)

    def failed(self) -> None:
        self._failures.inc()
        self._end(self._metrics.clock())

    def abandoned(self) -> None:
        self._started = None
        self._running.set(0)

    def _end(self, now: float) -> None:
        if self._started is not None:
            self._metrics.duration.labels(self.job).set(max(0.0, now - self._started))
        self.abandoned()


class JobMetrics:
    """The background jobs' metrics of one daemon, in its registry.

    :param prefix: the daemon's metric prefix (``directord``, ``objstore``).
    :param clock: seconds since the epoch (a reactor's ``seconds``; a ``task.Clock`` in
        tests): last-success times and durations.
    """

    def __init__(self, registry: CollectorRegistry, prefix: str,
                 clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.last_success = Gauge(
            f"{prefix}_job_last_success_timestamp_seconds",
            "When the job's last successful pass ended (absent until one has).",
            ["job"], registry=registry)
        self.duration = Gauge(f"{prefix}_job_duration_seconds",
                              "How long the job's last finished pass took.", ["job"],
                              registry=registry)
        self.failures = Counter(f"{prefix}_job_failures",
                                "Passes that ended in an error.", ["job"], registry=registry)
        self.running = Gauge(f"{prefix}_job_running", "1 while a pass of the job runs.",
                             ["job"], registry=registry)
        self.items = Gauge(f"{prefix}_job_pass_items",
                           "Items the current pass (else the last one) has handled.",
                           ["job"], registry=registry)
        self.expected = Gauge(f"{prefix}_job_pass_items_expected",
                              "Items the current pass (else the last one) set out to handle, "
                              "where the job knows.", ["job"], registry=registry)

    def job(self, name: str) -> JobRecorder:
        return JobRecorder(self, name)


class MetricsResource(resource.Resource):
    """``GET /metrics``: the registry in Prometheus' text format; other paths 404."""

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self.registry = registry

    def render_GET(self, request: server.Request) -> bytes:
        if request.path != b"/metrics":
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"text/plain")
            return b"not found: metrics are at /metrics\n"
        request.setHeader(b"content-type", CONTENT_TYPE)
        # Rendered on the reactor thread: the collectors read the daemon's counters
        # between two events, never in the middle of an update.
        return generate_latest(self.registry)


def listen_metrics(reactor: Any, address: str, key: str, registry: CollectorRegistry) -> Any:
    """Serve ``registry`` at ``http://<address>/metrics``; the listening port.

    :param key: the config key of ``address``, for the error message.
    :raises twisted.internet.error.CannotListenError: the port is taken.
    """
    host, port = parse_hostport(address, key)
    return reactor.listenTCP(port, _QuietSite(MetricsResource(registry)), interface=host)


class _QuietSite(server.Site):
    """A site that logs no line per request: Prometheus scrapes every few seconds."""

    noisy = False

    def log(self, request: Any) -> None:
        pass

"""directord's Prometheus metrics: counters and a latency histogram, and the HTTP endpoint.

:class:`ProxyMetrics` is plain bookkeeping (no I/O): the proxy handler counts every
request by command, every error by command and kind, dedup and cache hits, and observes
each request's latency in a fixed-bucket histogram.  :meth:`ProxyMetrics.render` writes
them, plus samples the caller supplies (the blob client's failover counters, open
connections), in Prometheus' text exposition format (version 0.0.4).
:class:`MetricsResource` serves that at ``GET /metrics`` with ``twisted.web``.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final

from twisted.web import resource, server

#: Upper bounds (seconds) of the latency histogram's buckets; +Inf is implied.
LATENCY_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                          1.0, 2.5, 5.0)
CONTENT_TYPE: Final = b"text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class Sample:
    """One value the caller adds to the exposition (``kind``: counter or gauge)."""

    name: str
    kind: str
    help: str
    value: float
    labels: tuple[tuple[str, str], ...] = ()


@dataclass
class Histogram:
    """Observations in fixed buckets (non-cumulative counts; the last is +Inf)."""

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


class ProxyMetrics:
    """What directord counts."""

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

    def render(self, extra: Iterable[Sample] = ()) -> bytes:
        """The exposition text: our metrics, then ``extra``."""
        out: list[str] = []
        family(out, "directord_requests_total", "counter",
                "Requests handled, by memcached command.",
                [((("command", c),), n) for c, n in sorted(self.requests.items())])
        family(out, "directord_errors_total", "counter",
                "Requests answered with an error, by command and kind.",
                [((("command", c), ("kind", k)), n)
                 for (c, k), n in sorted(self.errors.items())])
        family(out, "directord_dedup_hits_total", "counter",
                "Blob-id sets answered without upload: the index knew the blob.",
                [((), self.dedup_hits)])
        family(out, "directord_cache_hits_total", "counter",
                "Blob-id gets served from directord's memory cache.", [((), self.cache_hits)])
        family(out, "directord_cache_misses_total", "counter",
                "Blob-id gets that had to read an object server.", [((), self.cache_misses)])
        histogram_family(out, "directord_request_seconds",
                         "Time from a parsed request to its reply, by command.",
                         [((("command", c),), h) for c, h in sorted(self.latency.items())])
        sample_families(out, extra)
        return ("\n".join(out) + "\n").encode()


Labels = tuple[tuple[str, str], ...]


def histogram_family(out: list[str], name: str, help_: str,
                     rows: Iterable[tuple[Labels, Histogram]]) -> None:
    """Append one histogram family (cumulative buckets, sum, count) per label set."""
    out.append(f"# HELP {name} {help_}")
    out.append(f"# TYPE {name} histogram")
    for base, hist in rows:
        running = 0
        for bound, count in zip((*hist.bounds, float("inf")), hist.counts, strict=True):
            running += count
            le = "+Inf" if bound == float("inf") else repr(bound)
            out.append(f"{name}_bucket{_labels((*base, ('le', le)))} {running}")
        out.append(f"{name}_sum{_labels(base)} {hist.total!r}")
        out.append(f"{name}_count{_labels(base)} {hist.count}")


def sample_families(out: list[str], samples: Iterable[Sample]) -> None:
    """Append the caller's samples, one family per name."""
    by_name: dict[str, list[Sample]] = {}
    for sample in samples:
        by_name.setdefault(sample.name, []).append(sample)
    for sname, group in by_name.items():
        family(out, sname, group[0].kind, group[0].help, [(s.labels, s.value) for s in group])


def family(out: list[str], name: str, kind: str, help_: str,
           rows: Iterable[tuple[Labels, float]]) -> None:
    """Append one counter or gauge family."""
    out.append(f"# HELP {name} {help_}")
    out.append(f"# TYPE {name} {kind}")
    for labels, value in rows:
        out.append(f"{name}{_labels(labels)} {_number(value)}")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _labels(labels: tuple[tuple[str, str], ...]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class MetricsResource(resource.Resource):
    """``GET /metrics``: the current exposition; any other path is 404.

    :param render_metrics: returns the exposition bytes (called per scrape).
    """

    isLeaf = True

    def __init__(self, render_metrics: Callable[[], bytes]) -> None:
        super().__init__()
        self._render = render_metrics

    def render_GET(self, request: server.Request) -> bytes:
        if request.path != b"/metrics":
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"text/plain")
            return b"not found: metrics are at /metrics\n"
        request.setHeader(b"content-type", CONTENT_TYPE)
        return self._render()

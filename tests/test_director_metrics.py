"""directord's metrics: counting, the Prometheus text format, and the HTTP resource."""

from __future__ import annotations

from typing import Any

from twisted.web.test.requesthelper import DummyRequest

from director.metrics import (
    CONTENT_TYPE,
    LATENCY_BUCKETS,
    Histogram,
    MetricsResource,
    ProxyMetrics,
    Sample,
)


def lines(text: bytes) -> dict[str, str]:
    """sample name with labels -> value, comments left out."""
    out = {}
    for line in text.decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = value
    return out


def test_histogram_buckets_include_their_bound() -> None:
    """A value equal to a bucket's bound counts in that bucket; above the last, in +Inf."""
    h = Histogram()
    h.observe(LATENCY_BUCKETS[0])
    h.observe(LATENCY_BUCKETS[0] * 1.01)
    h.observe(1000.0)
    assert h.counts[0] == 1 and h.counts[1] == 1 and h.counts[-1] == 1
    assert h.count == 3 and h.total > 1000


def test_render_counts_errors_and_cumulative_histogram() -> None:
    """Requests and errors are counted per command; buckets are cumulative and end at
    +Inf with the total count."""
    m = ProxyMetrics()
    m.observe("get", 0.0004)
    m.observe("get", 0.003)
    m.observe("set", 0.02, "server")
    m.observe("incr", 0.0, "unsupported")
    m.dedup_hits = 2
    m.cache_hits, m.cache_misses = 5, 1
    got = lines(m.render())
    assert got['directord_requests_total{command="get"}'] == "2"
    assert got['directord_errors_total{command="set",kind="server"}'] == "1"
    assert got['directord_errors_total{command="incr",kind="unsupported"}'] == "1"
    assert got['directord_request_seconds_bucket{command="get",le="0.0005"}'] == "1"
    assert got['directord_request_seconds_bucket{command="get",le="0.0025"}'] == "1"
    assert got['directord_request_seconds_bucket{command="get",le="0.005"}'] == "2"
    assert got['directord_request_seconds_bucket{command="get",le="+Inf"}'] == "2"
    assert got['directord_request_seconds_count{command="get"}'] == "2"
    assert abs(float(got['directord_request_seconds_sum{command="get"}']) - 0.0034) < 1e-12
    assert got["directord_dedup_hits_total"] == "2"
    assert (got["directord_cache_hits_total"], got["directord_cache_misses_total"]) == (
        "5", "1")


def test_extra_samples_and_label_escaping() -> None:
    """Caller samples are grouped by name under one TYPE line; label values are
    escaped as the format requires."""
    m = ProxyMetrics()
    text = m.render([
        Sample("directord_failovers_total", "counter", "Failovers.", 3),
        Sample("directord_object_server_errors_total", "counter", "Errors.", 1,
               (("node", 'a"b\\c\nd'),)),
        Sample("directord_object_server_errors_total", "counter", "Errors.", 2,
               (("node", "n2"),)),
    ]).decode()
    assert "directord_failovers_total 3\n" in text
    assert text.count("# TYPE directord_object_server_errors_total counter") == 1
    assert 'directord_object_server_errors_total{node="a\\"b\\\\c\\nd"} 1' in text
    assert 'directord_object_server_errors_total{node="n2"} 2' in text


def test_resource_serves_metrics_path_only() -> None:
    """GET /metrics answers the exposition with Prometheus' content type; other paths 404."""
    res = MetricsResource(lambda: b"x 1\n")
    req: Any = DummyRequest([b"metrics"])
    req.path = b"/metrics"
    assert res.render_GET(req) == b"x 1\n"
    assert req.responseHeaders.getRawHeaders(b"content-type") == [CONTENT_TYPE]
    other: Any = DummyRequest([b""])
    other.path = b"/"
    assert b"/metrics" in res.render_GET(other)
    assert other.responseCode == 404

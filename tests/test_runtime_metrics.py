"""The daemons' metrics plumbing: the registry, bookkeeping histograms, job metrics and
the /metrics resource."""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import task
from twisted.web.test.requesthelper import DummyRequest

from runtime.metrics import (
    CONTENT_TYPE,
    LATENCY_BUCKETS,
    Histogram,
    JobMetrics,
    MetricsResource,
    counter_family,
    histogram_family,
    new_registry,
)


def samples(registry: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``registry``'s exposition, parsed back by prometheus_client."""
    from prometheus_client import generate_latest

    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            out[s.name, tuple(sorted(s.labels.items()))] = s.value
    return out


def test_histogram_buckets_include_their_bound() -> None:
    """A value equal to a bucket's bound counts in that bucket; above the last, in +Inf."""
    h = Histogram()
    h.observe(LATENCY_BUCKETS[0])
    h.observe(LATENCY_BUCKETS[0] * 1.01)
    h.observe(1000.0)
    assert h.counts[0] == 1 and h.counts[1] == 1 and h.counts[-1] == 1
    assert h.count == 3 and h.total > 1000


def test_registry_has_process_build_and_collected_families() -> None:
    """A daemon's registry holds the library's process and Python collectors, its build
    info, and what a collector yields: cumulative histogram buckets, counters with
    _total, label values escaped and parsed back intact."""
    registry = new_registry("testd", "9.9")
    h = Histogram()
    for v in (0.0004, 0.003, 7.0):
        h.observe(v)

    class Collector:
        def collect(self) -> Any:
            yield counter_family("testd_things", "Things.", ["node"],
                                 [(('a"b\\c\nd',), 3)])
            yield histogram_family("testd_seconds", "Time.", ["command"], [(("get",), h)])

    registry.register(Collector())
    got = samples(registry)
    assert got["testd_build_info", (("version", "9.9"),)] == 1
    assert any(name == "process_cpu_seconds_total" for name, _ in got)
    assert any(name == "python_gc_collections_total" for name, _ in got)
    assert got["testd_things_total", (("node", 'a"b\\c\nd'),)] == 3
    bucket = "testd_seconds_bucket"
    assert got[bucket, (("command", "get"), ("le", "0.0005"))] == 1
    assert got[bucket, (("command", "get"), ("le", "0.005"))] == 2
    assert got[bucket, (("command", "get"), ("le", "5.0"))] == 2
    assert got[bucket, (("command", "get"), ("le", "+Inf"))] == 3
    assert got["testd_seconds_count", (("command", "get"),)] == 3


def test_job_metrics_follow_passes_on_the_clock() -> None:
    """A pass that succeeds sets the last-success time and its duration from the clock;
    progress shows while it runs; a failed pass counts a failure and leaves the last
    success as it was; an abandoned one changes neither."""
    clock = task.Clock()
    registry = new_registry("testd")
    jobs = JobMetrics(registry, "testd", clock.seconds)
    job = jobs.job("sweep")
    label = (("job", "sweep"),)
    assert samples(registry)["testd_job_failures_total", label] == 0
    assert ("testd_job_last_success_timestamp_seconds", label) not in samples(registry)
    clock.advance(100)
    job.started()
    job.progress(5, 20)
    got = samples(registry)
    assert got["testd_job_running", label] == 1
    assert (got["testd_job_pass_items", label], got["testd_job_pass_items_expected", label]) \
        == (5, 20)
    clock.advance(7)
    job.succeeded()
    got = samples(registry)
    assert got["testd_job_last_success_timestamp_seconds", label] == 107
    assert got["testd_job_duration_seconds", label] == 7
    assert got["testd_job_running", label] == 0
    job.started()
    assert samples(registry)["testd_job_pass_items", label] == 0, "a fresh pass starts at 0"
    clock.advance(3)
    job.failed()
    job.started()
    job.abandoned()
    got = samples(registry)
    assert got["testd_job_failures_total", label] == 1
    assert got["testd_job_last_success_timestamp_seconds", label] == 107
    assert got["testd_job_duration_seconds", label] == 3


def test_resource_serves_metrics_path_only() -> None:
    """GET /metrics answers the registry in the text format with its content type;
    other paths 404."""
    registry = new_registry("testd", "1")
    res = MetricsResource(registry)
    req: Any = DummyRequest([b"metrics"])
    req.path = b"/metrics"
    body = res.render_GET(req)
    assert b'testd_build_info{version="1"} 1.0' in body
    assert req.responseHeaders.getRawHeaders(b"content-type") == [CONTENT_TYPE]
    other: Any = DummyRequest([b""])
    other.path = b"/"
    assert b"/metrics" in res.render_GET(other)
    assert other.responseCode == 404

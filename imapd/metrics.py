"""imapd's Prometheus metrics: commands, their outcome and latency, logins, LMTP replies.

:class:`ImapMetrics` is bookkeeping without I/O: the IMAP and POP3 sessions report each
command they finish (protocol, command name, status word, seconds) and each login
attempt, the LMTP adapter each reply it sends (by command and reply code).  It is a
collector: registered in the process's registry (:func:`runtime.metrics.new_registry`),
it turns the counts into metric families when Prometheus scrapes, along with the gauges
:class:`ImapdCollector` reads then (open connections per listener, change-listener
reconnects, blob-client counters, the frontend cache's hits, misses and bytes).  Every
name is listed in docs/metrics.md.

The series an operator alerts on exist from the start, at 0 (failed logins, LMTP 4xx and
5xx), so that a rate over them is 0 rather than empty before the first failure.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Final

from prometheus_client.metrics_core import Metric

from director.metrics import temperature_families
from runtime.metrics import Histogram, counter_family, gauge_family, histogram_family

__all__ = ["LMTP_COMMANDS", "ImapMetrics", "ImapdCollector"]

#: LMTP commands counted by name (anything else is ``other``: a client must not be able
#: to make up label values); ``CONNECT`` is the greeting or the refusal of a connection.
LMTP_COMMANDS: Final = frozenset(("CONNECT", "LHLO", "HELO", "EHLO", "MAIL", "RCPT", "DATA",
                                  "RSET", "NOOP", "QUIT", "VRFY", "HELP", "SHUTDOWN",
                                  "LINE"))
#: (command, code) pairs present from the start: deliveries and their refusals.
_LMTP_SEEDED: Final = tuple((command, code) for command in ("RCPT", "DATA")
                            for code in ("250", "451", "452", "550", "552"))


class ImapMetrics:
    """What the IMAP, POP3 and LMTP connections of one process count."""

    def __init__(self) -> None:
        self.commands: Counter[tuple[str, str, str]] = Counter()
        self.latency: dict[tuple[str, str], Histogram] = {}
        self.logins: Counter[tuple[str, str]] = Counter(
            {(p, r): 0 for p in ("imap", "pop3") for r in ("ok", "failed")})
        self.lmtp_replies: Counter[tuple[str, str]] = Counter(dict.fromkeys(_LMTP_SEEDED, 0))

    def observe(self, protocol: str, command: str, status: str, seconds: float) -> None:
        """One finished command: ``status`` is OK/NO/BAD (IMAP) or +OK/-ERR (POP3)."""
        self.commands[protocol, command, status] += 1
        key = (protocol, command)
        hist = self.latency.get(key)
        if hist is None:
            hist = self.latency[key] = Histogram()
        hist.observe(seconds)

    def login(self, protocol: str, ok: bool) -> None:
        self.logins[protocol, "ok" if ok else "failed"] += 1

    def lmtp_sent(self, command: str, lines: Iterable[str]) -> None:
        """Count the replies in ``lines`` (a reply ends with a line whose code is followed
        by a space: DATA answers one per recipient) as answers to ``command``."""
        if command not in LMTP_COMMANDS:
            command = "other"
        for line in lines:
            if line[3:4] != "-":
                self.lmtp_replies[command, line[:3]] += 1

    def collect(self) -> Iterator[Metric]:
        yield counter_family("imapd_commands",
                             "Commands answered, by protocol, command and status.",
                             ["protocol", "command", "status"],
                             [(k, n) for k, n in sorted(self.commands.items())])
        yield counter_family("imapd_logins", "Login attempts, by protocol and result.",
                             ["protocol", "result"],
                             [(k, n) for k, n in sorted(self.logins.items())])
        yield counter_family("imapd_lmtp_replies",
                             "LMTP replies sent, by command and reply code (DATA: one per "
                             "recipient).", ["command", "code"],
                             [(k, n) for k, n in sorted(self.lmtp_replies.items())])
        yield histogram_family("imapd_command_seconds",
                               "Time from a parsed command to its answer.",
                               ["protocol", "command"],
                               [(k, h) for k, h in sorted(self.latency.items())])


class ImapdCollector:
    """imapd's gauges and the counters of the services it uses, read at scrape time.

    :param listeners: (name, factory) of every listener; a factory counts its
        ``open_connections``.
    :param services: the running services (``changes``, ``blobs``), None until started.
    """

    def __init__(self, listeners: Callable[[], Sequence[tuple[str, Any]]],
                 services: Callable[[], Any]) -> None:
        self._listeners = listeners
        self._services = services

    def collect(self) -> Iterator[Metric]:
        yield gauge_family("imapd_open_connections", "Open client connections, by listener.",
                           ["listener"],
                           [((name,), getattr(f, "open_connections", 0))
                            for name, f in self._listeners()])
        committers = [f.committer for _name, f in self._listeners()
                      if getattr(f, "committer", None) is not None]
        if committers:
            yield from commit_families(committers)
        services = self._services()
        if services is None:
            return
        yield counter_family("imapd_change_listener_reconnects",
                             "Times the LISTEN connection to PostgreSQL was re-established.",
                             rows=[((), services.changes.reconnects)])
        stats = getattr(services.blobs, "stats", None)
        for attr in ("gets", "failovers", "bad_replicas"):
            if stats is not None and hasattr(stats, attr):
                yield counter_family(f"imapd_blob_{attr}",
                                     f"Blob client {attr.replace('_', ' ')}.",
                                     rows=[((), getattr(stats, attr))])
        cache = getattr(services.blobs, "cache", None)
        if cache is not None:
            yield from cache_families(cache)
        sampler = getattr(services.blobs, "temperature", None)
        if sampler is not None:
            yield from temperature_families("imapd", sampler.stats)


def commit_families(committers: Sequence[Any]) -> Iterator[Metric]:
    """LMTP's group commit (:class:`metadata.groupcommit.GroupCommitter`): commits by the
    deliveries they carried (1: alone), and batches that failed and were retried alone."""
    sizes: Counter[int] = Counter()
    for committer in committers:
        sizes.update(committer.batch_sizes)
    yield counter_family("imapd_lmtp_commits",
                         "PostgreSQL transactions LMTP deliveries were committed in, by how "
                         "many deliveries each carried.", ["deliveries"],
                         [((str(n),), count) for n, count in sorted(sizes.items())])
    yield counter_family("imapd_lmtp_batch_retries",
                         "Batches of LMTP deliveries that failed and were committed one "
                         "delivery at a time.",
                         rows=[((), sum(c.retried for c in committers))])


def cache_families(cache: Any) -> Iterator[Metric]:
    """The blob client's frontend cache (:class:`director.cache.BlobCache`): hits by tier,
    misses, evictions from memory, bytes held by tier."""
    stats = cache.stats
    tiers = [("memory", cache.memory.size)]
    if cache.disk is not None:
        tiers.append(("disk", cache.disk.size))
    yield counter_family("imapd_blob_cache_hits",
                         "Blob reads served by the frontend cache, by tier.", ["tier"],
                         [(("memory",), stats.hits - stats.disk_hits),
                          (("disk",), stats.disk_hits)])
    yield counter_family("imapd_blob_cache_misses",
                         "Blob reads the frontend cache could not serve (they went to the "
                         "object servers).", rows=[((), stats.misses)])
    yield counter_family("imapd_blob_cache_evictions",
                         "Blobs evicted from the frontend cache's memory tier.",
                         rows=[((), cache.memory.evictions)])
    yield gauge_family("imapd_blob_cache_bytes",
                       "Bytes of blobs the frontend cache holds, by tier.", ["tier"],
                       [((tier,), size) for tier, size in tiers])

"""imapd's Prometheus metrics: commands, their outcome and latency, logins, connections.

:class:`ImapMetrics` is bookkeeping without I/O: sessions report each command they finish
(protocol, command name, status word, seconds) and each login attempt; the process adds
gauges it reads at scrape time (open connections per listener, change-listener reconnects,
blob-client counters) as :class:`~director.metrics.Sample` values.  The exposition is
Prometheus' text format 0.0.4, served at ``GET /metrics`` by
:class:`director.metrics.MetricsResource` on ``imapd.metrics_listen``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from director.metrics import Histogram, Sample, family, histogram_family, sample_families

__all__ = ["ImapMetrics"]


class ImapMetrics:
    """What the IMAP and POP3 sessions of one process count."""

    def __init__(self) -> None:
        self.commands: Counter[tuple[str, str, str]] = Counter()
        self.latency: dict[tuple[str, str], Histogram] = {}
        self.logins: Counter[tuple[str, str]] = Counter()

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

    def render(self, extra: Iterable[Sample] = ()) -> bytes:
        """The exposition text: our families, then ``extra``."""
        out: list[str] = []
        family(out, "imapd_commands_total", "counter",
                "Commands answered, by protocol, command and status.",
                [((("protocol", p), ("command", c), ("status", s)), n)
                 for (p, c, s), n in sorted(self.commands.items())])
        family(out, "imapd_logins_total", "counter", "Login attempts, by protocol and result.",
                [((("protocol", p), ("result", r)), n) for (p, r), n in sorted(self.logins.items())])
        histogram_family(out, "imapd_command_seconds",
                         "Time from a parsed command to its answer.",
                         [((("protocol", p), ("command", c)), h)
                          for (p, c), h in sorted(self.latency.items())])
        sample_families(out, extra)
        return ("\n".join(out) + "\n").encode()

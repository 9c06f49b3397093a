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

from director.metrics import Histogram, Sample

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
        _family(out, "imapd_commands_total", "counter",
                "Commands answered, by protocol, command and status.",
                [((("protocol", p), ("command", c), ("status", s)), n)
                 for (p, c, s), n in sorted(self.commands.items())])
        _family(out, "imapd_logins_total", "counter", "Login attempts, by protocol and result.",
                [((("protocol", p), ("result", r)), n) for (p, r), n in sorted(self.logins.items())])
        name = "imapd_command_seconds"
        out.append(f"# HELP {name} Time from a parsed command to its answer.")
        out.append(f"# TYPE {name} histogram")
        for (protocol, command), hist in sorted(self.latency.items()):
            base = (("protocol", protocol), ("command", command))
            running = 0
            for bound, count in zip((*hist.bounds, float("inf")), hist.counts, strict=True):
                running += count
                le = "+Inf" if bound == float("inf") else repr(bound)
                out.append(f"{name}_bucket{_labels((*base, ('le', le)))} {running}")
            out.append(f"{name}_sum{_labels(base)} {hist.total!r}")
            out.append(f"{name}_count{_labels(base)} {hist.count}")
        grouped: dict[str, list[Sample]] = {}
        for sample in extra:
            grouped.setdefault(sample.name, []).append(sample)
        for sname, samples in grouped.items():
            _family(out, sname, samples[0].kind, samples[0].help,
                    [(s.labels, s.value) for s in samples])
        return ("\n".join(out) + "\n").encode()


def _family(out: list[str], name: str, kind: str, help_: str,
            rows: list[tuple[tuple[tuple[str, str], ...], float]]) -> None:
    out.append(f"# HELP {name} {help_}")
    out.append(f"# TYPE {name} {kind}")
    for labels, value in rows:
        number = str(int(value)) if float(value).is_integer() else repr(float(value))
        out.append(f"{name}{_labels(labels)} {number}")


def _labels(labels: tuple[tuple[str, str], ...]) -> str:
    if not labels:
        return ""
    escaped = (v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
               for _k, v in labels)
    return "{" + ",".join(f'{k}="{v}"' for (k, _v), v in zip(labels, escaped, strict=True)) + "}"

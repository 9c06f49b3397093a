"""imapd's metric bookkeeping and what its collectors export, parsed back with
prometheus_client's parser; LMTP replies counted through the real adapter."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.testing import StringTransport

from imapd.config import ImapdConfig
from imapd.lmtp import LMTPFactory
from imapd.metrics import ImapdCollector, ImapMetrics
from metadata.errors import Unavailable
from runtime.metrics import new_registry


def scrape(*collectors: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = new_registry("imapd", "t")
    for collector in collectors:
        registry.register(collector)
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            out[s.name, tuple(sorted(s.labels.items()))] = s.value
    return out


def test_commands_logins_and_gauges_are_exported() -> None:
    """Counters by protocol/command/status, login results, a cumulative latency
    histogram, open connections per listener and the services' counters appear."""
    m = ImapMetrics()
    m.observe("imap", "UID FETCH", "OK", 0.003)
    m.observe("imap", "UID FETCH", "OK", 0.2)
    m.observe("pop3", "RETR", "-ERR", 0.001)
    m.login("imap", True)
    m.login("pop3", False)
    factory = SimpleNamespace(open_connections=3)
    services = SimpleNamespace(changes=SimpleNamespace(reconnects=2),
                               blobs=SimpleNamespace(stats=SimpleNamespace(
                                   gets=7, failovers=1, bad_replicas=0)))
    got = scrape(m, ImapdCollector(lambda: [("imap", factory)], lambda: services))
    commands = "imapd_commands_total"
    assert got[commands, (("command", "UID FETCH"), ("protocol", "imap"), ("status", "OK"))] == 2
    assert got[commands, (("command", "RETR"), ("protocol", "pop3"), ("status", "-ERR"))] == 1
    assert got["imapd_logins_total", (("protocol", "imap"), ("result", "ok"))] == 1
    assert got["imapd_logins_total", (("protocol", "pop3"), ("result", "failed"))] == 1
    hist = (("command", "UID FETCH"), ("protocol", "imap"))
    assert got["imapd_command_seconds_bucket", (*hist[:1], ("le", "0.005"), hist[1])] == 1
    assert got["imapd_command_seconds_count", hist] == 2
    assert got["imapd_open_connections", (("listener", "imap"),)] == 3
    assert got["imapd_change_listener_reconnects_total", ()] == 2
    assert got["imapd_blob_gets_total", ()] == 7


def test_alerting_series_exist_before_the_first_failure() -> None:
    """Failed logins and LMTP 451/550 are exported at 0 from the start, so a rate over
    them is 0, not empty, until something fails."""
    got = scrape(ImapMetrics())
    for protocol in ("imap", "pop3"):
        assert got["imapd_logins_total", (("protocol", protocol), ("result", "failed"))] == 0
    for command in ("RCPT", "DATA"):
        for code in ("250", "451", "550"):
            assert got["imapd_lmtp_replies_total", (("code", code), ("command", command))] == 0


def test_lmtp_replies_counted_per_recipient_and_per_code() -> None:
    """A multi-line reply counts once, DATA's replies once per recipient, and a verb the
    client made up is counted as 'other'."""
    m = ImapMetrics()
    m.lmtp_sent("LHLO", ["250-host", "250-PIPELINING", "250 RSET"])
    m.lmtp_sent("DATA", ["250 2.0.0 <a> delivered", "451 4.3.0 <b>: temporary failure"])
    m.lmtp_sent("XYZZY", ["500 5.5.2 Unknown command"])
    assert m.lmtp_replies["LHLO", "250"] == 1
    assert (m.lmtp_replies["DATA", "250"], m.lmtp_replies["DATA", "451"]) == (1, 1)
    assert m.lmtp_replies["other", "500"] == 1


class _Users:
    async def get(self, name: str) -> Any:
        raise Unavailable("PostgreSQL is unreachable")


def test_lmtp_451_on_unreachable_database_is_counted() -> None:
    """When the recipient lookup finds PostgreSQL unreachable, the MTA gets 451 and
    imapd_lmtp_replies_total{command="RCPT",code="451"} counts it."""
    async def go() -> None:
        metrics = ImapMetrics()
        # Only the lookup is reached before the 451: a deliverer whose store says
        # PostgreSQL is down is all the session touches.
        deliverer = cast(Any, SimpleNamespace(store=SimpleNamespace(users=_Users())))
        factory = LMTPFactory(deliverer, ImapdConfig(), lambda: "lmtp.test", metrics=metrics)
        proto = factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        proto.dataReceived(b"LHLO mx\r\nMAIL FROM:<a@b>\r\nRCPT TO:<u@example.org>\r\n")
        for _ in range(20):
            await asyncio.sleep(0)
        replies = transport.value().decode().splitlines()
        assert replies[-1].startswith("451 4.3.0")
        got = scrape(metrics)
        assert got["imapd_lmtp_replies_total", (("code", "451"), ("command", "RCPT"))] == 1
        assert got["imapd_lmtp_replies_total", (("code", "220"), ("command", "CONNECT"))] == 1
        assert got["imapd_lmtp_replies_total", (("code", "250"), ("command", "MAIL"))] == 1

    asyncio.run(go())


def test_frontend_cache_hits_misses_and_bytes_are_exported(tmp_path: Path) -> None:
    """The blob client's frontend cache is exported: hits by tier (memory, disk), misses,
    memory evictions and the bytes each tier holds."""
    from director.blobids import BlobIds
    from director.cache import BlobCache, DiskCache

    cache = BlobCache(4096, DiskCache(tmp_path / "cache", 1 << 20, BlobIds()))
    blobs = {hashlib.sha256(bytes([i]) * 400).hexdigest(): bytes([i]) * 400 for i in range(12)}
    for key, data in blobs.items():
        assert cache.get(key) is None
        cache.put(key, data)
    first = next(iter(blobs))
    assert cache.get(first) == blobs[first]  # evicted from memory: served from disk
    assert cache.get(first) == blobs[first]  # now in memory again
    services = SimpleNamespace(changes=SimpleNamespace(reconnects=0),
                               blobs=SimpleNamespace(stats=None, cache=cache))
    got = scrape(ImapdCollector(lambda: [], lambda: services))
    assert got["imapd_blob_cache_hits_total", (("tier", "memory"),)] == 1
    assert got["imapd_blob_cache_hits_total", (("tier", "disk"),)] == 1
    assert got["imapd_blob_cache_misses_total", ()] == 12
    assert got["imapd_blob_cache_evictions_total", ()] == cache.memory.evictions > 0
    assert got["imapd_blob_cache_bytes", (("tier", "memory"),)] == cache.memory.size <= 4096
    assert got["imapd_blob_cache_bytes", (("tier", "disk"),)] == 12 * 400
    cache.close()

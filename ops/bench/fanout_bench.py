"""Fan-out dedup at full scale: one 5 MB PDF-like attachment in 1,000 different messages
for 1,000 users, delivered over LMTP; what the object servers hold, and whether parallel
deliveries of one shared blob serialise.

One run starts an objmail cluster (:class:`ops.bench.common.ObjmailCluster`: the stages of
``objmail dev up``, durable, ``replicas = 2``), creates ``--users`` users, and delivers, in
each of two phases, one message per user: the same attachment (``--attachment-mb`` of random,
hence incompressible, bytes behind a ``%PDF-1.5`` line, base64-encoded as a mailer sends it)
with a text part and headers naming the user, so every message differs but every attachment
part is the same blob.

* phase 1: ``--conns`` (10) parallel LMTP connections, on an empty cluster; then
  ``objmail stats`` (:func:`ops.stats_command.collect`): logical bytes (what users see),
  physical bytes (what the object servers hold, every replica), unique bytes
  (physical / replicas), the blob count and the dedup ratio;
* phase 2: the same deliveries over 1 connection, with a new attachment (so both phases
  upload one attachment and 1,000 skeletons and dedup 999 attachments);
* with ``--imapd N``, phase 3: phase 1 again (another new attachment) with the
  connections spread over N imapd processes, as behind a load balancer: one imapd is one
  Python process, and parsing 7 MB messages keeps it busy.

If deliveries serialised on the shared blob (a hot reference row, a lock per blob), 10
connections would be no faster than 1, and PostgreSQL sessions would queue for that lock.
The figures are msgs/s and the per-delivery latency of each phase, the servers' CPU
time, and how many samples of ``pg_stat_activity`` (every 20 ms) caught any session
waiting for a lock.

Usage::

    python -m ops.bench.fanout_bench [--users 1000] [--conns 10] [--attachment-mb 5]
        [--imapd 2] [--json results.json]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from ops.bench.common import (
    LmtpClient,
    ObjmailCluster,
    deliver_over,
    load_text,
    markdown_table,
    percentile,
    tree_cpu_seconds,
    wait_for_quiet,
)
from ops.stats_command import StorageStats, collect

MB = 1_000_000


@dataclass
class Phase:
    conns: int
    messages: int
    seconds: float
    p50_ms: float
    p99_ms: float
    refused: int
    server_cpu_s: float
    message_bytes: int
    lock_samples: int = 0
    """pg_stat_activity samples in which some backend waited for a lock."""
    samples: int = 0
    imapd: int = 1

    @property
    def per_second(self) -> float:
        return self.messages / self.seconds

    @property
    def mb_per_second(self) -> float:
        return self.messages * self.message_bytes / self.seconds / MB


def attachment_part(size: int) -> bytes:
    """The MIME body of the shared attachment: ``size`` bytes, PDF-like, incompressible,
    base64 in 76-character CRLF lines (no line starts with a dot: no dot-stuffing)."""
    raw = b"%PDF-1.5\n" + os.urandom(size - 9)
    return base64.encodebytes(raw).replace(b"\n", b"\r\n")


def message_head(user: str, n: int, phase: str) -> bytes:
    """Everything of message ``n`` before the attachment's body: unique per user and phase."""
    return (f"From: hr@example.org\r\nTo: {user}@example.org\r\n"
            f"Subject: Staff handbook ({phase}), copy {n}\r\n"
            f"Message-ID: <handbook.{phase}.{n}@example.org>\r\n"
            "MIME-Version: 1.0\r\n"
            "Content-Type: multipart/mixed; boundary=\"handbook-boundary\"\r\n\r\n"
            "--handbook-boundary\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
            f"Dear {user},\r\n\r\nplease find this year's handbook attached.\r\n"
            "--handbook-boundary\r\nContent-Type: application/pdf; name=\"handbook.pdf\"\r\n"
            "Content-Disposition: attachment; filename=\"handbook.pdf\"\r\n"
            "Content-Transfer-Encoding: base64\r\n\r\n").encode()


TAIL = b"--handbook-boundary--\r\n.\r\n"


class LockWatch:
    """Samples PostgreSQL's sessions while deliveries run: how often any of them waits for
    a lock.  A shared blob that every delivery had to lock (a reference counter row)
    would show up here as waits in most samples."""

    QUERY = ("SELECT count(*) FILTER (WHERE wait_event_type = 'Lock') FROM pg_stat_activity "
             "WHERE datname = current_database() AND pid <> pg_backend_pid()")

    def __init__(self, dsn: str, password: str | None, interval: float = 0.02) -> None:
        self.dsn = dsn
        self.password = password
        self.interval = interval
        self.samples = 0
        self.waiting = 0
        self._stop = asyncio.Event()

    async def run(self) -> None:
        import asyncpg

        conn = await asyncpg.connect(self.dsn, password=self.password)
        try:
            while not self._stop.is_set():
                if await conn.fetchval(self.QUERY):
                    self.waiting += 1
                self.samples += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self.interval)
        finally:
            await conn.close()

    def stop(self) -> None:
        self._stop.set()


async def deliver_all(ports: Sequence[int], users: Sequence[str], body: bytes, phase: str,
                      conns: int, watch: LockWatch | None = None,
                      ) -> tuple[float, list[float], int]:
    """One message per user over ``conns`` connections (spread over the LMTP ``ports``);
    wall time, latencies, refusals."""
    clients = await asyncio.gather(*(LmtpClient.open("127.0.0.1", ports[i % len(ports)])
                                     for i in range(conns)))
    watching = asyncio.ensure_future(watch.run()) if watch is not None else None

    def delivery(n: int) -> tuple[str, str, bytes]:
        return ("hr@example.org", f"{users[n]}@example.org",
                message_head(users[n], n, phase) + body + TAIL)

    try:
        return await deliver_over(clients, len(users), delivery)
    finally:
        if watch is not None and watching is not None:
            watch.stop()
            await watching


def run_phase(cluster: ObjmailCluster, users: Sequence[str], conns: int, size: int,
              phase: str, ports: Sequence[int] = ()) -> Phase:
    body = attachment_part(size)
    message_bytes = len(message_head(users[0], 0, phase) + body + TAIL)
    pids = cluster.server_pids()
    watch = LockWatch(cluster.conf.cluster.pg_dsn, cluster.cluster.credentials.pg_password)
    cpu0 = tree_cpu_seconds(pids)
    elapsed, latencies, refused = asyncio.run(
        deliver_all(ports or [cluster.lmtp_port], users, body, phase, conns, watch))
    cpu = tree_cpu_seconds(pids) - cpu0
    return Phase(conns, len(users), elapsed, percentile(latencies, 50) * 1000,
                 percentile(latencies, 99) * 1000, refused, cpu, message_bytes,
                 watch.waiting, watch.samples, max(1, len(ports)))


def phase_row(p: Phase) -> list[object]:
    waits = f"{p.lock_samples} of {p.samples}"
    return [p.conns, p.imapd, p.messages, f"{p.seconds:,.1f}", f"**{p.per_second:,.1f}**",
            f"{p.mb_per_second:,.0f}", f"{p.p50_ms:,.0f}", f"{p.p99_ms:,.0f}",
            f"{p.server_cpu_s:,.0f}", waits, p.refused]


def stats_rows(stats: StorageStats, attachment: int) -> list[list[object]]:
    # The attachment's base64 is stored decoded (metadata.splitter): compare with its bytes.
    copies = stats.physical_bytes / (stats.replicas * attachment)
    return [
        ["users / messages (mailbox entries)", f"{stats.users:,} / {stats.messages:,}"],
        ["logical bytes (what users see)", f"{stats.logical_bytes:,}"],
        ["physical bytes (object servers, all replicas)", f"{stats.physical_bytes:,}"],
        ["unique bytes (physical / replicas)", f"{stats.unique_bytes:,}"],
        ["blobs in the index", f"{stats.blobs:,}"],
        ["**dedup ratio** (logical / unique)", f"**{stats.dedup_ratio:,.1f}**"],
        ["physical / (replicas x attachment)", f"{copies:.2f}"],
    ]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--conns", type=int, default=10)
    ap.add_argument("--attachment-mb", type=float, default=5.0)
    ap.add_argument("--imapd", type=int, default=1,
                    help="also run phase 1 again over this many imapd processes (a third "
                         "attachment), the connections spread over their LMTP ports")
    ap.add_argument("--max-load", type=float, default=1.0,
                    help="wait for the 1-minute load average to drop below this")
    ap.add_argument("--wait", type=float, default=1200, help="longest wait for that, s")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    size = int(args.attachment_mb * MB)
    encoded = len(attachment_part(size))
    users = [f"fan{n:04d}" for n in range(args.users)]
    with ObjmailCluster() as cluster:
        t0 = time.monotonic()
        cluster.add_users(users, "secret", fast_hash=True)
        print(f"{len(users)} users created in {time.monotonic() - t0:.0f}s", file=sys.stderr)
        load = wait_for_quiet(args.max_load, args.wait)
        load_before = load_text()
        print(f"load average before measuring: {load_before}", file=sys.stderr)
        parallel = run_phase(cluster, users, args.conns, size, "parallel")
        print(f"{args.conns} connections: {parallel.per_second:.1f} msgs/s "
              f"(load {load_text()})", file=sys.stderr)
        stats = asyncio.run(collect(cluster.conf, cluster.cluster.credentials))
        serial = run_phase(cluster, users, 1, size, "serial")
        print(f"1 connection: {serial.per_second:.1f} msgs/s (load {load_text()})",
              file=sys.stderr)
        after = asyncio.run(collect(cluster.conf, cluster.cluster.credentials))
        phases = [parallel, serial]
        if args.imapd > 1:
            ports = [cluster.lmtp_port] + [cluster.add_imapd(f"imapd-{k}")[1]
                                           for k in range(2, args.imapd + 1)]
            spread = run_phase(cluster, users, args.conns, size, "spread", ports)
            print(f"{args.conns} connections over {args.imapd} imapd: "
                  f"{spread.per_second:.1f} msgs/s (load {load_text()})", file=sys.stderr)
            phases.append(spread)
    print(markdown_table(["LMTP connections", "imapd", "deliveries", "seconds", "msgs/s",
                          "MB/s in",
                          "p50 ms", "p99 ms", "server CPU s", "lock waits (samples)",
                          "refused"],
                         [phase_row(p) for p in phases]))
    print(f"\n{args.conns} connections / 1 connection: "
          f"{parallel.per_second / serial.per_second:.2f}x msgs/s\n")
    print(f"After phase 1 ({args.users} messages, one {size / MB:g} MB attachment, "
          f"{encoded:,} bytes as base64; {stats.replicas} replicas):\n")
    print(markdown_table(["figure", "value"], stats_rows(stats, size)))
    print(f"\nAfter phase 2 (two attachments): physical {after.physical_bytes:,} bytes, "
          f"{after.blobs:,} blobs, dedup ratio {after.dedup_ratio:,.1f}")
    print(f"message size {parallel.message_bytes:,} bytes; load average before: {load:.2f} "
          f"({load_before}), after: {load_text()}")
    if args.json:
        args.json.write_text(json.dumps({
            "phases": [asdict(p) for p in phases],
            "after_phase_1": dict(asdict(stats), dedup_ratio=stats.dedup_ratio),
            "after_phase_2": dict(asdict(after), dedup_ratio=after.dedup_ratio)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

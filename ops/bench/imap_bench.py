"""IMAP load generator: N concurrent clients running a command mix; commands/s and
latency percentiles per command.

Each client logs in as its own user (``--user-format``, e.g. ``bench{n}``; create them first,
for objmail with ``objmail user add``, for Dovecot as system or passwd-file users), selects
INBOX, makes sure it holds ``--seed`` messages (APPENDed from ``--corpus``), then loops over
the mix until ``--duration`` runs out:

``fetch_headers``  ``UID FETCH <random 20> (FLAGS BODY.PEEK[HEADER.FIELDS (FROM TO SUBJECT DATE)])``
``fetch_message``  ``UID FETCH <random 1> BODY.PEEK[]``
``search``         ``UID SEARCH`` on a flag, a header word, or a body word
``store``          ``UID STORE <random 1> +FLAGS/-FLAGS (\\Flagged)``
``append``         ``APPEND INBOX`` of a corpus message
``expunge``        ``UID STORE <oldest> +FLAGS (\\Deleted)`` then ``EXPUNGE``
``noop``           ``NOOP``

LOGIN and SELECT are timed once per client (and again with ``--reconnect``).  The same
binary runs against objmail and against Dovecot holding the same messages, so the two
reports compare directly:

    .venv/bin/python ops/bench/imap_bench.py --port 1143 --clients 50 --duration 60 \\
        --user-format 'bench{n}' --password secret --json > objmail.json

The client is a minimal asyncio IMAP reader (tagged responses, literals) so that the load
generator itself is not the bottleneck: it never parses more than it needs.

``--compare`` runs the comparison of BENCHMARKS.md in one go: it starts an objmail cluster
(:class:`ops.bench.common.ObjmailCluster`, the stages of ``objmail dev up``, durable) and a
private Dovecot (:class:`ops.bench.dovecot.PrivateDovecot`, maildir), creates the users
``bench0..`` in both, delivers the same ``--seed`` corpus messages to each user's INBOX on
both servers through their LMTP listeners, then runs the mix ``--reps`` times against each
(alternating which goes first) and prints per-command rates and latencies, the medians, and
the ratio objmail/Dovecot::

    .venv/bin/python -m ops.bench.imap_bench --compare --clients 20 --duration 30 --reps 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import re
import ssl
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ops.bench.common import (
    DEFAULT_CORPUS,
    LmtpClient,
    ObjmailCluster,
    corpus_messages,
    lmtp_payload,
    load_text,
    markdown_table,
    median,
    percentile,
    tree_cpu_seconds,
    wait_for_quiet,
)
from ops.bench.dovecot import PrivateDovecot

DEFAULT_MIX = "fetch_headers=30,fetch_message=15,search=15,store=15,append=10,expunge=5,noop=10"
_LITERAL = re.compile(rb"\{(\d+)\+?\}\r\n$")
_UID = re.compile(rb"UID (\d+)")
_SEARCH = re.compile(rb"^\* SEARCH([ \d]*)", re.MULTILINE)


class ImapError(Exception):
    """A tagged NO/BAD or a dropped connection."""


class Connection:
    """Just enough IMAP: send a command, collect untagged data up to the tagged reply."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.counter = 0

    @classmethod
    async def open(cls, host: str, port: int, tls: ssl.SSLContext | None) -> Connection:
        reader, writer = await asyncio.open_connection(host, port, ssl=tls,
                                                       limit=64 * 1024 * 1024)
        conn = cls(reader, writer)
        greeting = await reader.readline()
        if not greeting.startswith(b"* OK"):
            raise ImapError(f"bad greeting {greeting[:80]!r}")
        return conn

    async def command(self, text: bytes, literal: bytes | None = None) -> bytes:
        """Run one command (with one LITERAL+ literal when given); the untagged data."""
        self.counter += 1
        tag = b"b%d" % self.counter
        if literal is None:
            self.writer.write(tag + b" " + text + b"\r\n")
        else:
            self.writer.write(tag + b" " + text + b" {%d+}\r\n" % len(literal) + literal
                              + b"\r\n")
        chunks: list[bytes] = []
        while True:
            line = await self.reader.readline()
            if not line:
                raise ImapError("connection closed")
            found = _LITERAL.search(line)
            if found:
                chunks.append(line)
                chunks.append(await self.reader.readexactly(int(found.group(1))))
                continue
            if line.startswith(tag + b" "):
                if not line[len(tag) + 1:].startswith(b"OK"):
                    raise ImapError(line.decode("ascii", "replace").strip())
                return b"".join(chunks)
            chunks.append(line)

    async def close(self) -> None:
        with contextlib.suppress(ImapError, OSError, TimeoutError):
            await asyncio.wait_for(self.command(b"LOGOUT"), 5)
        self.writer.close()


@dataclass
class Stats:
    """Latencies in seconds per command name, and errors."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def merge(self, other: Stats) -> None:
        for name, values in other.latencies.items():
            self.latencies[name].extend(values)
        for name, count in other.errors.items():
            self.errors[name] += count


def parse_mix(text: str) -> list[tuple[str, int]]:
    mix = []
    for item in text.split(","):
        name, _, weight = item.partition("=")
        if name not in OPERATIONS:
            raise SystemExit(f"unknown operation {name!r} (known: {', '.join(OPERATIONS)})")
        mix.append((name, int(weight or 1)))
    return mix


@dataclass
class Client:
    """One simulated user."""

    n: int
    args: argparse.Namespace
    corpus: list[bytes]
    rng: random.Random
    stats: Stats
    conn: Connection | None = None
    uids: list[int] = field(default_factory=list)

    async def timed(self, name: str, text: bytes, literal: bytes | None = None) -> bytes:
        assert self.conn is not None
        start = time.perf_counter()
        try:
            data = await self.conn.command(text, literal)
        except ImapError:
            self.stats.errors[name] += 1
            raise
        self.stats.latencies[name].append(time.perf_counter() - start)
        return data

    async def connect(self) -> None:
        args = self.args
        tls = None
        if args.tls:
            tls = ssl.create_default_context()
            tls.check_hostname = False
            tls.verify_mode = ssl.CERT_NONE
        self.conn = await Connection.open(args.host, args.port, tls)
        user = args.user_format.format(n=self.n)
        await self.timed("login", b'LOGIN "%s" "%s"' % (user.encode(), args.password.encode()))
        await self.timed("select", b"SELECT INBOX")
        await self.refresh_uids()
        while len(self.uids) < args.seed:
            await self.append()

    async def refresh_uids(self) -> None:
        assert self.conn is not None
        data = await self.conn.command(b"UID SEARCH ALL")
        found = _SEARCH.search(data)
        self.uids = [int(x) for x in found.group(1).split()] if found else []

    def some_uids(self, count: int) -> bytes:
        picked = sorted(self.rng.sample(self.uids, min(count, len(self.uids))))
        return b",".join(b"%d" % uid for uid in picked) if picked else b"1"

    async def append(self) -> None:
        raw = self.rng.choice(self.corpus)
        await self.timed("append", b"APPEND INBOX ()", raw)
        await self.refresh_uids()

    async def run_one(self, name: str) -> None:
        if name == "fetch_headers":
            await self.timed(name, b"UID FETCH %s (FLAGS BODY.PEEK[HEADER.FIELDS "
                             b"(FROM TO SUBJECT DATE)])" % self.some_uids(20))
        elif name == "fetch_message":
            await self.timed(name, b"UID FETCH %s BODY.PEEK[]" % self.some_uids(1))
        elif name == "search":
            query = self.rng.choice([b"UNSEEN", b"FLAGGED", b"FROM example", b"SUBJECT re",
                                     b"BODY the", b"SINCE 1-Jan-2020"])
            await self.timed(name, b"UID SEARCH " + query)
        elif name == "store":
            sign = self.rng.choice([b"+", b"-"])
            await self.timed(name, b"UID STORE %s %sFLAGS (\\Flagged)" % (self.some_uids(1),
                                                                           sign))
        elif name == "append":
            await self.append()
        elif name == "expunge":
            if len(self.uids) > self.args.seed // 2:
                oldest = b"%d" % self.uids[0]
                await self.timed("expunge", b"UID STORE " + oldest + b" +FLAGS (\\Deleted)")
                await self.timed("expunge", b"EXPUNGE")
                self.uids.pop(0)
        elif name == "noop":
            await self.timed(name, b"NOOP")

    async def loop(self, mix: list[tuple[str, int]], deadline: float) -> None:
        names = [name for name, _ in mix]
        weights = [weight for _, weight in mix]
        while time.monotonic() < deadline:
            name = self.rng.choices(names, weights)[0]
            try:
                await self.run_one(name)
            except ImapError:
                if self.conn is None or self.conn.writer.is_closing():
                    return


OPERATIONS = ("fetch_headers", "fetch_message", "search", "store", "append", "expunge", "noop")


def load_corpus(directory: Path, limit: int) -> list[bytes]:
    return corpus_messages(directory, limit, max_size=512 * 1024)


async def run(args: argparse.Namespace) -> dict[str, object]:
    corpus = load_corpus(Path(args.corpus), args.corpus_limit)
    if not corpus:
        raise SystemExit(f"no messages under {args.corpus}")
    mix = parse_mix(args.mix)
    stats = Stats()
    clients = [Client(n, args, corpus, random.Random(args.seed_rng + n), Stats())
               for n in range(args.first_user, args.first_user + args.clients)]
    await asyncio.gather(*(c.connect() for c in clients))
    start = time.monotonic()
    deadline = start + args.duration
    await asyncio.gather(*(c.loop(mix, deadline) for c in clients))
    elapsed = time.monotonic() - start
    await asyncio.gather(*(c.conn.close() for c in clients if c.conn is not None))
    for client in clients:
        stats.merge(client.stats)
    per_command = {}
    loop_total = 0
    for name, values in sorted(stats.latencies.items()):
        counted = name not in ("login", "select")
        if counted:
            loop_total += len(values)
        per_command[name] = {
            "count": len(values),
            "per_second": round(len(values) / elapsed, 1) if counted else None,
            "p50_ms": round(statistics.median(values) * 1000, 2),
            "p99_ms": round(percentile(values, 99) * 1000, 2),
            "errors": stats.errors.get(name, 0),
        }
    return {"host": args.host, "port": args.port, "clients": args.clients,
            "duration_s": round(elapsed, 2), "commands_per_second": round(loop_total / elapsed, 1),
            "mix": args.mix, "per_command": per_command}


def build_arg_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=1143)
    ap.add_argument("--tls", action="store_true", help="IMAPS (certificate not verified)")
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--duration", type=float, default=30.0, help="seconds of load")
    ap.add_argument("--user-format", default="bench{n}", help="user name of client n")
    ap.add_argument("--first-user", type=int, default=0)
    ap.add_argument("--password", default="secret")
    ap.add_argument("--mix", default=DEFAULT_MIX, help="name=weight,... of " + ", ".join(OPERATIONS))
    ap.add_argument("--seed", type=int, default=50, help="messages each INBOX holds before")
    ap.add_argument("--corpus", default=str(Path(__file__).resolve().parents[3] / "shared"
                                            / "corpus"))
    ap.add_argument("--corpus-limit", type=int, default=200)
    ap.add_argument("--seed-rng", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    report = asyncio.run(run(args))
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{args.clients} clients, {report['duration_s']} s: "
          f"{report['commands_per_second']} commands/s")
    print(f"{'command':15} {'count':>8} {'per s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    per_command = report["per_command"]
    assert isinstance(per_command, dict)
    for name, row in per_command.items():
        rate = "-" if row["per_second"] is None else row["per_second"]
        print(f"{name:15} {row['count']:>8} {rate:>8} {row['p50_ms']:>8} {row['p99_ms']:>8} "
              f"{row['errors']:>7}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

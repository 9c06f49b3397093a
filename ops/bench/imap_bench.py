"""IMAP load generator: N concurrent clients running a command mix; commands/s and
latency percentiles per command.

Each client logs in as its own user (``--user-format``, e.g. ``bench{n}``; create them first,
for objmail with ``objmail user add``, for Dovecot as system or passwd-file users), selects
INBOX, makes sure it holds ``--seed`` messages (APPENDed from ``--corpus``), then loops over
the mix until ``--duration`` runs out:

``fetch_headers``  ``UID FETCH <random 20> (FLAGS BODY.PEEK[HEADER.FIELDS (FROM TO SUBJECT DATE)])``
``fetch_message``  ``UID FETCH <random 1> BODY.PEEK[]``
``search``         ``UID SEARCH`` on a flag, a header word, or a body word
``search_body``    ``UID SEARCH BODY`` of a word (not in the default mix: the body search
                   alone, e.g. ``--mix search_body=1``)
``store``          ``UID STORE <random 1> +FLAGS/-FLAGS (\\Flagged)``
``append``         ``APPEND INBOX`` of a corpus message (its UID from APPENDUID)
``expunge``        ``UID STORE <oldest> +FLAGS (\\Deleted)`` then ``EXPUNGE``; the oldest
                   messages beyond ``--seed`` go at once, so the mailbox stays near that size
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

``--targets objmail,objmail-plain`` measures what security costs instead: two objmail
clusters, one with the release's defaults (keyed ids, AES-GCM, the blob plane's login) and
one with encryption and the blob-plane login off (``ops.bench.common.OBJMAIL_TARGETS``),
seeded and measured alike, alternating; the ratio column is then secure/plain.  The ratio is
always the first target over the second::

    .venv/bin/python -m ops.bench.imap_bench --compare --targets objmail,objmail-plain

``--targets objmail,objmail-pure`` measures what the compiled modules buy: the same cluster
with and without ``OBJMAIL_PURE=1`` (:mod:`runtime.compiled`).

``--imapd N`` starts N-1 more imapd processes over the same storage and spreads the
objmail clients over them, as a load balancer in front of stateless frontends would.
``--workers N`` sets ``[imapd] workers`` of each (0, the default: one per core), worker
processes sharing the ports (SO_REUSEPORT)::

    .venv/bin/python -m ops.bench.imap_bench --compare --workers 1
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
from typing import Any

from ops.bench.common import (
    DEFAULT_CORPUS,
    GROUPS,
    OBJMAIL_TARGETS,
    PURE_TARGETS,
    ObjmailCluster,
    corpus_messages,
    group_cpu,
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
_APPENDUID = re.compile(rb"\[APPENDUID \d+ (\d+)\]")
_SEARCH = re.compile(rb"^\* SEARCH([ \d]*)", re.MULTILINE)


class ImapError(Exception):
    """A tagged NO/BAD or a dropped connection."""


class Connection:
    """Just enough IMAP: send a command, collect untagged data up to the tagged reply."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.counter = 0
        self.last_tagged = b""

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
                self.last_tagged = line
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
        # Clients are spread over the servers' ports in turn (several imapd frontends).
        ports = getattr(args, "ports", None) or [args.port]
        self.conn = await Connection.open(args.host, ports[self.n % len(ports)], tls)
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
        assert self.conn is not None
        # UIDPLUS gives the new UID; without it, ask for them all (an untimed command).
        found = _APPENDUID.search(self.conn.last_tagged)
        if found:
            self.uids.append(int(found.group(1)))
        else:
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
        elif name == "search_body":
            word = self.rng.choice([b"the", b"message", b"please", b"mail"])
            await self.timed(name, b"UID SEARCH BODY " + word)
        elif name == "store":
            sign = self.rng.choice([b"+", b"-"])
            await self.timed(name, b"UID STORE %s %sFLAGS (\\Flagged)" % (self.some_uids(1),
                                                                           sign))
        elif name == "append":
            await self.append()
        elif name == "expunge":
            if len(self.uids) > self.args.seed // 2:
                # The oldest message, or all beyond the seed size, so that appends and
                # expunges keep the mailbox near its seed size however long the run.
                count = max(1, len(self.uids) - self.args.seed)
                oldest = b",".join(b"%d" % uid for uid in self.uids[:count])
                await self.timed("expunge", b"UID STORE " + oldest + b" +FLAGS (\\Deleted)")
                await self.timed("expunge", b"EXPUNGE")
                del self.uids[:count]
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


OPERATIONS = ("fetch_headers", "fetch_message", "search", "search_body", "store", "append",
              "expunge", "noop")


def load_corpus(directory: Path, limit: int) -> list[bytes]:
    return corpus_messages(directory, limit, max_size=512 * 1024)


async def run(args: argparse.Namespace, cpu_pids: Sequence[int] = ()) -> dict[str, Any]:
    """One load run against ``args.host:args.port``; the report.

    :param cpu_pids: server processes whose CPU time (trees) is reported per command.
    """
    corpus = load_corpus(Path(args.corpus), args.corpus_limit)
    if not corpus:
        raise SystemExit(f"no messages under {args.corpus}")
    mix = parse_mix(args.mix)
    stats = Stats()
    clients = [Client(n, args, corpus, random.Random(args.seed_rng + n), Stats())
               for n in range(args.first_user, args.first_user + args.clients)]
    await asyncio.gather(*(c.connect() for c in clients))
    cpu0 = tree_cpu_seconds(cpu_pids)
    groups0 = group_cpu(cpu_pids)
    own0 = time.process_time()
    start = time.monotonic()
    deadline = start + args.duration
    await asyncio.gather(*(c.loop(mix, deadline) for c in clients))
    elapsed = time.monotonic() - start
    cpu = tree_cpu_seconds(cpu_pids) - cpu0
    groups1 = group_cpu(cpu_pids)
    own = time.process_time() - own0
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
    report: dict[str, Any] = {
        "host": args.host, "port": args.port, "clients": args.clients,
        "duration_s": round(elapsed, 2), "commands_per_second": round(loop_total / elapsed, 1),
        "mix": args.mix, "per_command": per_command,
        # This generator's own CPU: when it nears one core, it limits the rate it measures.
        "client_cpu_cores": round(own / elapsed, 2)}
    if cpu_pids:
        report["server_cpu_ms_per_command"] = round(cpu * 1000 / max(loop_total, 1), 3)
        report["server_cpu_cores"] = round(cpu / elapsed, 2)
        # Where it goes, for objmail's cluster (Dovecot's processes fall in no group).
        report["server_cpu_ms_by_process"] = {
            g: round((groups1[g] - groups0[g]) * 1000 / max(loop_total, 1), 3)
            for g in GROUPS if groups1[g] > groups0[g]}
    return report


# -- objmail against Dovecot --------------------------------------------------------------

TARGETS = ("objmail", "objmail-plain", "objmail-pure", "dovecot")
_TITLES = {"objmail": "objmail", "objmail-plain": "objmail-plain", "objmail-pure": "objmail-pure",
           "dovecot": "Dovecot"}


def seed_deliveries(args: argparse.Namespace, corpus: Sequence[bytes],
                    users: Sequence[str]) -> list[tuple[str, bytes]]:
    """``--seed`` messages per user, the same bytes for both servers."""
    from ops.bench.lmtp_bench import stamped

    out = []
    for n, user in enumerate(users):
        for k in range(args.seed):
            raw = corpus[(n * args.seed + k) % len(corpus)]
            out.append((f"{user}@example.org", lmtp_payload(stamped(raw, f"seed.{n}.{k}"))))
    return out


def compare_table(reports: dict[str, list[dict[str, Any]]]) -> str:
    """Per command and for the whole mix: medians over the reps of each server; the ratio
    is the first target's over the second's."""
    first, second = list(reports)[:2]
    one, two = _TITLES.get(first, first), _TITLES.get(second, second)

    def cmd(target: str, name: str, key: str) -> float | None:
        values = []
        for r in reports.get(target, []):
            row = r["per_command"].get(name)
            if row is not None and row[key] is not None:
                values.append(float(row[key]))
        return median(values) if values else None

    def fmt(x: float | None, digits: int = 0) -> str:
        return "-" if x is None else f"{x:,.{digits}f}"

    names: list[str] = []
    for target_reports in reports.values():
        for r in target_reports:
            for name in r["per_command"]:
                if name not in names:
                    names.append(name)
    rows = []
    for name in [*OPERATIONS, "login", "select"]:
        if name not in names:
            continue
        o_rate, d_rate = cmd(first, name, "per_second"), cmd(second, name, "per_second")
        ratio = f"{o_rate / d_rate:.2f}x" if o_rate is not None and d_rate else "-"
        rows.append([name, fmt(o_rate), fmt(cmd(first, name, "p50_ms"), 1),
                     fmt(cmd(first, name, "p99_ms"), 1), fmt(d_rate),
                     fmt(cmd(second, name, "p50_ms"), 1),
                     fmt(cmd(second, name, "p99_ms"), 1), ratio])
    totals = {t: median(float(r["commands_per_second"]) for r in rs)
              for t, rs in reports.items() if rs}
    ratio = (f"**{totals[first] / totals[second]:.2f}x**"
             if totals.get(second) and first in totals else "-")
    rows.append(["**mix**", f"**{fmt(totals.get(first))}**", "", "",
                 f"**{fmt(totals.get(second))}**", "", "", ratio])
    table = markdown_table(["command", f"{one} /s", "p50 ms", "p99 ms", f"{two} /s",
                            "p50 ms", "p99 ms", f"{one}/{two}"], rows)
    reps = []
    for target, rs in reports.items():
        per_rep = " / ".join(f"{float(r['commands_per_second']):,.0f}"
                             for r in rs)
        cpu = median(float(r.get("server_cpu_ms_per_command", 0)) for r in rs)
        cores = median(float(r.get("server_cpu_cores", 0)) for r in rs)
        errors = sum(int(row["errors"]) for r in rs
                     for row in r["per_command"].values())
        client = median(float(r.get("client_cpu_cores", 0)) for r in rs)
        split = ", ".join(
            f"{g} {median(float(r.get('server_cpu_ms_by_process', {}).get(g, 0)) for r in rs):.2f}"
            for g in GROUPS if any(g in r.get("server_cpu_ms_by_process", {}) for r in rs))
        reps.append(f"{target}: commands/s per rep {per_rep}; server CPU {cpu:.2f} ms per "
                    f"command{f' ({split})' if split else ''}, {cores:.2f} cores busy; "
                    f"load generator {client:.2f} cores; {errors} errors")
    return table + "\n\n" + "\n".join(reps)


def compare(args: argparse.Namespace) -> int:
    """Start both servers, give them the same mail, run the mix against each."""
    from ops.bench.lmtp_bench import deliver_batch

    corpus = load_corpus(Path(args.corpus), args.corpus_limit)
    if not corpus:
        raise SystemExit(f"no messages under {args.corpus}")
    targets = args.targets.split(",")
    users = [args.user_format.format(n=n)
             for n in range(args.first_user, args.first_user + args.clients)]
    reports: dict[str, list[dict[str, Any]]] = {t: [] for t in targets}
    if unknown := set(targets) - set(TARGETS):
        raise SystemExit(f"unknown target(s) {', '.join(sorted(unknown))}")
    if len(targets) < 2:
        raise SystemExit("--compare needs two targets (the ratio is the first over the second)")
    with contextlib.ExitStack() as stack:
        servers: dict[str, tuple[list[int], int, list[int]]] = {}
        for target in targets:
            if target == "dovecot":
                dovecot = stack.enter_context(PrivateDovecot(users, password=args.password))
                servers[target] = ([dovecot.imap_port], dovecot.lmtp_port, [dovecot.pid or 0])
                continue
            objmail = stack.enter_context(ObjmailCluster(security=OBJMAIL_TARGETS[target],
                                                         pure=target in PURE_TARGETS,
                                                         imapd_workers=args.workers))
            objmail.add_users(users, args.password)
            imap_ports = [objmail.imap_port] + [objmail.add_imapd(f"imapd-{k}")[0]
                                                for k in range(2, args.imapd + 1)]
            servers[target] = (imap_ports, objmail.lmtp_port, objmail.server_pids())
        seed = seed_deliveries(args, corpus, users)
        for target in targets:
            _imap, lmtp, _pids = servers[target]
            elapsed, _lat, refused = asyncio.run(deliver_batch(lmtp, seed, 10))
            if refused:
                raise SystemExit(f"{target} refused {refused} of the seed messages")
            print(f"{target}: {len(seed)} seed messages delivered by LMTP in {elapsed:.1f}s",
                  file=sys.stderr)
        load = wait_for_quiet(args.max_load, args.wait)
        load_before = load_text()
        print(f"load average before measuring: {load_before}", file=sys.stderr)
        for rep in range(args.reps):
            order = targets if rep % 2 == 0 else list(reversed(targets))
            for target in order:
                imap, _lmtp, pids = servers[target]
                run_args = argparse.Namespace(**{**vars(args), "port": imap[0], "ports": imap,
                                                 "host": "127.0.0.1", "tls": False})
                report = asyncio.run(run(run_args, cpu_pids=pids))
                reports[target].append(report)
                print(f"rep {rep + 1} {target}: {report['commands_per_second']} commands/s "
                      f"(load {load_text()})", file=sys.stderr)
    print(compare_table(reports))
    workers = "one per core" if args.workers == 0 else args.workers
    print(f"\nobjmail with {args.imapd} imapd process(es) of {workers} worker(s); "
          f"{args.clients} clients, {args.duration:.0f} s per rep, {args.reps} reps, seed "
          f"{args.seed} messages per INBOX, mix {args.mix}; load average before: "
          f"{load:.2f} ({load_before}), after: {load_text()}")
    if args.json_file:
        Path(args.json_file).write_text(json.dumps(reports, indent=1))
    return 0


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
    ap.add_argument("--corpus", default=str(DEFAULT_CORPUS))
    ap.add_argument("--corpus-limit", type=int, default=200)
    ap.add_argument("--seed-rng", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--compare", action="store_true",
                    help="start objmail and Dovecot with the same mail and run against both")
    ap.add_argument("--targets", default="objmail,dovecot",
                    help="with --compare: two or three of " + ", ".join(TARGETS)
                    + "; ratios are the first over the second")
    ap.add_argument("--reps", type=int, default=3, help="with --compare")
    ap.add_argument("--max-load", type=float, default=1.0,
                    help="with --compare: wait for the 1-minute load average to drop below")
    ap.add_argument("--wait", type=float, default=1200, help="longest wait for that, s")
    ap.add_argument("--json-file", help="with --compare: write every run's report here")
    ap.add_argument("--imapd", type=int, default=1,
                    help="with --compare: objmail imapd processes, clients spread over them")
    ap.add_argument("--workers", type=int, default=0,
                    help="with --compare: [imapd] workers of each objmail imapd (0: one per "
                    "core, the default; the kernel spreads connections over them)")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    if args.compare:
        return compare(args)
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

"""NOTIFY (RFC 5465) fan-out: what idle NOTIFY sessions cost and how soon they hear of a
change, objmail against Dovecot (its ``notify`` plugin) in one run.

For each of ``--users`` users the bench opens a *watcher* (LOGIN, CREATE Lists,
``NOTIFY SET (PERSONAL (MessageNew MessageExpunge))``, then only reads) and a *driver*
(LOGIN, then APPENDs).  Two measurements per server and rep:

``base``    the servers' CPU over ``--quiet`` seconds with no session at all;
``quiet``   the servers' CPU (process trees, PostgreSQL and every objmail daemon included)
            over ``--quiet`` seconds with every watcher in NOTIFY and nothing happening:
            what a server spends on sessions that wait (polling would show here);
``rounds``  ``--rounds`` times, every driver APPENDs one message to its user's Lists at
            once; the latency is from sending the APPEND to the watcher reading the
            ``* STATUS Lists (MESSAGES n ...)`` it causes; CPU per round covers the APPENDs
            and the notifications.

Reps alternate which server goes first; the table shows medians over the reps::

    .venv/bin/python -m ops.bench.notify_bench --users 50 --rounds 20 --reps 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

from ops.bench.common import (
    ObjmailCluster,
    load_text,
    markdown_table,
    median,
    percentile,
    tree_cpu_seconds,
)
from ops.bench.dovecot import PrivateDovecot

_STATUS = re.compile(rb'^\* STATUS "?Lists"? \(.*?MESSAGES (\d+)')
_MESSAGE = (b"From: bench@example.org\r\nTo: watcher@example.org\r\nSubject: notify bench\r\n"
            b"\r\n" + b"A line of body text.\r\n" * 20)


class NotifyDovecot(PrivateDovecot):
    """The private Dovecot with its ``notify`` plugin, which NOTIFY needs."""

    def config_text(self) -> str:
        return super().config_text() + "mail_plugins = $mail_plugins notify\n"


class Client:
    """Just enough IMAP for this bench: tagged commands, and a reader of STATUS lines."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.counter = 0
        #: MESSAGES count -> when a STATUS of Lists with it arrived (watchers).
        self.heard: dict[int, float] = {}
        self.changed = asyncio.Event()

    @classmethod
    async def open(cls, port: int, user: str, password: str) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer)
        await reader.readline()
        await client.command(f"LOGIN {user} {password}".encode())
        return client

    async def command(self, text: bytes, literal: bytes | None = None) -> bytes:
        self.counter += 1
        tag = b"t%d" % self.counter
        if literal is None:
            self.writer.write(tag + b" " + text + b"\r\n")
        else:
            self.writer.write(tag + b" " + text + b" {%d+}\r\n" % len(literal) + literal
                              + b"\r\n")
        lines: list[bytes] = []
        while True:
            line = await self.reader.readline()
            if not line:
                raise ConnectionError("connection closed")
            if line.startswith(tag + b" "):
                return b"".join(lines) + line
            lines.append(line)

    async def listen(self) -> None:
        """Read what the server sends on its own, noting each STATUS of Lists."""
        while True:
            line = await self.reader.readline()
            if not line:
                return
            found = _STATUS.match(line)
            if found:
                self.heard.setdefault(int(found.group(1)), time.monotonic())
                self.changed.set()

    async def wait_for(self, count: int, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while count not in self.heard:
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), max(deadline - time.monotonic(), 0))
        return self.heard[count]

    def close(self) -> None:
        self.writer.close()


async def cpu_rate(pids: Sequence[int], seconds: float) -> float:
    """CPU seconds per second of the process trees under ``pids`` over ``seconds``."""
    cpu = tree_cpu_seconds(pids)
    started = time.monotonic()
    await asyncio.sleep(seconds)
    return (tree_cpu_seconds(pids) - cpu) / (time.monotonic() - started)


async def measure(port: int, users: Sequence[str], password: str, pids: Sequence[int],
                  args: argparse.Namespace) -> dict[str, Any]:
    """One rep against one server."""
    base_cpu = await cpu_rate(pids, args.quiet)  # the server with no session at all
    watchers = [await Client.open(port, u, password) for u in users]
    drivers = [await Client.open(port, u, password) for u in users]
    counts = []
    for watcher in watchers:
        await watcher.command(b"CREATE Lists")  # NO when it exists: fine
        status = await watcher.command(b"STATUS Lists (MESSAGES)")
        counts.append(int(re.search(rb"MESSAGES (\d+)", status).group(1)))  # type: ignore[union-attr]
        reply = await watcher.command(b"NOTIFY SET (PERSONAL (MessageNew MessageExpunge))")
        if b"OK" not in reply.rsplit(b"\r\n", 2)[-2]:
            raise SystemExit(f"NOTIFY refused: {reply!r}")
    readers = [asyncio.ensure_future(w.listen()) for w in watchers]
    try:
        await asyncio.sleep(1)
        quiet_cpu = await cpu_rate(pids, args.quiet)
        latencies: list[float] = []
        cpu = tree_cpu_seconds(pids)

        async def one(n: int, round_: int) -> None:
            sent = time.monotonic()
            await drivers[n].command(b"APPEND Lists", _MESSAGE)
            heard = await watchers[n].wait_for(counts[n] + round_ + 1, args.timeout)
            latencies.append(heard - sent)

        for round_ in range(args.rounds):
            await asyncio.gather(*(one(n, round_) for n in range(len(users))))
        round_cpu = (tree_cpu_seconds(pids) - cpu) / args.rounds
    finally:
        for task in readers:
            task.cancel()
        for client in (*watchers, *drivers):
            client.close()
    return {"base_cpu": base_cpu, "quiet_cpu": quiet_cpu, "round_cpu": round_cpu,
            "p50": percentile(latencies, 50), "p99": percentile(latencies, 99),
            "mean": statistics.fmean(latencies)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--quiet", type=float, default=10.0,
                        help="seconds of measuring idle NOTIFY sessions")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--password", default="secret")
    args = parser.parse_args(argv)
    users = [f"notify{n}" for n in range(args.users)]
    results: dict[str, list[dict[str, Any]]] = {"objmail": [], "dovecot": []}
    with ObjmailCluster() as objmail, NotifyDovecot(users, password=args.password) as dovecot:
        objmail.add_users(users, args.password, fast_hash=True)
        servers = {"objmail": (objmail.imap_port, objmail.server_pids()),
                   "dovecot": (dovecot.imap_port, [dovecot.pid or 0])}
        print(f"load average before measuring: {load_text()}", file=sys.stderr)
        for rep in range(args.reps):
            order = ["objmail", "dovecot"] if rep % 2 == 0 else ["dovecot", "objmail"]
            for name in order:
                port, pids = servers[name]
                result = asyncio.run(measure(port, users, args.password, pids, args))
                results[name].append(result)
                print(f"rep {rep + 1} {name}: {result}", file=sys.stderr)
    rows = []
    for name, runs in results.items():
        rows.append([
            name,
            f"{median(r['base_cpu'] for r in runs) * 1000:.1f}",
            f"{median(r['quiet_cpu'] for r in runs) * 1000:.1f}",
            f"{median(r['round_cpu'] for r in runs) * 1000 / args.users:.2f}",
            f"{median(r['p50'] for r in runs) * 1000:.1f}",
            f"{median(r['p99'] for r in runs) * 1000:.1f}",
        ])
    print(markdown_table(
        ["server", "CPU ms/s, no session", f"CPU ms/s, {args.users} idle NOTIFY sessions",
         "CPU ms per APPEND + notification", "latency p50 ms", "latency p99 ms"], rows))
    print(f"\n{args.users} users, {args.rounds} rounds, {args.quiet:.0f} s quiet, "
          f"{args.reps} reps; load average after: {load_text()}")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())

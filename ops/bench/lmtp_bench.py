"""LMTP delivery benchmark: objmail's imapd LMTP listener against Dovecot's LMTP into
maildir, in one run, in messages/s and per-message latency.

One run starts an objmail cluster (:class:`ops.bench.common.ObjmailCluster`: the stages of
``objmail dev up``, durable, ``replicas = 2``) and a private Dovecot
(:class:`ops.bench.dovecot.PrivateDovecot`, maildir, ``mail_fsync = optimized``), creates the
same ``--users`` in both, then, ``--reps`` times and alternating which server goes first,
delivers ``--messages`` corpus messages to each over ``--conns`` parallel LMTP connections
(one recipient per message, users in turn; with ``--rcpts N``, ``--messages / N``
transactions of N recipients each, and rates count the N copies).  It reports the median messages/s, the median
p50/p99 latency of a delivery (MAIL to the recipient's 250), the CPU seconds the servers'
process trees used per message, and the ratio objmail/Dovecot.

``--targets objmail,objmail-plain`` measures what security costs instead: two objmail
clusters, one with the release's defaults (keyed ids, AES-GCM, the blob plane's login) and
one with encryption and the blob-plane login off (``ops.bench.common.OBJMAIL_TARGETS``),
alternating in the same run; the report gives the secure/plain ratio.  Any two or three of
``objmail``, ``objmail-plain``, ``objmail-pure`` (the pure-Python modules, no compiled
build: :mod:`runtime.compiled`) and ``dovecot`` may be named.

Every delivery carries a ``Received:`` line unique to it (an MTA adds one), so no two
deliveries are the same message: objmail stores a new skeleton for each, while a part body
of 4 KiB or more that a corpus message shares with an earlier delivery of it is a dedup hit
(as a forwarded attachment would be).  Messages go out with CRLF line ends, as an MTA sends
them.

Usage::

    python -m ops.bench.lmtp_bench [--corpus /work/shared/corpus] [--messages 1000]
        [--conns 10] [--users 10] [--rcpts 1] [--reps 3] [--json results.json]
        [--targets objmail,dovecot | objmail,objmail-plain | objmail,objmail-pure]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from ops.bench.common import (
    DEFAULT_CORPUS,
    OBJMAIL_TARGETS,
    PURE_TARGETS,
    LmtpClient,
    ObjmailCluster,
    corpus_messages,
    deliver_over,
    lmtp_payload,
    load_text,
    markdown_table,
    median,
    percentile,
    tree_cpu_seconds,
    wait_for_quiet,
)
from ops.bench.dovecot import PrivateDovecot

TARGETS = ("objmail", "objmail-plain", "objmail-pure", "dovecot")


@dataclass
class Run:
    """One timed batch of deliveries to one server."""

    target: str
    messages: int
    seconds: float
    p50_ms: float
    p99_ms: float
    cpu_ms_per_message: float
    refused: int

    @property
    def per_second(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0


def stamped(raw: bytes, tag: str) -> bytes:
    """``raw`` behind a ``Received:`` line naming this delivery."""
    line = (f"Received: from bench.local by mx.bench.local with LMTP id {tag};\r\n"
            "\tSat, 1 Jan 2022 00:00:00 +0000\r\n").encode()
    return line + raw


async def deliver_batch(port: int, payloads: Sequence[tuple[str | list[str], bytes]], conns: int,
                        sender: str = "bench@example.org") -> tuple[float, list[float], int]:
    """Deliver ``(recipient, payload)`` pairs over ``conns`` connections sharing one queue;
    the wall time, each delivery's latency, and how many were not accepted."""
    clients = await asyncio.gather(*(LmtpClient.open("127.0.0.1", port) for _ in range(conns)))
    return await deliver_over(clients, len(payloads),
                              lambda n: (sender, payloads[n][0], payloads[n][1]))


def batch(corpus: Sequence[bytes], users: Sequence[str], count: int, tag: str,
          offset: int, rcpts: int = 1) -> list[tuple[list[str], bytes]]:
    """``count`` deliveries cycling through the corpus and the users, ``rcpts`` users
    each (one LMTP transaction)."""
    out = []
    for i in range(count):
        raw = corpus[(offset + i) % len(corpus)]
        to = [f"{users[(i * rcpts + r) % len(users)]}@example.org" for r in range(rcpts)]
        out.append((to, lmtp_payload(stamped(raw, f"{tag}.{i}"))))
    return out


def measure(target: str, port: int, pids: Sequence[int],
            deliveries: list[tuple[list[str], bytes]], conns: int) -> Run:
    """One timed batch; ``messages`` counts recipients' copies (what a user receives)."""
    cpu0 = tree_cpu_seconds(pids)
    elapsed, latencies, refused = asyncio.run(deliver_batch(port, deliveries, conns))
    cpu = tree_cpu_seconds(pids) - cpu0
    copies = sum(len(to) for to, _payload in deliveries)
    return Run(target, copies, elapsed, percentile(latencies, 50) * 1000,
               percentile(latencies, 99) * 1000, cpu * 1000 / copies, refused)


def summary(runs: Sequence[Run]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for target in TARGETS:
        mine = [r for r in runs if r.target == target]
        if mine:
            out[target] = {
                "per_second": median(r.per_second for r in mine),
                "p50_ms": median(r.p50_ms for r in mine),
                "p99_ms": median(r.p99_ms for r in mine),
                "cpu_ms_per_message": median(r.cpu_ms_per_message for r in mine),
                "refused": sum(r.refused for r in mine),
            }
    return out


def report(runs: Sequence[Run], args: argparse.Namespace, load_before: str) -> str:
    s = summary(runs)
    rows = []
    for target in TARGETS:
        if target not in s:
            continue
        row = s[target]
        reps = " / ".join(f"{r.per_second:,.0f}" for r in runs if r.target == target)
        rows.append([target, reps, f"**{row['per_second']:,.0f}**", f"{row['p50_ms']:,.1f}",
                     f"{row['p99_ms']:,.1f}", f"{row['cpu_ms_per_message']:,.2f}",
                     int(row["refused"])])
    table = markdown_table(["server", "msgs/s per rep", "median msgs/s", "p50 ms", "p99 ms",
                            "server CPU ms/msg", "refused"], rows)
    lines = [table, ""]
    for mine, reference in (("objmail", "dovecot"), ("objmail-plain", "dovecot"),
                            ("objmail", "objmail-plain"), ("objmail", "objmail-pure")):
        if mine in s and reference in s and s[reference]["per_second"]:
            ratio = s[mine]["per_second"] / s[reference]["per_second"]
            cpu = (s[mine]["cpu_ms_per_message"] / s[reference]["cpu_ms_per_message"]
                   if s[reference]["cpu_ms_per_message"] else 0.0)
            lines.append(f"{mine} / {reference}: {ratio:.2f}x messages/s, {cpu:.2f}x server "
                         "CPU per message")
    lines.append(f"{args.messages} messages per rep ({args.rcpts} recipient(s) per "
                 f"transaction), {args.conns} connections, {args.users} users, {args.reps} "
                 f"reps; load average before: {load_before}, after: "
                 f"{load_text()}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    ap.add_argument("--messages", type=int, default=1000, help="deliveries per rep and server")
    ap.add_argument("--conns", type=int, default=10, help="parallel LMTP connections")
    ap.add_argument("--users", type=int, default=10)
    ap.add_argument("--rcpts", type=int, default=1,
                    help="recipients per LMTP transaction (rates count their copies)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--targets", default="objmail,dovecot",
                    help="two or three of " + ", ".join(TARGETS))
    ap.add_argument("--max-load", type=float, default=1.0,
                    help="wait for the 1-minute load average to drop below this")
    ap.add_argument("--wait", type=float, default=1200, help="longest wait for that, s")
    ap.add_argument("--json", type=Path, help="also write every run here")
    args = ap.parse_args(argv)
    targets = args.targets.split(",")
    if unknown := set(targets) - set(TARGETS):
        raise SystemExit(f"unknown target(s) {', '.join(sorted(unknown))}")
    corpus = corpus_messages(args.corpus, max_size=64 * 1024 * 1024)
    if not corpus:
        raise SystemExit(f"no messages under {args.corpus}")
    users = [f"bench{n}" for n in range(args.users)]
    runs: list[Run] = []
    with contextlib.ExitStack() as stack:
        servers: dict[str, tuple[int, list[int]]] = {}
        for target in targets:
            if target == "dovecot":
                dovecot = stack.enter_context(PrivateDovecot(users, password="secret"))
                servers[target] = (dovecot.lmtp_port, [dovecot.pid or 0])
            else:
                objmail = stack.enter_context(ObjmailCluster(security=OBJMAIL_TARGETS[target],
                                                            pure=target in PURE_TARGETS))
                objmail.add_users(users, "secret", fast_hash=True)
                servers[target] = (objmail.lmtp_port, objmail.server_pids())
        # Warm-up: connections, caches, first-time mailbox creation (not measured).
        for target in targets:
            port, _ = servers[target]
            asyncio.run(deliver_batch(port, batch(corpus, users, 2 * len(users), "warm", 0),
                                      args.conns))
        load_before = f"{wait_for_quiet(args.max_load, args.wait):.2f} (1 min); {load_text()}"
        print(f"load average before measuring: {load_text()}", file=sys.stderr)
        for rep in range(args.reps):
            order = targets if rep % 2 == 0 else list(reversed(targets))
            for target in order:
                port, pids = servers[target]
                deliveries = batch(corpus, users, args.messages // args.rcpts,
                                   f"{target}.{rep}", rep * args.messages, args.rcpts)
                run = measure(target, port, pids, deliveries, args.conns)
                runs.append(run)
                print(f"rep {rep + 1} {target}: {run.per_second:,.1f} msgs/s, p99 "
                      f"{run.p99_ms:,.1f} ms, {run.cpu_ms_per_message:.2f} CPU ms/msg, "
                      f"{run.refused} refused (load {load_text()})", file=sys.stderr)
    print(report(runs, args, load_before))
    if args.json:
        args.json.write_text(json.dumps({"runs": [asdict(r) for r in runs],
                                         "summary": summary(runs)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

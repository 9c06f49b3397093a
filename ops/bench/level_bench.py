"""Benchmark leveling: a new, empty object server levelled to within the tolerance of the
mean, the bytes/s moved against the configured rate and the disk's bandwidth, and IMAP
fetch latency before and during the leveling.

One run starts a whole cluster (:class:`ops.bench.common.ObjmailCluster`: the stages of
``objmail dev up``, the release's defaults, three object servers, ``replicas = 2``) with
directord's own leveling off (``level_interval = 0``: the run's ``objmail level`` is the
only mover), creates ``--clients`` users with ``--seed`` corpus messages each (LMTP), and
stores ``--data`` bytes of random (incompressible) blobs of 16 KiB-512 KiB through
:class:`director.client.BlobClient`.  Then, ``--reps`` times:

1. start one more objstored (empty) and register it (``objmail node add``);
2. **before**: the IMAP mix (:mod:`ops.bench.imap_bench`, fetches only by default) for
   ``--window`` seconds;
3. **during**: ``objmail level --wait --rate R --json`` in its own process, as an
   operator runs it, and the same IMAP mix for the same time, started with it;
4. once it ends: the bytes it moved over its wall time, and the new node's deviation
   from its target once fresh load reports count every move.

Each rep adds a node, so later reps move less (1/4, then 1/5... of the bytes).  The disk's
bandwidth (a 256 MiB write + fdatasync in the run directory, and a read of it back
uncached where the kernel lets us drop the file's pages) is measured once.  The table
gives each rep and the medians; the p99 ratio during/before is the figure to watch
(goal: at most 2).

Usage::

    python -m ops.bench.level_bench [--data 600M] [--rate 8M] [--clients 8] [--window 30] [--reps 3]
        [--json results.json]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import random
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from director.client import BlobClient
from director.leveler import Leveler
from director.redisstate import RedisState
from ops.bench import imap_bench
from ops.bench.common import (
    DEFAULT_CORPUS,
    ObjmailCluster,
    load_text,
    median,
    objmail_config,
)
from ops.bench.lmtp_bench import deliver_batch
from ops.launcher import free_port, private_dir
from runtime.config import parse_size

MIB = 1 << 20
FETCHES = "fetch_message=1,fetch_headers=1"


def mib(n: float) -> str:
    return f"{n / MIB:,.1f} MiB"


@dataclass
class Rep:
    node: str
    nodes_before: int
    to_move: int
    moved: int
    level_seconds: float
    pass_seconds: float
    passes: int
    window: float
    deviation_after: float
    spread_after: float
    p99_before: dict[str, float]
    p99_during: dict[str, float]
    p50_before: dict[str, float]
    p50_during: dict[str, float]
    fetches_before: int
    fetches_during: int
    load: str
    exit_code: int = 0

    @property
    def rate(self) -> float:
        return self.moved / self.level_seconds if self.level_seconds else 0.0

    def ratio(self, command: str) -> float:
        before = self.p99_before.get(command, 0.0)
        return self.p99_during.get(command, 0.0) / before if before else 0.0


def disk_bandwidth(directory: Path, size: int = 256 * MIB) -> tuple[float, float]:
    """Write (+ fdatasync) then read back ``size`` bytes: bytes/s each way.  The read
    drops the file's pages first (posix_fadvise DONTNEED), so it comes from the disk."""
    path = directory / "bandwidth.tmp"
    chunk = os.urandom(MIB)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        started = time.monotonic()
        for _ in range(size // MIB):
            os.write(fd, chunk)
        os.fdatasync(fd)
        write = size / (time.monotonic() - started)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.lseek(fd, 0, os.SEEK_SET)
        started = time.monotonic()
        while os.read(fd, MIB):
            pass
        read = size / (time.monotonic() - started)
    finally:
        os.close(fd)
        path.unlink()
    return write, read


async def fill(oc: ObjmailCluster, total: int, rng: random.Random) -> int:
    """Store ``total`` bytes of random blobs; the number stored."""
    client = await BlobClient.open(oc.conf.cluster, oc.conf.director,
                                   auth=oc.cluster.credentials.redis)
    try:
        done = count = 0
        while done < total:
            batch: list[bytes] = []
            while done < total and len(batch) < 32:
                data = rng.randbytes(rng.randint(16 << 10, 512 << 10))
                batch.append(data)
                done += len(data)
            await client.put_many(batch)
            count += len(batch)
        return count
    finally:
        await client.aclose()


def add_node(oc: ObjmailCluster, name: str, zone: str) -> None:
    """Start one more objstored (an empty data dir) and register it in a zone of its own,
    as ``objmail node add`` does; return once it reports.  (In a zone the blobs' other
    copies share, moves onto it are limited by the zone rule.)"""
    cluster = oc.cluster
    data_dir = private_dir(cluster.run_dir / "objstore" / name)
    port = free_port()
    spec = cluster.objstored_spec(name, "127.0.0.1", port, data_dir, zone=zone)
    oc._extra.append(spec)  # stopped with the cluster
    cluster.launcher.start(spec)

    async def register() -> None:
        state = await RedisState.open(oc.conf.cluster, oc.conf.director,
                                      auth=cluster.credentials.redis)
        try:
            await state.registry.add(name, f"127.0.0.1:{port}", zone=zone,
                                     tier=oc.conf.objstore.tier)
            while (await state.registry.get(name)).report is None:
                await asyncio.sleep(0.2)
        finally:
            await state.aclose()

    asyncio.run(register())


async def level_figures(oc: ObjmailCluster, node: str, since: float) -> tuple[int, float,
                                                                             float]:
    """Bytes to move, the node's deviation from its target and the largest deviation,
    from load reports written after ``since``."""
    client = await BlobClient.open(oc.conf.cluster, oc.conf.director,
                                   auth=oc.cluster.credentials.redis)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            snap = await client.snapshot(force=True)
            if all(n.report is not None and n.report.reported_at > since
                   for n in snap.nodes if n.readable):
                break
            await asyncio.sleep(0.5)
        plan = await Leveler(client).plan()
        return plan.to_move, plan.deviations.get(node, 0.0), plan.spread
    finally:
        await client.aclose()


def imap_run(args: argparse.Namespace, oc: ObjmailCluster, duration: float) -> dict[str, Any]:
    run_args = build_imap_args(args, oc.imap_port, duration)
    return asyncio.run(imap_bench.run(run_args))


def build_imap_args(args: argparse.Namespace, port: int, duration: float) -> argparse.Namespace:
    ns = imap_bench.build_arg_parser().parse_args([])
    ns.port, ns.host, ns.tls = port, "127.0.0.1", False
    ns.clients, ns.duration, ns.mix, ns.seed = args.clients, duration, args.mix, args.seed
    ns.user_format, ns.password, ns.corpus = "lvl{n}", "secret", args.corpus
    return ns


def fetch_figures(report: dict[str, Any], key: str) -> dict[str, float]:
    return {name: float(row[key]) for name, row in report["per_command"].items()
            if name.startswith("fetch")}


def one_rep(args: argparse.Namespace, oc: ObjmailCluster, k: int, nodes_before: int) -> Rep:
    name = f"objstored-new{k}"
    add_node(oc, name, f"new{k}")
    to_move, _dev, _spread = asyncio.run(level_figures(oc, name, time.time()))
    window = args.window
    print(f"rep {k}: {name} added; {mib(to_move)} to move; windows of {window:.0f} s",
          file=sys.stderr)
    before = imap_run(args, oc, window)
    command = [sys.executable, "-c", "import sys; from ops.cli import main; sys.exit(main())",
               "--config", str(oc.cluster.config_path), "level", "--wait", "--json",
               "--rate", str(args.rate)]
    started = time.monotonic()
    mover = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env={**os.environ, "PYTHONPATH": os.getcwd()})
    during = imap_run(args, oc, window)
    out, err = mover.communicate(timeout=3600)
    seconds = time.monotonic() - started
    finished = time.time()
    if mover.returncode != 0:
        # 75: not within the tolerance when it gave up (reported below).
        print(f"rep {k}: objmail level exited {mover.returncode}: {err[-2000:].decode()}",
              file=sys.stderr)
    summary = json.loads(out) if out.strip() else {"bytes": 0, "passes": 0, "moved": 0,
                                                    "planned": 0}
    moved = int(summary["bytes"])
    print(f"rep {k}: objmail level: {summary['passes']} pass(es), {summary['moved']} of "
          f"{summary['planned']} planned moves, {mib(moved)} in {seconds:.1f} s wall, "
          f"{summary.get('seconds', 0):.1f} s in passes; IMAP window {window:.0f} s "
          f"{'inside' if seconds >= window else 'LONGER THAN'} the leveling",
          file=sys.stderr)
    _left, deviation, spread = asyncio.run(level_figures(oc, name, finished))
    return Rep(name, nodes_before, to_move, moved, seconds, float(summary.get("seconds", 0)),
               int(summary["passes"]), window, deviation, spread,
               fetch_figures(before, "p99_ms"), fetch_figures(during, "p99_ms"),
               fetch_figures(before, "p50_ms"), fetch_figures(during, "p50_ms"),
               sum(int(r["count"]) for n, r in before["per_command"].items()
                   if n.startswith("fetch")),
               sum(int(r["count"]) for n, r in during["per_command"].items()
                   if n.startswith("fetch")), load_text(), mover.returncode)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="600M", help="bytes of blobs stored before (600M)")
    ap.add_argument("--rate", default="8M", help="objmail level --rate (8M bytes/s)")
    ap.add_argument("--clients", type=int, default=8, help="IMAP clients (8)")
    ap.add_argument("--seed", type=int, default=40, help="messages per INBOX (40)")
    ap.add_argument("--mix", default=FETCHES, help=f"IMAP mix ({FETCHES})")
    ap.add_argument("--corpus", default=str(DEFAULT_CORPUS))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--window", type=float, default=30.0,
                    help="IMAP load before, and during the leveling (which should last "
                         "longer: see the report), s (30)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    args.rate = parse_size(args.rate, "--rate")
    total = parse_size(args.data, "--data")
    rng = random.Random(1)
    config = objmail_config()
    # directord levels nothing by itself: the run's objmail level is the only mover.
    config = dataclasses.replace(config, director=dataclasses.replace(
        config.director, level_interval=0.0))
    users = [f"lvl{n}" for n in range(args.clients)]
    reps: list[Rep] = []
    with ObjmailCluster(config) as oc:
        oc.add_users(users, "secret")
        corpus = imap_bench.load_corpus(Path(args.corpus), 200)
        seed = imap_bench.seed_deliveries(argparse.Namespace(seed=args.seed), corpus, users)
        elapsed, _lat, refused = asyncio.run(deliver_batch(oc.lmtp_port, seed, 8))
        if refused:
            raise SystemExit(f"{refused} seed messages refused")
        started = time.monotonic()
        count = asyncio.run(fill(oc, total, rng))
        print(f"{len(seed)} messages delivered in {elapsed:.1f} s; {count} blobs "
              f"({mib(total)}) stored in {time.monotonic() - started:.1f} s", file=sys.stderr)
        disk_write, disk_read = disk_bandwidth(oc.cluster.run_dir)
        for k in range(1, args.reps + 1):
            reps.append(one_rep(args, oc, k, 2 + k))
    print(table(reps, args, total, disk_write, disk_read))
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"reps": [{**asdict(r), "rate": r.rate} for r in reps], "disk_write_bps": disk_write,
             "disk_read_bps": disk_read, "rate": args.rate, "data": total}, indent=1))
    return 0


def table(reps: list[Rep], args: argparse.Namespace, total: int, disk_write: float,
          disk_read: float) -> str:
    lines = ["| rep | nodes | to move | moved | time | rate (of --rate) | new node after "
             "| fetch_message p99 before / during | fetch_headers p99 before / during |",
             "|---|---|---|---|---|---|---|---|---|"]

    def p99(r: Rep, cmd: str) -> str:
        return (f"{r.p99_before.get(cmd, 0):.1f} / {r.p99_during.get(cmd, 0):.1f} ms "
                f"(x{r.ratio(cmd):.2f})")

    for i, r in enumerate(reps, 1):
        failed = f" (objmail level exit {r.exit_code})" if r.exit_code else ""
        lines.append(f"| {i} | {r.nodes_before}+1 | {mib(r.to_move)} | {mib(r.moved)}{failed} | "
                     f"{r.level_seconds:.1f} s | {mib(r.rate)}/s "
                     f"({100 * r.rate / args.rate:.0f}%) | {100 * r.deviation_after:+.1f}% | "
                     f"{p99(r, 'fetch_message')} | {p99(r, 'fetch_headers')} |")
    lines.append(f"| median | | | | | {mib(median(r.rate for r in reps))}/s | | "
                 f"x{median(r.ratio('fetch_message') for r in reps):.2f} | "
                 f"x{median(r.ratio('fetch_headers') for r in reps):.2f} |")
    lines.append("")
    lines.append(f"{mib(total)} of random blobs (replicas 2) plus {args.clients} users x "
                 f"{args.seed} messages; --rate {mib(args.rate)}/s; IMAP {args.clients} "
                 f"clients, mix {args.mix}; disk write+fdatasync {mib(disk_write)}/s, read "
                 f"{mib(disk_read)}/s; load average at the end of each rep: "
                 + "; ".join(r.load for r in reps))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

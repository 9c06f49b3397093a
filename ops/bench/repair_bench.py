"""Benchmark repair: how long after kill -9 of one of four object servers every blob has
its copies again, and at what rate.

One run starts, under a temporary directory and through the project's launcher
(:class:`ops.devcluster.DevCluster`, the stages of ``objmail dev up``), a 6-node Redis
Cluster and four objstored (zones a, b, c, a) with the release's defaults (reports every
5 s living 30 s, 65,536 index buckets, ``replicas = 2``), stores ``--blobs`` corpus
messages (or ``--size`` random bytes each) through :class:`director.client.BlobClient`,
then two scenarios, each on a node of its own:

* **dead**: kill -9 a node; the time until the directors see it down (its report late);
  ``objmail node dead`` (:meth:`director.registry.Registry.dead`) at once; repair passes
  (:class:`director.repairer.Repairer`, as ``objmail repair`` runs them) until every blob
  it held has two copies on live nodes: copies at full speed.
* **grace**: the same with ``repair_down_grace = 0`` standing in for the end of the
  grace (600 s by default, which the run does not wait out) and no ``node dead``: copies
  paced at ``repair_rate`` (64 MiB/s by default).

For scale it also measures the disk (a 256 MiB write + fdatasync in the run directory) and
loopback TCP (256 MiB through one connection).

Usage::

    python -m ops.bench.repair_bench [--blobs 3000] [--size BYTES] [--json results.json]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import random
import signal
import socket
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from director.client import BlobClient
from director.nodes import NodeState
from director.repairer import Repairer
from ops.bench.common import DEFAULT_CORPUS, corpus_messages, free_block
from ops.config import ClusterConfig, Config, DirectorConfig, ObjstoreConfig
from ops.devcluster import DevCluster, DevOptions

MIB = 1 << 20


def mib(n: float) -> str:
    return f"{n / MIB:,.1f} MiB"


@dataclass
class Scenario:
    name: str
    victim: str
    blobs_on_victim: int
    bytes_on_victim: int
    seconds_to_down: float
    sweep_seconds: float
    swept_buckets: int
    repair_seconds: float
    passes: int
    copies: int
    bytes_copied: int

    @property
    def total(self) -> float:
        return self.seconds_to_down + self.repair_seconds

    @property
    def rate(self) -> float:
        return self.bytes_copied / self.repair_seconds if self.repair_seconds else 0.0


def bench_config(rng: random.Random) -> Config:
    redis = free_block(6, rng, bus_offset=10000)
    objstore = free_block(4, rng)
    director = free_block(2, rng)
    return Config(
        cluster=ClusterConfig(redis_nodes=tuple(f"127.0.0.1:{redis + i}" for i in range(6))),
        objstore=ObjstoreConfig(listen=f"127.0.0.1:{objstore}",
                                metrics_listen=f"127.0.0.1:{free_block(4, rng)}"),
        director=DirectorConfig(listen=f"127.0.0.1:{director}",
                                metrics_listen=f"127.0.0.1:{director + 1}", cache_bytes=0))


async def store(config: Config, datas: list[bytes]) -> list[str]:
    client = await BlobClient.open(config.cluster, config.director)
    try:
        ids: list[str] = []
        for i in range(0, len(datas), 200):
            ids += await client.put_many(datas[i:i + 200])
        return ids
    finally:
        await client.aclose()


async def scenario(name: str, cluster: DevCluster, config: Config, victim: str,
                   ids: list[str], sizes: dict[str, int], *, dead: bool) -> Scenario:
    dconf = config.director if dead else dataclasses.replace(config.director,
                                                             repair_down_grace=0.0)
    client = await BlobClient.open(config.cluster, dconf)
    try:
        snap = await client.snapshot(force=True)
        number = snap.get(victim).number  # type: ignore[union-attr]
        found = await client.index.lookup(ids)
        mine = [b for b in ids if number in found[b]]
        await client.repair.done(await client.repair.claim(100_000))  # start empty
        cluster.launcher.signal(cluster.spec(victim), signal.SIGKILL)
        killed = time.monotonic()
        while getattr((await client.snapshot(force=True)).get(victim), "state",
                      None) is not NodeState.DOWN:
            await asyncio.sleep(0.1)
        down = time.monotonic() - killed
        if dead:
            await client.registry.dead(victim)
        started = time.monotonic()
        repairer = Repairer(client)
        passes = copies = copied = swept = 0
        while True:
            stats = await repairer.run_once()
            passes += 1
            copies += stats.copies_made
            copied += stats.bytes
            if stats.swept_buckets and not swept:
                swept = stats.swept_buckets
            if stats.backlog == 0 and stats.full_sweep_left == 0 and \
                    (stats.sweep_wrapped or not stats.claimed):
                break
        repair_seconds = time.monotonic() - started
        live = {n.number for n in (await client.snapshot(force=True)).nodes if n.readable}
        found = await client.index.lookup(mine)
        short = [b for b in mine if len(set(found[b]) & live) < 2]
        if short:
            raise RuntimeError(f"{name}: {len(short)} blobs still short after repair")
        # What the whole-index sweep costs on its own: one scan of every bucket.
        t = time.monotonic()
        async for _page in client.index.iterate():
            pass
        sweep_seconds = time.monotonic() - t
        return Scenario(name, victim, len(mine), sum(sizes[b] for b in mine), down,
                        sweep_seconds, swept, repair_seconds, passes, copies, copied)
    finally:
        await client.aclose()


def disk_bandwidth(directory: Path, size: int = 256 * MIB) -> float:
    path = directory / "bandwidth.tmp"
    chunk = os.urandom(MIB)
    started = time.monotonic()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for _ in range(size // MIB):
            os.write(fd, chunk)
        os.fdatasync(fd)
    finally:
        os.close(fd)
        path.unlink()
    return size / (time.monotonic() - started)


def loopback_bandwidth(size: int = 256 * MIB) -> float:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def sink() -> None:
        conn, _ = server.accept()
        with conn:
            while conn.recv(1 << 20):
                pass

    thread = threading.Thread(target=sink)
    thread.start()
    chunk = os.urandom(MIB)
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port)) as out:
        for _ in range(size // MIB):
            out.sendall(chunk)
    thread.join()
    server.close()
    return size / (time.monotonic() - started)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--blobs", type=int, default=3000)
    ap.add_argument("--size", type=int, default=0,
                    help="random (incompressible) blobs of this many bytes instead of "
                         "corpus messages")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    rng = random.Random(1)
    if args.size:
        datas = [rng.randbytes(args.size) for _ in range(args.blobs)]
    else:
        messages = corpus_messages(DEFAULT_CORPUS, max_size=256 * 1024)
        datas = [f"X-Repair-Bench: {i} {rng.random()}\r\n".encode()
                 + messages[i % len(messages)] for i in range(args.blobs)]
    config = bench_config(rng)
    with tempfile.TemporaryDirectory(prefix="repair-bench-") as tmp:
        work = Path(tmp)
        cluster = DevCluster(config, work / "var", DevOptions(
            objstore_count=4, only=frozenset({"redis", "objstore"})))
        try:
            cluster.up(progress=lambda msg: print(msg, file=sys.stderr))
            started = time.monotonic()
            ids = asyncio.run(store(config, datas))
            print(f"stored {len(ids)} blobs, {mib(sum(map(len, datas)))}, in "
                  f"{time.monotonic() - started:.1f} s", file=sys.stderr)
            sizes = {b: len(d) for b, d in zip(ids, datas, strict=True)}
            names = [o.name for o in cluster.dev_objstores()]
            results = [asyncio.run(scenario("dead", cluster, config, names[1], ids, sizes,
                                            dead=True)),
                       asyncio.run(scenario("grace", cluster, config, names[2], ids, sizes,
                                            dead=False))]
            disk = disk_bandwidth(work)
            net = loopback_bandwidth()
        finally:
            cluster.down()
    print("| scenario | blobs on the node | their bytes | down after | repair | passes | "
          "copies | copied | rate |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r.name} | {r.blobs_on_victim:,} | {mib(r.bytes_on_victim)} | "
              f"{r.seconds_to_down:.1f} s | {r.repair_seconds:.1f} s | {r.passes} | "
              f"{r.copies:,} | {mib(r.bytes_copied)} | {mib(r.rate)}/s, "
              f"{r.copies / r.repair_seconds:,.0f} blobs/s |")
    print(f"\nwhole-index scan ({results[0].swept_buckets:,} buckets): "
          f"{results[0].sweep_seconds:.1f} s; disk write + fdatasync {mib(disk)}/s; "
          f"loopback TCP {mib(net)}/s")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"scenarios": [asdict(r) for r in results], "disk_bps": disk,
             "loopback_bps": net}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

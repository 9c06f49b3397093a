"""Benchmark what the read temperature costs a fetch: blob gets through the library with
the temperature on (every read sampled) against off, in the same run.

One run starts, under a temporary directory and through the project's launcher, a
6-node Redis Cluster and three objstored, stores ``--blobs`` blobs of 4 KiB, then
measures :meth:`director.client.BlobClient.get` with ``--conns`` tasks in flight (50)
over random stored blobs, two ways each:

* **cached**: served by the frontend memory cache (the cheapest read, so the one where
  the sampler's dict update weighs most);
* **uncached**: the cache off, every get an index lookup and a verified read.

``on`` is ``director.temperature_sample = 1`` (every read counted, batches flushed every
second by a task of the same event loop, so the flushes' Redis work is in the figure),
``off`` is ``temperature_sample = 0``.  The modes alternate within each repetition and
the table shows medians of ``--reps`` runs and the on/off ratio.

Usage::

    python -m ops.bench.temperature_bench [--seconds 3] [--reps 5] [--blobs 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from director.client import BlobClient
from ops.bench.common import free_block, markdown_table, median_run, percentile
from ops.config import ClusterConfig, Config, DirectorConfig, ObjstoreConfig
from ops.devcluster import DevCluster, DevOptions


@dataclass
class Result:
    mode: str
    sample: float
    ops_per_sec: float
    p99_us: float
    flushes: int = 0


def bench_config(rng: random.Random) -> Config:
    redis = free_block(6, rng, bus_offset=10000)
    objstore = free_block(3, rng)
    director = free_block(2, rng)
    return Config(
        cluster=ClusterConfig(redis_nodes=tuple(f"127.0.0.1:{redis + i}" for i in range(6))),
        objstore=ObjstoreConfig(listen=f"127.0.0.1:{objstore}",
                                metrics_listen=f"127.0.0.1:{free_block(3, rng)}"),
        director=DirectorConfig(listen=f"127.0.0.1:{director}",
                                metrics_listen=f"127.0.0.1:{director + 1}",
                                index_buckets=4096))


async def run(cluster: DevCluster, ids: list[str], mode: str, sample: float, conns: int,
              seconds: float) -> Result:
    dconf = dataclasses.replace(cluster.config.director, temperature_sample=sample,
                                cache_bytes=64 << 20 if mode == "cached" else 0)
    client = await BlobClient.open(cluster.config.cluster, dconf,
                                   auth=cluster.credentials.redis)
    try:
        if mode == "cached":
            await client.get_many(ids)
        rng = random.Random(1)
        latencies: list[float] = []
        done = 0
        end = time.monotonic() + seconds

        async def worker() -> None:
            nonlocal done
            while time.monotonic() < end:
                started = time.perf_counter()
                await client.get(rng.choice(ids))
                latencies.append(time.perf_counter() - started)
                done += 1

        began = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(conns)))
        elapsed = time.monotonic() - began
        return Result(mode, sample, done / elapsed, percentile(latencies, 99) * 1e6,
                      client.temperature.stats.flushes)
    finally:
        await client.aclose()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--conns", type=int, default=50)
    ap.add_argument("--blobs", type=int, default=2000)
    args = ap.parse_args(argv)
    config = bench_config(random.Random())
    runs: dict[tuple[str, float], list[Result]] = {}
    with tempfile.TemporaryDirectory(prefix="temperature-bench-") as tmp:
        cluster = DevCluster(config, Path(tmp) / "var", DevOptions(
            objstore_count=3, only=frozenset({"redis", "objstore"})))
        try:
            cluster.up(progress=lambda msg: print(msg, file=sys.stderr))

            async def store() -> list[str]:
                client = await BlobClient.open(cluster.config.cluster,
                                               cluster.config.director,
                                               auth=cluster.credentials.redis)
                try:
                    return await client.put_many([os.urandom(4096)
                                                  for _ in range(args.blobs)])
                finally:
                    await client.aclose()

            ids = asyncio.run(store())
            for rep in range(args.reps):
                for mode in ("cached", "uncached"):
                    # Alternate which goes first, so drift in the machine's load is shared.
                    for sample in ((0.0, 1.0) if rep % 2 == 0 else (1.0, 0.0)):
                        r = asyncio.run(run(cluster, ids, mode, sample, args.conns,
                                            args.seconds))
                        runs.setdefault((mode, sample), []).append(r)
                        print(f"{mode} sample={sample:g}: {r.ops_per_sec:,.0f} gets/s, p99 "
                              f"{r.p99_us:.0f} us, {r.flushes} flushes",
                              file=sys.stderr)
        finally:
            cluster.down()
    rows = []
    for mode in ("cached", "uncached"):
        off = median_run(runs[(mode, 0.0)])
        on = median_run(runs[(mode, 1.0)])
        rows.append([mode, f"{off.ops_per_sec:,.0f} (p99 {off.p99_us:,.0f} us)",
                     f"{on.ops_per_sec:,.0f} (p99 {on.p99_us:,.0f} us)",
                     f"{on.ops_per_sec / off.ops_per_sec:.2f}x"])
    print(markdown_table(["get", "temperature off", "temperature on (every read)",
                          "on / off"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

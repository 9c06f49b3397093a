"""Benchmark the director: put and get through the blob client library and through directord,
against direct objstored, and the dedup-hit put rate.

One run starts, under a temporary directory and through the project's launcher
(:class:`ops.devcluster.DevCluster`, the same stages as ``objmail dev up``), a 6-node Redis
Cluster, three objstored (zones a, b, c, one worker each) registered in the registry, and a
directord; drives them; stops them; and prints a Markdown table (ops/s and p99 latency,
medians of ``--reps`` runs) plus the raw results as JSON.

What is measured, each with ``--conns`` requests in flight (50):

* **direct objstored**: ``mcload`` (ops/bench/mcload.c, as in objstore_bench) against one
  object server: one copy, no index.  The baseline of what a memcached client gets.
* **directord**: the same ``mcload`` against directord: a ``set`` is an index lookup,
  ``replicas`` (2) durable writes in parallel and an index update acknowledged by a Redis
  replica; a ``get`` is an index lookup and one read.
* **library**: :class:`director.client.BlobClient` in this process (asyncio, one loop),
  ``--conns`` tasks: ``put`` of new, random (incompressible: compression is tried and
  skipped) blobs, which adds hashing and encoding to directord's work; ``get`` of stored
  blobs with the cache off, which adds decoding and hash verification.
* **dedup put**: the library putting blobs already stored: a hash and an index lookup,
  no upload.

Usage::

    python -m ops.bench.director_bench [--seconds 4] [--reps 3] [--sizes 4096,262144]
        [--conns 50] [--json results.json]

The machine has two cores shared by every process above and the load generator.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import struct
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from director.client import BlobClient
from ops.bench.common import free_block, human, markdown_table, median_run
from ops.bench.objstore_bench import build_mcload, keys_for, run_mcload, warm
from ops.config import ClusterConfig, Config, DirectorConfig, ObjstoreConfig, parse_hostport
from ops.devcluster import DevCluster, DevOptions
from runtime.secrets import RedisAuth

TARGETS = ("objstored", "directord", "library")


@dataclass
class Result:
    target: str
    op: str
    size: int
    ops_per_sec: float
    p99_us: float
    errors: int = 0


def bench_config(rng: random.Random) -> Config:
    redis = free_block(6, rng, bus_offset=10000)
    objstore = free_block(3, rng)
    director = free_block(2, rng)
    return Config(
        cluster=ClusterConfig(redis_nodes=tuple(f"127.0.0.1:{redis + i}" for i in range(6))),
        objstore=ObjstoreConfig(listen=f"127.0.0.1:{objstore}", max_connections=4096,
                                metrics_listen=f"127.0.0.1:{free_block(3, rng)}"),
        # No frontend cache: every get is measured reading an object server.
        director=DirectorConfig(listen=f"127.0.0.1:{director}",
                                metrics_listen=f"127.0.0.1:{director + 1}", cache_bytes=0,
                                index_buckets=4096))


def blob(size: int, n: int, base: bytes) -> bytes:
    """Blob number ``n`` of a size: unique content at the cost of one copy."""
    return struct.pack(">Q", n) + base[8:size]


async def library_run(config: Config, auth: RedisAuth, op: str, size: int, conns: int,
                      seconds: float, base: bytes, counter: list[int],
                      stored: list[str]) -> Result:
    """``conns`` tasks doing ``op`` for ``seconds`` (after a short unmeasured start)."""
    client = await BlobClient.open(config.cluster, config.director, auth=auth)
    latencies: list[float] = []
    errors = 0
    settle = max(0.5, seconds / 10)
    start = time.monotonic() + settle
    stop = start + seconds
    known = max(1, min(len(stored), 1000))
    dedup_span = max(1, min(counter[0], 1000))

    async def worker(w: int) -> None:
        nonlocal errors
        i = w
        while True:
            t0 = time.monotonic()
            if t0 >= stop:
                return
            try:
                if op == "put":
                    counter[0] += 1
                    bid = await client.put(blob(size, counter[0], base))
                    if len(stored) < 1000:
                        stored.append(bid)
                elif op == "get":
                    await client.get(stored[i % known])
                else:  # dedup: content stored already (blobs 1..n of this size)
                    await client.put(blob(size, 1 + i % dedup_span, base))
            except Exception as exc:  # counted and reported, the run goes on
                errors += 1
                print(f"library {op} {size}: {exc}", file=sys.stderr)
            t1 = time.monotonic()
            if t0 >= start:
                latencies.append(t1 - t0)
            i += conns

    try:
        await asyncio.gather(*(worker(w) for w in range(conns)))
    finally:
        await client.aclose()
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99)] * 1e6 if latencies else 0.0
    return Result("library", op, size, len(latencies) / seconds, p99, errors)


def median(results: list[Result]) -> Result:
    return median_run(results, errors=sum(r.errors for r in results))


def table(results: dict[tuple[str, str, int], Result], sizes: list[int]) -> str:
    def cell(r: Result | None) -> str:
        if r is None:
            return "-"
        errs = f", {r.errors} errors" if r.errors else ""
        return f"{r.ops_per_sec:,.0f} ({r.p99_us / 1000:,.1f} ms{errs})"

    rows: list[list[str]] = []
    for op, lib_op in (("get", "get"), ("set", "put")):
        for size in sizes:
            o = results.get(("objstored", op, size))
            d = results.get(("directord", op, size))
            b = results.get(("library", lib_op, size))
            rd = f"{d.ops_per_sec / o.ops_per_sec:.2f}x" if o and d else "-"
            rb = f"{b.ops_per_sec / o.ops_per_sec:.2f}x" if o and b else "-"
            name = "GET" if op == "get" else "PUT (set)"
            rows.append([name, human(size), cell(o), cell(d), cell(b), rd, rb])
    for size in sizes:
        r = results.get(("library", "dedup", size))
        rows.append(["PUT, dedup hit", human(size), "-", "-", cell(r), "-", "-"])
    return markdown_table(["op", "blob", "direct objstored, 1 copy",
                           "directord, 2 replicas + index", "library, 2 replicas + index",
                           "directord / direct", "library / direct"], rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=int, default=4)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--conns", type=int, default=50)
    ap.add_argument("--sizes", default="4096,262144")
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    targets = args.targets.split(",")
    rng = random.Random()
    config = bench_config(rng)
    results: dict[tuple[str, str, int], Result] = {}

    def record(res: Result) -> None:
        results[(res.target, res.op, res.size)] = res
        print(f"{res.target} {res.op} {human(res.size)}: {res.ops_per_sec:,.0f} ops/s, "
              f"p99 {res.p99_us / 1000:,.1f} ms, {res.errors} errors", file=sys.stderr)

    with tempfile.TemporaryDirectory(prefix="director-bench-") as tmp:
        work = Path(tmp)
        cluster = DevCluster(config, work / "var", DevOptions(
            objstore_count=3, only=frozenset({"redis", "objstore", "directord"})))
        try:
            cluster.up(progress=lambda msg: print(msg, file=sys.stderr))
            mcload = build_mcload(work)
            direct_port = parse_hostport(config.objstore.listen)[1]
            proxy_port = parse_hostport(config.director.listen)[1]
            for size in sizes:
                for target, port in (("objstored", direct_port), ("directord", proxy_port)):
                    if target not in targets:
                        continue
                    warm(mcload, port, size)
                    for op in ("get", "set"):
                        runs = []
                        for _ in range(args.reps):
                            r = run_mcload(mcload, port, op, size, 1, args.conns,
                                           args.seconds, [])
                            runs.append(Result(target, op, size, r.ops_per_sec, r.p99_us))
                        record(median(runs))
                if "library" in targets:
                    base = os.urandom(size)
                    counter = [0]
                    stored: list[str] = []
                    for op in ("put", "get", "dedup"):
                        runs = [asyncio.run(library_run(cluster.config,
                                                        cluster.credentials.redis, op, size,
                                                        args.conns, args.seconds, base,
                                                        counter, stored))
                                for _ in range(args.reps)]
                        record(median(runs))
        finally:
            cluster.down()
    print(table(results, sizes))
    print(f"\nkeys per mcload run: {', '.join(f'{human(s)}: {keys_for(s)}' for s in sizes)}")
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in results.values()], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

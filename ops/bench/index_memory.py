"""Redis memory per indexed blob: INFO memory before and after indexing N blobs.

Starts a private 6-node Redis Cluster with the dev launcher (same redis-server
arguments as ``objmail dev up``) under a temporary directory, unless
``--redis-nodes`` points at an existing cluster (the keys then go under a private
prefix and are deleted afterwards).  Each run indexes ``--blobs`` random SHA-256
ids with ``--replicas`` node numbers drawn from ``--nodes`` nodes through
:class:`director.index.LocationIndex` (the real write path: Lua merge, WAIT), lets
the replicas catch up, and compares ``used_memory`` summed over the masters.

    .venv/bin/python ops/bench/index_memory.py --blobs 1000000 --buckets 4096 --runs 3

Prints one line per run and the median; ``--json`` for a machine-readable summary.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import redis

from director.index import LocationIndex
from director.keys import Keyspace
from ops.config import ClusterConfig, Config, ObjstoreConfig, parse_hostport
from ops.devcluster import DevCluster, DevOptions
from ops.launcher import port_in_use
from runtime.secrets import NO_REDIS_AUTH, RedisAuth


@dataclass
class RunResult:
    blobs: int
    buckets: int
    replicas: int
    used_before: int
    used_after: int
    seconds: float
    listpack_share: float
    bucket_entries_max: int

    @property
    def bytes_per_blob(self) -> float:
        return (self.used_after - self.used_before) / self.blobs


def masters(nodes: Sequence[str], auth: RedisAuth) -> list[redis.Redis]:
    """Plain clients of the cluster's current masters (INFO is per process)."""
    from redis.cluster import RedisCluster

    host, port = parse_hostport(nodes[0])
    rc = RedisCluster(host=host, port=port, **auth.client_kwargs())
    try:
        return [redis.Redis(host=n.host, port=n.port, **auth.client_kwargs())
                for n in rc.get_primaries()]
    finally:
        rc.close()


def used_memory(nodes: list[redis.Redis]) -> int:
    return sum(int(n.info("memory")["used_memory"]) for n in nodes)


def wait_replicas_caught_up(nodes: list[redis.Redis], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    for n in nodes:
        while True:
            info = n.info("replication")
            offset = int(info["master_repl_offset"])
            lagging = [v for k, v in info.items()
                       if k.startswith("slave") and isinstance(v, dict)
                       and int(v.get("offset", 0)) < offset]
            if not lagging or time.monotonic() > deadline:
                break
            time.sleep(0.1)


def wait_replicas_online(nodes: list[redis.Redis], timeout: float = 60.0) -> None:
    """A fresh cluster is ``ok`` before its replicas finished their first sync."""
    deadline = time.monotonic() + timeout
    for n in nodes:
        while not any(isinstance(v, dict) and v.get("state") == "online"
                      for k, v in n.info("replication").items() if k.startswith("slave")):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{n}: no replica online after {timeout:.0f}s")
            time.sleep(0.1)


def warm_up(nodes: Sequence[str], auth: RedisAuth, args: argparse.Namespace) -> None:
    """Index and drop a throwaway batch, so that one-time allocations (replication
    backlog blocks, script cache, connection buffers) are not charged to run 1."""
    rng = random.Random(args.seed - 1)
    keys = Keyspace(f"objmail-bench-warmup-{rng.randrange(1 << 30):x}:")
    primaries = masters(nodes, auth)
    try:
        wait_replicas_online(primaries)
        asyncio.run(index_blobs(nodes, auth, keys, args.buckets, random_ids(100_000, rng),
                                args.replicas, args.nodes, rng))
        delete_keys(primaries, keys.prefix)
    finally:
        for p in primaries:
            p.close()


def random_ids(count: int, rng: random.Random) -> list[str]:
    return [hashlib.sha256(rng.randbytes(16)).hexdigest() for _ in range(count)]


async def index_blobs(nodes: Sequence[str], auth: RedisAuth, keys: Keyspace, buckets: int,
                      ids: list[str], replicas: int, node_count: int,
                      rng: random.Random) -> float:
    index = await LocationIndex.open(nodes, buckets=buckets, keys=keys, auth=auth)
    try:
        numbers = list(range(1, node_count + 1))
        t0 = time.monotonic()
        step = 20_000
        for i in range(0, len(ids), step):
            chunk = ids[i:i + step]
            await index.add_many({b: rng.sample(numbers, replicas) for b in chunk})
        return time.monotonic() - t0
    finally:
        await index.aclose()


def bucket_stats(nodes: Sequence[str], auth: RedisAuth, keys: Keyspace, buckets: int,
                 sample: int, rng: random.Random) -> tuple[float, int]:
    from redis.cluster import RedisCluster

    from director.keys import IndexLayout

    host, port = parse_hostport(nodes[0])
    rc = RedisCluster(host=host, port=port, **auth.client_kwargs())
    layout = IndexLayout(buckets)
    try:
        chosen = rng.sample(range(buckets), min(sample, buckets))
        listpack = 0
        biggest = 0
        for b in chosen:
            key = keys.index_bucket(layout.bucket_name(b))
            enc = rc.object("encoding", key)
            listpack += enc in (b"listpack", "listpack")
            biggest = max(biggest, int(rc.hlen(key)))
        return listpack / len(chosen), biggest
    finally:
        rc.close()


def delete_keys(nodes: list[redis.Redis], prefix: str) -> None:
    for n in nodes:
        pipe = n.pipeline(transaction=False)
        for key in n.scan_iter(match=f"{prefix}*", count=1000):
            pipe.unlink(key)  # keys of one master may span slots: one command each
        pipe.execute()


def one_run(nodes: Sequence[str], auth: RedisAuth, args: argparse.Namespace,
            run: int) -> RunResult:
    rng = random.Random(args.seed + run)
    prefix = f"objmail-bench-{run}-{rng.randrange(1 << 30):x}:"
    keys = Keyspace(prefix)
    ids = random_ids(args.blobs, rng)
    primaries = masters(nodes, auth)
    try:
        wait_replicas_caught_up(primaries)
        before = used_memory(primaries)
        seconds = asyncio.run(index_blobs(nodes, auth, keys, args.buckets, ids, args.replicas,
                                          args.nodes, rng))
        wait_replicas_caught_up(primaries)
        after = used_memory(primaries)
        share, biggest = bucket_stats(nodes, auth, keys, args.buckets, 200, rng)
        # The meta hash is one small key; it is part of the index, so it stays counted.
        return RunResult(args.blobs, args.buckets, args.replicas, before, after, seconds,
                         share, biggest)
    finally:
        delete_keys(primaries, prefix)
        for p in primaries:
            p.close()


def free_redis_ports(count: int = 6) -> int:
    """First of ``count`` free consecutive loopback ports whose bus ports are free too."""
    rng = random.Random()
    for _ in range(500):
        base = rng.randrange(20000, 40000)
        ports = [p for i in range(count) for p in (base + i, base + i + 10000)]
        if not any(port_in_use("127.0.0.1", p) for p in ports):
            return base
    raise RuntimeError("no free block of loopback ports found")


def own_cluster(run_dir: Path) -> DevCluster:
    base = free_redis_ports()
    config = Config(cluster=ClusterConfig(
        redis_nodes=tuple(f"127.0.0.1:{base + i}" for i in range(6))),
        objstore=ObjstoreConfig())
    return DevCluster(config, run_dir, DevOptions(only=frozenset({"redis"}), fast=True))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blobs", type=int, default=1_000_000)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--buckets", type=int, default=4096,
                        help="index buckets (power of two); aim for ~256 blobs per bucket")
    parser.add_argument("--nodes", type=int, default=12,
                        help="object servers the node numbers are drawn from")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--redis-nodes", default="",
                        help="use this existing cluster (host:port,...) instead of a private one")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    cluster: DevCluster | None = None
    tmp: tempfile.TemporaryDirectory[str] | None = None
    auth = NO_REDIS_AUTH  # an existing cluster given by --redis-nodes: no AUTH
    if args.redis_nodes:
        nodes = [n.strip() for n in args.redis_nodes.split(",") if n.strip()]
    else:
        tmp = tempfile.TemporaryDirectory(prefix="objmail-bench-")
        cluster = own_cluster(Path(tmp.name))
        cluster.up()
        nodes = list(cluster.config.cluster.redis_nodes)
        auth = cluster.credentials.redis
    try:
        warm_up(nodes, auth, args)
        results = []
        for run in range(args.runs):
            r = one_run(nodes, auth, args, run)
            results.append(r)
            if not args.json:
                print(f"run {run + 1}: {r.blobs} blobs x{r.replicas}, {r.buckets} buckets: "
                      f"{r.bytes_per_blob:.1f} bytes/blob (used_memory "
                      f"{r.used_before} -> {r.used_after}), indexed in {r.seconds:.1f}s "
                      f"({r.blobs / r.seconds:,.0f}/s), listpack buckets "
                      f"{r.listpack_share:.0%}, largest sampled bucket "
                      f"{r.bucket_entries_max}", flush=True)
        median = statistics.median(r.bytes_per_blob for r in results)
        if args.json:
            print(json.dumps({"median_bytes_per_blob": median,
                              "runs": [asdict(r) | {"bytes_per_blob": r.bytes_per_blob}
                                       for r in results]}, indent=2))
        else:
            print(f"median: {median:.1f} bytes per indexed blob")
    finally:
        if cluster is not None:
            cluster.down()
        if tmp is not None:
            tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())

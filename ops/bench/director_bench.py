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
        [--depths 1] [--ops get,set] [--conns 50] [--targets objstored,directord,library]
        [--compare-code DIR] [--director-workers 1,2] [--json results.json]

``--depths 1,16`` runs mcload with that many requests in flight per connection
(pipelining) against direct objstored and directord.  For each (size, op, depth) the reps
alternate between the two targets, so both see the same machine; the CPU the target's
process used per operation is reported too (µs of user+system time per op).
``--compare-code DIR`` also starts a directord from another source tree (an older commit,
unpacked with ``git archive``) on the same cluster and measures it in the same
alternation, so before and after are compared on the same machine load.
``--director-workers 1,2`` runs the cluster's directord with the first count of worker
processes (``director.workers``) and starts one more directord of this tree for each
further count, named ``directord-w<N>``, on the same cluster and in the same alternation;
their CPU is the supervisor's and its workers'.  The load average (1 min) is read before
every rep and printed.

The machine has two cores shared by every process above and the load generator.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from director.client import BlobClient
from ops.bench.common import free_block, human, markdown_table, median_run, wait_for_port
from ops.bench.objstore_bench import build_mcload, children, keys_for, run_mcload, warm
from ops.config import (
    ClusterConfig,
    Config,
    DirectorConfig,
    ObjstoreConfig,
    parse_hostport,
    to_toml,
)
from ops.devcluster import DEV_LOCATION_CACHE_ENTRIES, DevCluster, DevOptions
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
    depth: int = 1
    #: CPU seconds per wall second the target's server process used during the run.
    server_cpu: float = 0.0

    @property
    def cpu_us_per_op(self) -> float:
        return self.server_cpu * 1e6 / self.ops_per_sec if self.ops_per_sec else 0.0


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


#: The name the directord of ``--compare-code`` is measured under.
BEFORE = "directord-before"


def start_directord(tree: Path, cluster: DevCluster, port: int, work: Path,
                    name: str = BEFORE, workers: int | None = None,
                    config_path: Path | None = None) -> subprocess.Popen[bytes]:
    """A directord of the source tree ``tree`` on ``port`` (metrics on the next ones),
    with the cluster's configuration: the same Redis, object servers and credentials.

    :param workers: its worker processes (``--workers``); None: the config's.
    :param config_path: another config file (the cluster's with a setting changed).
    """
    log = open(work / f"{name}.log", "wb")  # noqa: SIM115 (closed with the dir)
    extra = ["--workers", str(workers)] if workers is not None else []
    proc = subprocess.Popen(
        [sys.executable, "-m", "director.main", "--config",
         str(config_path or cluster.config_path),
         "--listen", f"127.0.0.1:{port}", "--metrics-listen", f"127.0.0.1:{port + 1}",
         *extra],
        cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)}, stdout=log, stderr=log)
    try:
        wait_for_port(port, timeout=60)
    except BaseException:
        stop_process(proc)
        raise
    return proc


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def pid_of(cluster: DevCluster, name: str) -> int:
    """The pid of one of the cluster's processes (for its CPU time)."""
    return int(cluster.launcher.pidfile(name).read_text().split()[0])


def median(results: list[Result]) -> Result:
    return median_run(results, errors=sum(r.errors for r in results),
                      server_cpu=statistics.median(r.server_cpu for r in results))


def depth_table(results: dict[tuple[str, str, int, int], Result], sizes: list[int],
                depths: list[int], others: Sequence[str] = (), name: str = "directord"
                ) -> str:
    """direct objstored against directord (and ``others``) for every size and depth."""
    def cell(r: Result | None) -> str:
        if r is None:
            return "-"
        errs = f", {r.errors} errors" if r.errors else ""
        return (f"{r.ops_per_sec:,.0f} ({r.p99_us / 1000:,.1f} ms, "
                f"{r.cpu_us_per_op:,.0f} µs cpu/op{errs})")

    rows: list[list[str]] = []
    for op in ("get", "set"):
        for size in sizes:
            for depth in depths:
                o = results.get(("objstored", op, size, depth))
                d = results.get(("directord", op, size, depth))
                if o is None and d is None:
                    continue
                ratio = f"{d.ops_per_sec / o.ops_per_sec:.2f}x" if o and d else "-"
                row = [op.upper(), human(size), str(depth) if depth > 1 else "no", cell(o),
                       cell(d), ratio]
                for other in others:
                    b = results.get((other, op, size, depth))
                    row += [cell(b), f"{b.ops_per_sec / o.ops_per_sec:.2f}x" if o and b else "-"]
                rows.append(row)
    header = ["op", "blob", "pipeline", "direct objstored, 1 copy",
              f"{name}, 2 replicas + index", f"{name} / direct"]
    for other in others:
        header += [f"{other}, 2 replicas + index", f"{other} / direct"]
    return markdown_table(header, rows)


def table(results: dict[tuple[str, str, int, int], Result], sizes: list[int]) -> str:
    def cell(r: Result | None) -> str:
        if r is None:
            return "-"
        errs = f", {r.errors} errors" if r.errors else ""
        return f"{r.ops_per_sec:,.0f} ({r.p99_us / 1000:,.1f} ms{errs})"

    rows: list[list[str]] = []
    for op, lib_op in (("get", "get"), ("set", "put")):
        for size in sizes:
            o = results.get(("objstored", op, size, 1))
            d = results.get(("directord", op, size, 1))
            b = results.get(("library", lib_op, size, 1))
            rd = f"{d.ops_per_sec / o.ops_per_sec:.2f}x" if o and d else "-"
            rb = f"{b.ops_per_sec / o.ops_per_sec:.2f}x" if o and b else "-"
            name = "GET" if op == "get" else "PUT (set)"
            rows.append([name, human(size), cell(o), cell(d), cell(b), rd, rb])
    for size in sizes:
        r = results.get(("library", "dedup", size, 1))
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
    ap.add_argument("--depths", default="1", help="mcload requests in flight per connection")
    ap.add_argument("--ops", default="get,set", help="mcload operations (get, set)")
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--compare-code", metavar="DIR",
                    help="also run a directord from the source tree DIR (another commit, "
                         "e.g. unpacked with `git archive`) on the same cluster, measured "
                         "in the same alternation as 'directord-before'")
    ap.add_argument("--director-workers", default="1", metavar="N,M,...",
                    help="directord's worker processes: the cluster's directord runs the "
                         "first count, one more directord per further count "
                         "('directord-w<N>'), measured in the same alternation")
    ap.add_argument("--location-cache", metavar="N,M,...",
                    help="directord's director.location_cache_entries: the cluster's "
                         "directord runs the first, one more directord per further value "
                         "('directord-lc<N>'), measured in the same alternation")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    worker_counts = [int(n) for n in args.director_workers.split(",")]
    sizes = [int(s) for s in args.sizes.split(",")]
    depths = [int(d) for d in args.depths.split(",")]
    targets = args.targets.split(",")
    rng = random.Random()
    config = bench_config(rng)
    caches = [int(n) for n in args.location_cache.split(",")] if args.location_cache else []
    config = replace(config, director=replace(
        config.director, workers=worker_counts[0],
        location_cache_entries=caches[0] if caches else config.director.location_cache_entries))
    loads: list[float] = []
    results: dict[tuple[str, str, int, int], Result] = {}

    def record(res: Result) -> None:
        results[(res.target, res.op, res.size, res.depth)] = res
        print(f"{res.target} {res.op} {human(res.size)} depth {res.depth}: "
              f"{res.ops_per_sec:,.0f} ops/s, p99 {res.p99_us / 1000:,.1f} ms, "
              f"{res.cpu_us_per_op:,.0f} µs cpu/op, {res.errors} errors", file=sys.stderr)

    with tempfile.TemporaryDirectory(prefix="director-bench-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        # Without --location-cache, directord runs as `objmail dev up` runs it (the
        # cache on); with it, exactly as given (0: off).
        cluster = DevCluster(config, work / "var", DevOptions(
            objstore_count=3, only=frozenset({"redis", "objstore", "directord"}),
            location_cache_entries=caches[0] if caches else DEV_LOCATION_CACHE_ENTRIES))
        try:
            cluster.up(progress=lambda msg: print(msg, file=sys.stderr))
            mcload = build_mcload(work)
            direct_port = parse_hostport(config.objstore.listen)[1]
            proxy_port = parse_hostport(config.director.listen)[1]
            # The dev cluster's blob plane wants a login; mcload logs every connection in.
            access = cluster.node_access
            login = ["-a", f"{access.user}:{access.password}"] if access.user else []
            pids = {"objstored": pid_of(cluster, "objstored-1"),
                    "directord": pid_of(cluster, "directord")}
            mc_targets = [(t, port) for t, port in (("objstored", direct_port),
                                                     ("directord", proxy_port))
                          if t in targets]
            if args.compare_code:
                before_port = free_block(2, rng)
                before = start_directord(Path(args.compare_code), cluster, before_port, work)
                stack.callback(stop_process, before)
                pids[BEFORE] = before.pid
                mc_targets.append((BEFORE, before_port))
            for count in worker_counts[1:]:
                name = f"directord-w{count}"
                extra_port = free_block(count + 1, rng)
                extra = start_directord(Path(__file__).resolve().parents[2], cluster, extra_port,
                                        work, name, count)
                stack.callback(stop_process, extra)
                pids[name] = extra.pid
                mc_targets.append((name, extra_port))
            for entries in caches[1:]:
                name = f"directord-lc{entries}"
                extra_port = free_block(2, rng)
                path = work / f"{name}.toml"
                path.write_text(to_toml(replace(cluster.config, director=replace(
                    cluster.config.director, location_cache_entries=entries))))
                extra = start_directord(Path(__file__).resolve().parents[2], cluster, extra_port,
                                        work, name, config_path=path)
                stack.callback(stop_process, extra)
                pids[name] = extra.pid
                mc_targets.append((name, extra_port))
            for size in sizes:
                for _target, port in mc_targets:
                    warm(mcload, port, size, login)
                for op in args.ops.split(","):
                    for depth in depths:
                        by_target: dict[str, list[Result]] = {t: [] for t, _p in mc_targets}
                        # Alternate the targets rep by rep: both see the same machine.
                        for _ in range(args.reps):
                            loads.append(os.getloadavg()[0])
                            for target, port in mc_targets:
                                # A supervisor's workers too (their CPU is the target's).
                                r = run_mcload(mcload, port, op, size, depth, args.conns,
                                               args.seconds, children(pids[target]), login)
                                by_target[target].append(Result(target, op, size, r.ops_per_sec,
                                                           r.p99_us, depth=depth,
                                                           server_cpu=r.server_cpu))
                        for target_runs in by_target.values():
                            record(median(target_runs))
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
    print()
    others = [*([BEFORE] if args.compare_code else []),
              *(f"directord-w{count}" for count in worker_counts[1:]),
              *(f"directord-lc{entries}" for entries in caches[1:])]
    name = "directord" if len(worker_counts) == 1 else f"directord-w{worker_counts[0]}"
    if caches:
        name = f"directord-lc{caches[0]}"
    print(depth_table(results, sizes, depths, others, name))
    if loads:
        print(f"\nload average (1 min) before each rep: median {statistics.median(loads):.2f}, "
              f"min {min(loads):.2f}, max {max(loads):.2f}")
    print(f"\nkeys per mcload run: {', '.join(f'{human(s)}: {keys_for(s)}' for s in sizes)}")
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in results.values()], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark objstored against memcached and Redis (appendonly, appendfsync always and everysec).

One run starts every server on loopback in a temporary directory, drives it, stops it, and
prints a Markdown table (ops/s and p99 latency, medians of ``--reps`` runs) with the ratios
objstored/memcached and objstored/Redis, plus the raw results as JSON.

Load generators:

* memcached and objstored: ``mcload`` (ops/bench/mcload.c, compiled here with ``cc``), a
  one-thread epoll client that keeps ``depth`` requests in flight on each of ``--conns``
  connections over a fixed key set.  memaslap (Debian's ``memcaslap``) cannot pipeline,
  reports latency in power-of-two buckets and needs >= 1024 keys per connection.
  To show the generator saturates memcached, the memcached CPU time used during each run is
  reported (100 % per thread = saturated).
* Redis: ``redis-benchmark`` (``-P`` for pipelining).

``--security plain,auth,tls,auth+tls`` runs objstored once per setting: with an auth file
(every mcload connection logs in first, as ``memcached -Y`` clients do), with TLS (a
self-signed certificate made by ``openssl``; mcload is then built against OpenSSL), or
both; a second table gives each setting's throughput against plain objstored's.

Usage::

    python -m ops.bench.objstore_bench [--seconds 4] [--reps 3] [--workers 2]
        [--sizes 100,4096,65536,1048576] [--security plain,auth,tls,auth+tls]
        [--targets memcached,objstored,redis-always,redis] [--baseline-tree DIR]
        [--json results.json]

Every server runs for the whole benchmark and each repetition runs every target in turn,
so the shared machine's changing load falls on all alike; the 1-minute load average is
printed.  ``--baseline-tree DIR`` adds objstored from another checkout (say main) as the
target "objstored before", with a before/after table.

The machine has two cores shared with the load generator; run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from ops.bench.common import free_port, human, markdown_table, median_run, wait_for_port

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
KEYSPACE_BYTES = 256 * 1024 * 1024


@dataclass
class Result:
    target: str
    op: str
    size: int
    depth: int
    ops_per_sec: float
    p99_us: float
    server_cpu: float = 0.0  # CPU seconds per wall second used by the server


@dataclass
class Target:
    """A running server under test: mcload drives it, or redis-benchmark when ``redis``."""

    name: str
    port: int
    pid: int
    extra: list[str]
    redis: bool = False


#: The two Redis references: ``always`` makes the same promise as objstored (the reply
#: follows the fsync); ``everysec`` may lose the last second of acknowledged writes.
REDIS_TARGETS = {"always": "redis-always", "everysec": "redis"}
#: objstored from --baseline-tree.
BEFORE = "objstored before"


def cpu_seconds(pids: list[int]) -> float:
    """User+system CPU of the processes and their children threads (from /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks
        except (OSError, IndexError):
            pass
    return total


def children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True)
    return [pid] + [int(p) for p in out.stdout.split()]


@contextmanager
def process(args: list[str], port: int, **kw: object) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            **kw)  # type: ignore[call-overload]
    try:
        wait_for_port(port)
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_load(args: list[str], pids: list[int], timeout: float) -> tuple[bytes, float]:
    """Run a load generator to completion: its output, and the CPU seconds per wall
    second the server processes ``pids`` used meanwhile."""
    before = cpu_seconds(pids)
    start = time.monotonic()
    out = subprocess.run(args, capture_output=True, check=True, timeout=timeout)
    elapsed = time.monotonic() - start
    return out.stdout, (cpu_seconds(pids) - before) / elapsed


def build_mcload(workdir: Path, tls: bool = False) -> Path:
    """Compile the load generator (against OpenSSL when ``tls``: libssl-dev)."""
    exe = workdir / ("mcload-tls" if tls else "mcload")
    extra = ["-DMCLOAD_TLS", "-lssl", "-lcrypto"] if tls else []
    subprocess.run(["cc", "-O2", "-o", str(exe), str(HERE / "mcload.c"), *extra], check=True)
    return exe


#: objstored's settings --security may ask for.
SECURITY = ("plain", "auth", "tls", "auth+tls")
BENCH_USER = "bench"


def security_setup(work: Path, setting: str) -> tuple[str, list[str]]:
    """The ``[objstore]`` lines for ``setting`` and the mcload options that match."""
    lines, args = [], []
    if "auth" in setting.split("+"):
        path = work / "blob-auth"
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(f"{BENCH_USER}:{os.urandom(16).hex()}\n")
        lines.append(f'auth_file = "{path}"')
        args += ["-a", path.read_text().strip()]
    if "tls" in setting.split("+"):
        cert, key = work / "cert.pem", work / "key.pem"
        if not cert.exists():
            subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                            "ec_paramgen_curve:P-256", "-nodes", "-days", "2", "-subj",
                            "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
                            "-keyout", str(key), "-out", str(cert)], check=True,
                           capture_output=True)
        lines += [f'tls_cert = "{cert}"', f'tls_key = "{key}"']
        args += ["-T", str(cert)]
    return "\n".join(lines) + "\n", args


def keys_for(size: int) -> int:
    return max(50, min(1000, KEYSPACE_BYTES // max(size, 1)))


def run_mcload(exe: Path, port: int, op: str, size: int, depth: int, conns: int,
               seconds: int, pids: list[int], extra: list[str] | None = None) -> Result:
    """One mcload run; ``extra`` options (``-a user:pw``, ``-T ca.pem``) go to mcload."""
    args = [str(exe), "-p", str(port), "-c", str(conns), "-d", str(depth), "-t",
            str(seconds), "-s", str(size), "-k", str(keys_for(size)), "-o", op,
            *(extra or [])]
    stdout, cpu = run_load(args, pids, timeout=seconds * 10 + 120)
    data = json.loads(stdout)
    return Result("", op, size, depth, data["ops_per_sec"], data["p99_us"], cpu)


def warm(exe: Path, port: int, size: int, extra: list[str] | None = None) -> None:
    subprocess.run([str(exe), "-p", str(port), "-c", "1", "-d", "1", "-t", "1", "-s",
                    str(size), "-k", str(keys_for(size)), "-o", "get", "-W", *(extra or [])],
                   capture_output=True, check=True, timeout=600)


def run_redis_benchmark(port: int, op: str, size: int, depth: int, conns: int,
                        seconds: int, pids: list[int], fsync_each: bool = False,
                        rate: float | None = None) -> Result:
    """One redis-benchmark run of about ``seconds``: it counts requests, not time, so the
    count comes from ``rate`` (the previous repetition's ops/s) or a rough guess."""
    if rate is None:
        rate = 80_000 if size <= 4096 else 3_000 if size <= 65536 else 300
        if fsync_each and op == "set":
            rate //= 4  # appendfsync always waits for the disk on every event-loop turn
        if depth > 1:
            rate *= 4
    n = max(int(rate * seconds), 1000)
    args = ["redis-benchmark", "-p", str(port), "-t", op, "-d", str(size), "-c", str(conns),
            "-n", str(n), "-r", str(keys_for(size)), "--csv", "-q"]
    if depth > 1:
        args += ["-P", str(depth)]
    stdout, cpu = run_load(args, pids, timeout=seconds * 20 + 300)
    lines = [ln for ln in stdout.decode().splitlines() if ln.startswith('"')]
    header = [h.strip('"') for h in lines[0].split(",")]
    row = dict(zip(header, (v.strip('"') for v in lines[-1].split(",")), strict=True))
    return Result("redis", op, size, depth, float(row["rps"]),
                  float(row["p99_latency_ms"]) * 1000, cpu)


def median_result(results: list[Result]) -> Result:
    return median_run(results, server_cpu=statistics.median(r.server_cpu for r in results))


def table(results: dict[tuple[str, str, int, int], Result], sizes: list[int],
          depths: list[int]) -> str:
    rows = []
    for op in ("get", "set"):
        for size in sizes:
            for depth in depths:
                m = results.get(("memcached", op, size, depth))
                o = results.get(("objstored", op, size, depth))
                r = results.get(("redis", op, size, depth))
                a = results.get(("redis-always", op, size, depth))
                if o is None:
                    continue

                def cell(x: Result | None, cpu: bool = False) -> str:
                    if x is None:
                        return "-"
                    extra = f", {x.server_cpu * 100:.0f}% cpu" if cpu else ""
                    return f"{x.ops_per_sec:,.0f} ({x.p99_us:,.0f}{extra})"

                ratio_m = f"{o.ops_per_sec / m.ops_per_sec:.2f}x" if m else "-"
                ratio_r = f"{o.ops_per_sec / r.ops_per_sec:.2f}x" if r else "-"
                ratio_a = f"{o.ops_per_sec / a.ops_per_sec:.2f}x" if a else "-"
                rows.append([op.upper(), human(size), depth if depth > 1 else "no",
                             cell(m, cpu=True), cell(o, cpu=True), cell(a), cell(r), ratio_m,
                             ratio_a, ratio_r])
    return markdown_table(["op", "value", "pipeline", "memcached ops/s (p99 µs, cpu)",
                           "objstored ops/s (p99 µs, cpu)", "Redis always ops/s (p99 µs)",
                           "Redis everysec ops/s (p99 µs)", "objstored/memcached",
                           "objstored/Redis always", "objstored/Redis everysec"], rows)


def before_after_table(results: dict[tuple[str, str, int, int], Result], sizes: list[int],
                       depths: list[int]) -> str:
    """objstored from --baseline-tree against this tree's, in the same run."""
    rows = []
    for op in ("set", "get"):
        for size in sizes:
            for depth in depths:
                b = results.get((BEFORE, op, size, depth))
                o = results.get(("objstored", op, size, depth))
                a = results.get(("redis-always", op, size, depth))
                m = results.get(("memcached", op, size, depth))
                if b is None or o is None:
                    continue
                ref = a if op == "set" else m

                def ratio(x: Result, y: Result | None) -> str:
                    return f"{x.ops_per_sec / y.ops_per_sec:.2f}x" if y else "-"

                rows.append([op.upper(), human(size), depth if depth > 1 else "no",
                             f"{b.ops_per_sec:,.0f} ({b.server_cpu * 100:.0f}% cpu)",
                             f"{o.ops_per_sec:,.0f} ({o.server_cpu * 100:.0f}% cpu)",
                             ratio(o, b), ratio(b, ref), ratio(o, ref)])
    return markdown_table(["op", "value", "pipeline", "before ops/s", "after ops/s",
                           "after/before", "before/ref", "after/ref (SET: Redis always, "
                           "GET: memcached)"], rows)


def security_table(results: dict[tuple[str, str, int, int], Result], sizes: list[int],
                   depths: list[int], settings: list[str]) -> str:
    """objstored with each --security setting, and its ratio to plain objstored."""
    rows = []
    for op in ("get", "set"):
        for size in sizes:
            for depth in depths:
                plain = results.get(("objstored", op, size, depth))
                row: list[object] = [op.upper(), human(size), depth if depth > 1 else "no"]
                for setting in settings:
                    name = "objstored" if setting == "plain" else f"objstored {setting}"
                    r = results.get((name, op, size, depth))
                    if r is None:
                        row.append("-")
                        continue
                    ratio = f", {r.ops_per_sec / plain.ops_per_sec:.2f}x" \
                        if plain and setting != "plain" else ""
                    row.append(f"{r.ops_per_sec:,.0f} (p99 {r.p99_us:,.0f} µs{ratio})")
                rows.append(row)
    return markdown_table(["op", "value", "pipeline",
                           *(f"objstored {s}" for s in settings)], rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=int, default=4)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--conns", type=int, default=50)
    ap.add_argument("--workers", type=int, default=2, help="objstored --workers")
    ap.add_argument("--memcached-threads", type=int, default=2)
    ap.add_argument("--sizes", default="100,4096,65536,1048576")
    ap.add_argument("--depths", default="1,16", help="requests in flight per connection")
    ap.add_argument("--targets", default="memcached,objstored,redis-always,redis",
                    help="among memcached, objstored, redis-always, redis (everysec)")
    ap.add_argument("--security", default="plain",
                    help=f"objstored runs, comma-separated, among {','.join(SECURITY)}")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--baseline-tree", help="also run objstored from this checkout (e.g. "
                    "`git worktree add /tmp/base main`) as the target 'objstored before'")
    args = ap.parse_args(argv)
    # A SIGTERM unwinds like an exception, so every server started here is stopped.
    signal.signal(signal.SIGTERM, lambda _sig, _frame: sys.exit(143))
    sizes = [int(s) for s in args.sizes.split(",")]
    depths = [int(d) for d in args.depths.split(",")]
    targets = args.targets.split(",")
    settings = args.security.split(",")
    if not set(settings) <= set(SECURITY):
        print(f"--security: choose among {', '.join(SECURITY)}", file=sys.stderr)
        return 2
    for tool in ("cc", "memcached", "redis-server", "redis-benchmark"):
        if not shutil.which(tool):
            print(f"{tool} is required", file=sys.stderr)
            return 2
    results: dict[tuple[str, str, int, int], Result] = {}
    loads: list[float] = []
    with tempfile.TemporaryDirectory(prefix="objstore-bench-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        mcload = build_mcload(work, tls=any("tls" in s for s in settings))
        # Every server runs for the whole benchmark, and each repetition of a measurement
        # runs every target in turn: the shared machine's changing load falls on all alike.
        servers: list[Target] = []
        if "memcached" in targets:
            port = free_port()
            cmd = ["memcached", "-p", str(port), "-U", "0", "-l", "127.0.0.1", "-t",
                   str(args.memcached_threads), "-m", "2048", "-c", "4096", "-I", "2m"]
            if os.geteuid() == 0:
                cmd += ["-u", "root"]
            proc = stack.enter_context(process(cmd, port))
            servers.append(Target("memcached", port, proc.pid, []))
        if "objstored" in targets:
            for setting in settings:
                port = free_port()
                config = work / f"objstored-{setting}.toml"
                lines, extra = security_setup(work, setting)
                config.write_text("[objstore]\nmax_connections = 4096\n" + lines +
                                  f"[cluster]\nredis_nodes = [\"127.0.0.1:{free_port()}\"]\n")
                cmd = [sys.executable, "-m", "objstore.main", "--config", str(config),
                       "--listen", f"127.0.0.1:{port}", "--data",
                       str(work / f"objstored-{setting}"), "--workers", str(args.workers),
                       "--max-item-size", "2M", "--metrics-listen", ""]
                proc = stack.enter_context(process(cmd, port, cwd=REPO))
                name = "objstored" if setting == "plain" else f"objstored {setting}"
                servers.append(Target(name, port, proc.pid, extra))
        if "objstored" in targets and args.baseline_tree:
            port = free_port()
            tree = Path(args.baseline_tree).resolve()
            config = work / "objstored-before.toml"
            config.write_text("[objstore]\nmax_connections = 4096\n"
                              f"[cluster]\nredis_nodes = [\"127.0.0.1:{free_port()}\"]\n")
            cmd = [sys.executable, "-m", "objstore.main", "--config", str(config),
                   "--listen", f"127.0.0.1:{port}", "--data", str(work / "objstored-before"),
                   "--workers", str(args.workers), "--max-item-size", "2M",
                   "--metrics-listen", ""]
            proc = stack.enter_context(process(cmd, port, cwd=tree,
                                               env={**os.environ, "PYTHONPATH": str(tree)}))
            servers.append(Target(BEFORE, port, proc.pid, []))
        for policy in ("always", "everysec"):
            if REDIS_TARGETS[policy] not in targets:
                continue
            port = free_port()
            rdir = work / f"redis-{policy}"
            rdir.mkdir()
            cmd = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--appendonly",
                   "yes", "--appendfsync", policy, "--save", "", "--dir", str(rdir)]
            proc = stack.enter_context(process(cmd, port))
            servers.append(Target(REDIS_TARGETS[policy], port, proc.pid, [], redis=True))
        for size in sizes:
            for t in servers:
                if not t.redis:
                    warm(mcload, t.port, size, t.extra)
            for op in ("set", "get"):  # sets first, so Redis's gets hit
                for depth in depths:
                    runs: dict[str, list[Result]] = {t.name: [] for t in servers}
                    for _ in range(args.reps):
                        loads.append(os.getloadavg()[0])
                        for t in servers:
                            pids = children(t.pid)
                            if t.redis:
                                before = runs[t.name]
                                res = run_redis_benchmark(
                                    t.port, op, size, depth, args.conns, args.seconds, pids,
                                    fsync_each=t.name == REDIS_TARGETS["always"],
                                    rate=before[-1].ops_per_sec if before else None)
                            else:
                                res = run_mcload(mcload, t.port, op, size, depth, args.conns,
                                                 args.seconds, pids, t.extra)
                            runs[t.name].append(res)
                    for t in servers:
                        res = median_result(runs[t.name])
                        res.target = t.name
                        results[(t.name, op, size, depth)] = res
                        print(f"{t.name} {op} {size} depth={depth}: {res.ops_per_sec:,.0f} "
                              f"ops/s p99 {res.p99_us:,.0f} us cpu {res.server_cpu:.2f}",
                              file=sys.stderr, flush=True)
    print(f"load average (1 min) during the run: min {min(loads):.1f}, "
          f"median {statistics.median(loads):.1f}, max {max(loads):.1f}\n")
    print(table(results, sizes, depths))
    if args.baseline_tree:
        print()
        print(before_after_table(results, sizes, depths))
    if settings != ["plain"]:
        print()
        print(security_table(results, sizes, depths, settings))
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in results.values()], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

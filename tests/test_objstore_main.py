"""objstored as a process: command line, node id, SIGTERM, --workers, connection limit,
load reports in a real Redis Cluster and serving while Redis is gone."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pymemcache.client.base import Client

from objstore.main import resolve_node_id
from ops.config import ConfigError
from tests.objstore_process import REPO, Objstored, free_port, objstored, write_config
from tests.waiting import wait_until


def client(server: Objstored) -> Client:
    return Client((server.host, server.port), timeout=10, connect_timeout=5,
                  default_noreply=False)


def test_node_id_is_generated_once_and_kept(tmp_path: Path) -> None:
    """Without --node-id an id is generated on first start and reused afterwards."""
    first = resolve_node_id(tmp_path, "")
    assert first.startswith("obj-") and resolve_node_id(tmp_path, "") == first
    assert resolve_node_id(tmp_path, first) == first


def test_node_id_mismatch_and_bad_characters(tmp_path: Path) -> None:
    """A data dir refuses another node's id; ids with braces would break the hash tags."""
    (tmp_path / "a").mkdir()
    resolve_node_id(tmp_path / "a", "node-a")
    with pytest.raises(ConfigError, match="belongs to node 'node-a'"):
        resolve_node_id(tmp_path / "a", "node-b")
    (tmp_path / "b").mkdir()
    with pytest.raises(ConfigError, match="braces"):
        resolve_node_id(tmp_path / "b", "bad{id}")


def _run_objstored(args: list[str], timeout: float = 20) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "objstore.main", *args], cwd=REPO,
                          capture_output=True, timeout=timeout)


@pytest.mark.system
def test_cli_errors_name_the_key(tmp_path: Path) -> None:
    """Bad settings stop objstored at once with exit 78 (EX_CONFIG) and a message naming
    the key; a port already taken is 71 (EX_OSERR), also naming the key."""
    cfg = tmp_path / "c.toml"
    write_config(cfg, {}, None)
    port = free_port()
    common = ["--config", str(cfg), "--listen", f"127.0.0.1:{port}", "--data",
              str(tmp_path / "d")]
    too_big = _run_objstored([*common, "--max-item-size", "100M"])
    assert too_big.returncode == 78 and b"objstore.max_item_size" in too_big.stderr
    bad_workers = _run_objstored([*common, "--workers", "0"])
    assert bad_workers.returncode == 78 and b"objstore.workers" in bad_workers.stderr
    bad_metrics = _run_objstored([*common, "--metrics-listen", "nohost"])
    assert bad_metrics.returncode == 78 and b"objstore.metrics_listen" in bad_metrics.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        in_use = _run_objstored(["--config", str(cfg), "--data", str(tmp_path / "e"),
                                 "--listen", f"127.0.0.1:{busy.getsockname()[1]}"])
    assert in_use.returncode == 71 and b"objstore.listen" in in_use.stderr


def scrape(server: Objstored) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the server's /metrics, parsed by prometheus_client."""
    with urllib.request.urlopen(server.metrics_url, timeout=10) as resp:
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.mark.system
def test_metrics_endpoint_and_json_logs(tmp_path: Path) -> None:
    """objstored serves /metrics with objstore_* samples that follow what clients do
    (commands, items, commit batches and their latency histogram, connections, job
    metrics, build and process metrics), and --log-format json writes only JSON lines
    with the stable field set."""
    with objstored(tmp_path, metrics=True, extra_args=["--log-format", "json"]) as s:
        mc = client(s)
        for i in range(20):
            assert mc.set(f"m{i}", b"x" * 100)
        assert mc.get("m1") == b"x" * 100 and mc.get("nope") is None
        got = scrape(s)
        assert got["objstore_commands_total", (("command", "set"),)] == 20
        assert got["objstore_get_hits_total", ()] == 1
        assert got["objstore_get_misses_total", ()] == 1
        assert got["objstore_items", ()] == 20
        assert got["objstore_open_connections", ()] == 1
        assert got["objstore_commit_batches_total", ()] >= 1
        assert got["objstore_committed_ops_total", ()] >= 20
        assert got["objstore_commit_seconds_count", ()] == got["objstore_commit_batches_total", ()]
        assert got["objstore_commit_seconds_bucket", (("le", "+Inf"),)] \
            == got["objstore_commit_seconds_count", ()]
        assert got["objstore_job_failures_total", (("job", "expiry"),)] == 0
        assert ("objstore_job_failures_total", (("job", "load_report"),)) in got
        assert [v for (name, _), v in got.items() if name == "objstore_build_info"] == [1]
        assert got["process_resident_memory_bytes", ()] > 0
        ours = {name for name, _ in got if not name.startswith(("process_", "python_"))}
        assert all(name.startswith("objstore_") for name in ours), ours
        mc.close()
        assert s.stop() == 0
        # The launcher heads each run in the log with a "--- ... starting" line of its own.
        lines = [x for x in s.log_path.read_text().splitlines() if not x.startswith("--- ")]
    assert lines
    for line in lines:
        fields = json.loads(line)
        assert list(fields)[:5] == ["ts", "level", "logger", "pid", "msg"], line
    assert any("serving" in json.loads(line)["msg"] for line in lines)


@pytest.mark.system
def test_sigterm_exits_zero_and_keeps_acknowledged_writes(tmp_path: Path) -> None:
    """SIGTERM ends objstored with exit 0; what it acknowledged is there after a restart,
    under the same node id."""
    with objstored(tmp_path, extra_args=["--node-id", "node-7", "--zone", "b",
                                         "--tier", "hdd"]) as s:
        mc = client(s)
        for i in range(200):
            assert mc.set(f"k{i}", b"v%d" % i)
        settings = mc.stats()
        assert settings[b"node_id"] == b"node-7" and settings[b"zone"] == b"b"
        mc.close()
        assert s.stop() == 0
        assert (s.data_dir / "node_id").read_text().strip() == "node-7"
        s.extra_args = []
        s.start()
        mc = client(s)
        assert mc.get_many([f"k{i}" for i in range(200)]) == {
            f"k{i}": b"v%d" % i for i in range(200)}
        assert mc.stats()[b"node_id"] == b"node-7"
        mc.close()


@pytest.mark.system
def test_data_dir_is_locked(tmp_path: Path) -> None:
    """A second objstored on the same data directory refuses to start (exit 71)."""
    with objstored(tmp_path) as s:
        other = _run_objstored(["--config", str(s.config_path), "--data", str(s.data_dir),
                                "--listen", f"127.0.0.1:{free_port()}"])
        assert other.returncode == 71 and b"in use by another objstored" in other.stderr


@pytest.mark.system
def test_workers_share_port_and_store(tmp_path: Path) -> None:
    """--workers 2: both processes accept on one port and serve one store; /metrics
    (worker 0) counts every worker's commands; SIGTERM stops them all with exit 0."""
    with objstored(tmp_path, workers=2, metrics=True) as s:
        pids: set[int] = set()

        def both_workers_answered() -> bool:
            mc = client(s)
            pids.add(mc.stats()[b"pid"])
            mc.close()
            return len(pids) == 2

        wait_until(both_workers_answered, 20, interval=0,
                   what="a connection reaching the second worker")
        writers = [client(s) for _ in range(6)]
        for n, mc in enumerate(writers):
            for i in range(50):
                assert mc.set(f"w{n}-{i}", b"%d" % i)
        readers = [client(s) for _ in range(6)]
        for mc in readers:
            got = mc.get_many([f"w{n}-{i}" for n in range(6) for i in range(50)])
            assert len(got) == 300
        # Every worker's counters reach the node totals within the publishing period.
        wait_until(lambda: readers[0].stats()[b"cmd_set"] >= 300, 10,
                   what="both workers' sets in the node totals")
        wait_until(lambda: scrape(s)["objstore_commands_total", (("command", "set"),)] >= 300,
                   10, what="both workers' sets in worker 0's /metrics")
        for mc in writers + readers:
            mc.close()
        assert s.pid is not None
        children = _children(s.pid)
        assert len(children) == 2
        assert s.stop() == 0
        for pid in children:
            assert not _alive(pid)


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True)
    return [int(p) for p in out.stdout.split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is not alive for our purposes.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


@pytest.mark.system
def test_worker_killed_is_restarted(tmp_path: Path) -> None:
    """If a worker dies, the supervisor starts a new one and the port keeps serving."""
    with objstored(tmp_path, workers=2) as s:
        supervisor = s.pid
        assert supervisor is not None
        victim = _children(supervisor)[0]
        os.kill(victim, signal.SIGKILL)

        def replaced() -> bool:
            kids = _children(supervisor)
            return len(kids) == 2 and victim not in kids

        wait_until(replaced, 15, interval=0.1, what="a new worker in place of the killed one")
        mc = client(s)
        assert mc.set("after", b"x") and mc.get("after") == b"x"
        mc.close()


@pytest.mark.system
def test_connection_limit(tmp_path: Path) -> None:
    """Past max_connections a client gets memcached's error and is closed."""
    with objstored(tmp_path, max_connections=3) as s:
        held = [s.connect() for _ in range(3)]
        for sock in held:
            sock.sendall(b"version\r\n")
            assert sock.recv(100).startswith(b"VERSION")
        extra = s.connect()
        assert extra.recv(100) == b"ERROR Too many open connections\r\n"
        assert extra.recv(100) == b""
        extra.close()
        held.pop().close()

        def served() -> bool:
            # Until the server has seen the close, a new connection is still one too many.
            with s.connect() as again:
                again.sendall(b"version\r\n")
                return again.recv(100).startswith(b"VERSION")

        wait_until(served, 5, what="a connection accepted once one was closed")
        for sock in held:
            sock.close()


@pytest.mark.system
def test_serves_while_redis_is_down(tmp_path: Path) -> None:
    """With no Redis reachable objstored serves normally and keeps retrying its report."""
    with objstored(tmp_path, report_interval=0.2, report_ttl=2) as s:
        mc = client(s)
        for i in range(20):
            assert mc.set(f"r{i}", b"x")
            assert mc.get(f"r{i}") == b"x"
        wait_until(lambda: "load report to Redis failed" in s.log_tail(200), 10,
                   what="a failed load report in the log")
        assert mc.version()
        mc.close()


def test_load_report_appears_in_redis_cluster(tmp_path: Path, redis_cluster: Any) -> None:
    """objstored writes its load report and hot keys to Redis Cluster, with a TTL."""
    from redis.cluster import ClusterNode, RedisCluster

    nodes = list(redis_cluster.nodes)
    conf = redis_cluster.cluster.config.cluster
    with objstored(tmp_path, redis_nodes=nodes, report_interval=0.5, report_ttl=3,
                   cluster={"redis_user": conf.redis_user,
                            "redis_password_file": conf.redis_password_file},
                   extra_args=["--node-id", "rep-1", "--zone", "z9"]) as s:
        mc = client(s)
        mc.set("hot-key", b"x")
        for _ in range(400):
            mc.get("hot-key")
        host, _, port = nodes[0].rpartition(":")
        rc = RedisCluster(startup_nodes=[ClusterNode(host, int(port))],
                          **redis_cluster.auth.client_kwargs())
        report: Any = {}
        hot: Any = []

        def reported() -> bool:
            nonlocal report, hot
            report = rc.hgetall("objmail:node:{rep-1}:report")
            hot = rc.zrevrange("objmail:node:{rep-1}:hot", 0, -1, withscores=True)
            if report and hot and float(report[b"ops_get"]) > 0:
                return True
            mc.get("hot-key")
            return False

        wait_until(reported, 20, interval=0.2, what="a load report with gets and hot keys")
        assert report[b"node_id"] == b"rep-1" and report[b"zone"] == b"z9"
        assert report[b"addr"] == s.address.encode()
        assert int(report[b"items"]) == 1 and int(report[b"used_bytes"]) > 0
        assert int(report[b"capacity_bytes"]) > 0
        assert hot and hot[0][0] == b"hot-key"
        assert 0 < rc.ttl("objmail:node:{rep-1}:report") <= 3
        mc.close()
        assert s.stop() == 0
        # A node that stops reporting disappears when its report expires.
        wait_until(lambda: not rc.exists("objmail:node:{rep-1}:report"), 10, interval=0.2,
                   what="the stopped node's report expired")
        rc.close()


def test_node_number_is_kept_in_the_data_dir(tmp_path: Path) -> None:
    """The registry number objstored learns is kept in its data dir (read back at the
    next start), 0 forgets it, and an unreadable file counts as none."""
    from objstore.main import NODE_NUMBER_FILE, keep_node_number, read_node_number

    assert read_node_number(tmp_path) == 0
    keep_node_number(tmp_path, 12)
    assert read_node_number(tmp_path) == 12
    assert (tmp_path / NODE_NUMBER_FILE).read_text() == "12\n"
    keep_node_number(tmp_path, 0)
    assert not (tmp_path / NODE_NUMBER_FILE).exists()
    (tmp_path / NODE_NUMBER_FILE).write_text("garbage")
    assert read_node_number(tmp_path) == 0

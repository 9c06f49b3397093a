"""directord with ``workers = 2``: a supervisor and two worker processes on the same port
(SO_REUSEPORT), each with its own metrics port, in front of real objstored and Redis
Cluster.

Which worker holds a connection is read off ``stats`` (its ``pid`` row), so the tests
know when two connections sit in different processes: what one stores the other reads,
a ``flush_all`` through one hides the item from the other at once (the shared cut-off),
memccapable passes, a worker killed with SIGKILL is replaced while the other keeps
serving, and SIGTERM to the supervisor stops them all.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from ops.config import parse_hostport
from ops.launcher import free_port_block
from tests.conftest import RunningRedis
from tests.director_installation import Installation, private_installation
from tests.waiting import wait_until

pytestmark = [pytest.mark.system, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def installation(redis_cluster: RunningRedis,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installation]:
    # Plain clients (memccapable cannot log in); the object servers still demand a login.
    metrics = free_port_block(2)
    with private_installation(redis_cluster, tmp_path_factory.mktemp("dworkers"),
                              stages=("objstore", "directord"), objstores=3,
                              directord_auth=False, flush_all_enabled=True, workers=2,
                              metrics_listen=f"127.0.0.1:{metrics}") as inst:
        yield inst


@pytest.fixture
def address(installation: Installation) -> tuple[str, int]:
    return parse_hostport(installation.config.director.listen)


def metrics_ports(installation: Installation) -> list[int]:
    port = parse_hostport(installation.config.director.metrics_listen)[1]
    return [port, port + 1]


def worker_pids(supervisor: int) -> set[int]:
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    return {int(pid) for pid in children}


def two_workers(supervisor: int, without: int = 0) -> set[int]:
    """The supervisor's two worker pids (none of them ``without``), or an empty set."""
    pids = worker_pids(supervisor)
    return pids if len(pids) == 2 and without not in pids else set()


def supervisor_of(installation: Installation) -> int:
    pid = installation.cluster.launcher.pid_of(installation.spec("directord"))
    assert pid is not None, "directord is not running"
    return pid


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def both_ready(installation: Installation, supervisor: int, without: int = 0) -> set[int]:
    """Two workers running, each serving its metrics (a worker's process exists before its
    ports are open); their pids."""
    pids = wait_until(lambda: two_workers(supervisor, without), timeout=30, what="two workers")
    wait_until(lambda: all(_answers(port) for port in metrics_ports(installation)),
               timeout=60, what="both workers' metrics")
    return pids


def exchange(sock: socket.socket, request: bytes, end: bytes) -> bytes:
    """Send ``request``; read until the reply ends with ``end``."""
    sock.sendall(request)
    out = b""
    while not out.endswith(end):
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {out!r}"
        out += chunk
    return out


def pid_behind(sock: socket.socket) -> int:
    """The pid of the worker serving this connection (``stats``' ``pid`` row)."""
    for line in exchange(sock, b"stats\r\n", b"END\r\n").split(b"\r\n"):
        if line.startswith(b"STAT pid "):
            return int(line.split()[2])
    raise AssertionError("stats without a pid")


@contextlib.contextmanager
def on_two_workers(address: tuple[str, int]
                   ) -> Iterator[tuple[socket.socket, socket.socket, list[socket.socket]]]:
    """Two connections that different workers serve (the kernel spreads connections), and
    every connection opened to find them."""
    socks: list[socket.socket] = []
    try:
        by_pid: dict[int, socket.socket] = {}
        while len(by_pid) < 2:
            assert len(socks) < 60, "every connection went to one worker"
            sock = socket.create_connection(address, timeout=20)
            socks.append(sock)
            by_pid.setdefault(pid_behind(sock), sock)
        first, second = by_pid.values()
        yield first, second, socks
    finally:
        for sock in socks:
            sock.close()


def open_connections(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    found = re.search(r"^directord_open_connections (\S+)$", text, re.M)
    assert found, "no directord_open_connections"
    return int(float(found.group(1)))


def gone(pid: int) -> bool:
    """The process has exited (a zombie waiting for its parent counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_two_workers_share_the_port_and_serve_each_others_items(
        installation: Installation, address: tuple[str, int]) -> None:
    """Two workers accept on one port; an item set through a connection one serves is
    read, replaced and deleted through a connection the other serves."""
    pids = both_ready(installation, supervisor_of(installation))
    key = f"across-{os.urandom(4).hex()}".encode()
    with on_two_workers(address) as (one, other, _):
        assert {pid_behind(one), pid_behind(other)} == pids
        assert exchange(one, b"set %s 3 0 5\r\nhello\r\n" % key, b"\r\n") == b"STORED\r\n"
        assert exchange(other, b"gets %s\r\n" % key, b"END\r\n").startswith(
            b"VALUE %s 3 5 " % key)
        assert exchange(other, b"append %s 0 0 1\r\n!\r\n" % key, b"\r\n") == b"STORED\r\n"
        assert exchange(one, b"get %s\r\n" % key, b"END\r\n") == (
            b"VALUE %s 3 6\r\nhello!\r\nEND\r\n" % key)
        assert exchange(one, b"delete %s\r\n" % key, b"\r\n") == b"DELETED\r\n"
        assert exchange(other, b"get %s\r\n" % key, b"END\r\n") == b"END\r\n"


def test_flush_all_through_one_worker_hides_items_from_the_other_at_once(
        installation: Installation, address: tuple[str, int]) -> None:
    """A ``flush_all`` taken by one worker hides, on the very next read through the other
    worker, an item that worker read a moment before (no wait for the registry refresh,
    which is how other directords learn of it)."""
    both_ready(installation, supervisor_of(installation))
    key = f"flushed-{os.urandom(4).hex()}".encode()
    with on_two_workers(address) as (one, other, _):
        assert exchange(one, b"set %s 0 0 1\r\nx\r\n" % key, b"\r\n") == b"STORED\r\n"
        assert exchange(other, b"get %s\r\n" % key, b"END\r\n") == (
            b"VALUE %s 0 1\r\nx\r\nEND\r\n" % key)
        assert exchange(one, b"flush_all\r\n", b"\r\n") == b"OK\r\n"
        assert exchange(other, b"get %s\r\n" % key, b"END\r\n") == b"END\r\n"
        # Written after the cut-off: visible through both.
        assert exchange(other, b"set %s 0 0 1\r\ny\r\n" % key, b"\r\n") == b"STORED\r\n"
        assert exchange(one, b"get %s\r\n" % key, b"END\r\n") == (
            b"VALUE %s 0 1\r\ny\r\nEND\r\n" % key)


def test_each_worker_serves_its_own_metrics(installation: Installation,
                                            address: tuple[str, int]) -> None:
    """Worker i serves its own process's metrics on metrics_listen's port + i: with
    connections held on both workers, each port counts some and together they count
    them all."""
    both_ready(installation, supervisor_of(installation))
    ports = metrics_ports(installation)
    with on_two_workers(address) as (_one, _other, socks):
        def adding_up() -> list[int] | None:
            counts = [open_connections(port) for port in ports]
            return counts if sum(counts) == len(socks) else None

        counts = wait_until(adding_up, timeout=20,
                            what="the workers' open connections adding up to the test's")
        assert counts is not None and all(counts), counts


def test_memccapable_passes_through_two_workers(installation: Installation,
                                                address: tuple[str, int]) -> None:
    """libmemcached's conformance checker passes all 27 ascii tests against a directord
    of two workers."""
    both_ready(installation, supervisor_of(installation))
    exe = shutil.which("memccapable")
    assert exe, "memccapable (Debian libmemcached-tools) is required"
    proc = subprocess.run([exe, "-a", "-h", address[0], "-p", str(address[1]), "-t", "10"],
                          capture_output=True, timeout=180)
    out = proc.stdout.decode() + proc.stderr.decode()
    assert proc.returncode == 0, out
    assert "[FAIL]" not in out and out.count("[pass]") == 27, out


def test_a_killed_worker_is_replaced_and_sigterm_stops_all(
        installation: Installation, address: tuple[str, int]) -> None:
    """A worker killed with SIGKILL is replaced (same index: both metrics ports answer
    again) while the other serves; SIGTERM to the supervisor stops every worker."""
    supervisor = supervisor_of(installation)
    before = both_ready(installation, supervisor)
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    after = both_ready(installation, supervisor, without=victim)
    assert len(after & before) == 1
    key = f"after-kill-{os.urandom(4).hex()}".encode()
    with on_two_workers(address) as (one, other, _):
        assert {pid_behind(one), pid_behind(other)} == after
        assert exchange(one, b"set %s 0 0 2\r\nok\r\n" % key, b"\r\n") == b"STORED\r\n"
        assert exchange(other, b"get %s\r\n" % key, b"END\r\n") == (
            b"VALUE %s 0 2\r\nok\r\nEND\r\n" % key)
    os.kill(supervisor, signal.SIGTERM)  # the supervisor alone: it stops its workers
    wait_until(lambda: all(gone(pid) for pid in {supervisor, *after}), timeout=30,
               what="the supervisor and every worker gone after SIGTERM")
    installation.cluster.launcher.stop(installation.spec("directord"))  # reaps it

"""imapd with ``workers = 2``: a supervisor and two worker processes on the same ports
(SO_REUSEPORT), each with its own metrics port.

Which worker holds a connection is read off the workers' ``imapd_open_connections``
gauges, one connection at a time, so the tests know when two sessions sit in different
processes: a message appended through one reaches the other's IDLE (the change feed
crosses processes), a worker killed with SIGKILL is replaced while the other keeps
serving, and SIGTERM to the supervisor stops them all.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from imapclient import IMAPClient

from ops.launcher import free_port_block
from tests.conftest import SessionCluster
from tests.imapd_process import Imapd, Mail, self_signed, start_imapd
from tests.waiting import wait_until

pytestmark = [pytest.mark.system, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def mail(test_cluster: SessionCluster, storage_cluster: object) -> Mail:
    return Mail(test_cluster.config)


@pytest.fixture(scope="module")
def imapd(test_cluster: SessionCluster, storage_cluster: object,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Imapd, list[int]]]:
    metrics = free_port_block(2)
    server = start_imapd(test_cluster, "imapd-workers", self_signed(tmp_path_factory.mktemp("tls")),
                         workers=2, metrics_listen=f"127.0.0.1:{metrics}")
    try:
        yield server, [metrics, metrics + 1]
    finally:
        server.stop()


def open_connections(metrics_port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    found = re.search(r'^imapd_open_connections\{listener="imap"\} (\S+)$', text, re.M)
    return int(float(found.group(1))) if found else 0


def worker_pids(supervisor: int) -> set[int]:
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    return {int(pid) for pid in children}


def two_workers(supervisor: int, without: int = 0) -> set[int]:
    """The supervisor's two worker pids (none of them ``without``), or an empty set."""
    pids = worker_pids(supervisor)
    return pids if len(pids) == 2 and without not in pids else set()


def connect_on(imapd: Imapd, metrics: list[int], user: str, counts: list[int]
               ) -> tuple[IMAPClient, int]:
    """A logged-in client and the index of the worker that took it."""
    client = IMAPClient("127.0.0.1", port=imapd.imap_port, ssl=False, timeout=10)
    client.login(user, "secret")

    def moved() -> int:
        now = [open_connections(port) for port in metrics]
        changed = [i for i in range(len(now)) if now[i] > counts[i]]
        if changed:
            counts[:] = now
            return changed[0] + 1
        return 0

    return client, wait_until(moved, timeout=10, what="a worker counting the connection") - 1


def test_two_workers_share_the_port_and_see_each_others_changes(
        imapd: tuple[Imapd, list[int]], mail: Mail) -> None:
    server, metrics = imapd
    supervisor = server.launcher.pid_of(server.spec)
    assert supervisor is not None
    wait_until(lambda: two_workers(supervisor), timeout=20, what="two workers")
    # A worker's process exists before its metrics port is bound: wait for both.
    wait_until(lambda: all(_answers(port) for port in metrics), timeout=30,
               what="both workers' metrics")
    user = f"workers{os.getpid()}"
    mail.create_user(user)
    counts = [open_connections(port) for port in metrics]
    clients: list[tuple[IMAPClient, int]] = []
    try:
        while len({worker for _, worker in clients}) < 2:
            assert len(clients) < 40, "every connection went to one worker"
            clients.append(connect_on(server, metrics, user, counts))
        watcher = next(c for c, worker in clients if worker == 0)
        writer = next(c for c, worker in clients if worker == 1)
        watcher.select_folder("INBOX")
        watcher.idle()
        writer.append("INBOX", b"From: a@example.org\r\nSubject: across\r\n\r\nhello\r\n")
        seen: list[object] = []

        def exists() -> bool:
            seen.extend(watcher.idle_check(timeout=1))
            return any(isinstance(r, tuple) and r[1] == b"EXISTS" for r in seen)

        wait_until(exists, timeout=20, what="EXISTS in the other worker's IDLE")
        watcher.idle_done()
    finally:
        for client, _ in clients:
            with contextlib.suppress(OSError, IMAPClient.Error):
                client.logout()


def test_a_killed_worker_is_replaced_and_sigterm_stops_all(
        imapd: tuple[Imapd, list[int]], mail: Mail) -> None:
    server, metrics = imapd
    supervisor = server.launcher.pid_of(server.spec)
    assert supervisor is not None
    before = wait_until(lambda: two_workers(supervisor), timeout=20, what="two workers")
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    after = wait_until(lambda: two_workers(supervisor, without=victim), timeout=30,
                       what="the killed worker replaced")
    assert len(after & before) == 1
    # Both metrics ports answer again: the replacement took the dead worker's index.
    wait_until(lambda: all(_answers(port) for port in metrics), timeout=30,
               what="both workers' metrics")
    user = f"workerskill{os.getpid()}"
    mail.create_user(user)
    for _ in range(6):
        with IMAPClient("127.0.0.1", port=server.imap_port, ssl=False, timeout=10) as client:
            client.login(user, "secret")
            assert client.select_folder("INBOX")[b"EXISTS"] == 0
    server.stop()
    wait_until(lambda: all(not Path(f"/proc/{pid}").exists() for pid in after), timeout=20,
               what="every worker gone after SIGTERM")


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False

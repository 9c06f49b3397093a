"""directord under pipelining, against a real directord in front of real objstored and
Redis Cluster: a connection's commands take effect in the order sent, and what a client
pipelines without reading costs directord bounded memory.

Raw sockets, because the point is what arrives in one segment: each ordering case is
sent as one pipeline, 50 times.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from ops.config import parse_hostport
from tests.director_installation import Installation, installation_fixture

pytestmark = pytest.mark.system

TRIES = 50
MIB = 1 << 20

# Ordering and memory, not the login (tests/test_objstore_security.py covers that): this
# directord serves without one, as tests/test_director_proxy_protocol.py's does.
installation = installation_fixture("pipeline", stages=("objstore", "directord"),
                                    objstores=3, timeout=2.0, directord_auth=False)


@pytest.fixture
def address(installation: Installation) -> tuple[str, int]:
    return parse_hostport(installation.config.director.listen)


def pipeline(sock: socket.socket, request: bytes, lines: int) -> list[bytes]:
    """Send ``request`` in one write; read ``lines`` reply lines (values included)."""
    sock.sendall(request)
    out = b""
    while out.count(b"\r\n") < lines:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {out!r}"
        out += chunk
    return out.split(b"\r\n")[:lines]


@pytest.mark.parametrize(("setup", "request_", "expected"), [
    (b"", b"set {k} 0 0 2\r\nv1\r\ndelete {k}\r\nset {k} 0 0 2\r\nv2\r\ndelete {k}\r\n"
          b"get {k}\r\n",
     [b"STORED", b"DELETED", b"STORED", b"DELETED", b"END"]),
    (b"set {k} 0 0 1\r\nx\r\n", b"delete {k}\r\nadd {k} 0 0 1\r\ny\r\nget {k}\r\n",
     [b"DELETED", b"STORED", b"VALUE {k} 0 1", b"y", b"END"]),
    (b"", b"set {k} 0 0 1\r\nx\r\ntouch {k} 100\r\n", [b"STORED", b"TOUCHED"]),
    (b"", b"ms {k} 2\r\nv1\r\nmd {k} q\r\nmn\r\nmg {k} v\r\n", [b"HD", b"MN", b"EN"]),
    (b"", b"set {k} 0 0 2\r\nv1\r\nget {k}\r\nset {k} 0 0 2\r\nv2\r\nget {k}\r\n",
     [b"STORED", b"VALUE {k} 0 2", b"v1", b"END", b"STORED", b"VALUE {k} 0 2", b"v2",
      b"END"]),
], ids=["set-delete-set-delete", "delete-add", "set-touch", "ms-md-q", "set-get-set-get"])
def test_pipelined_commands_take_effect_in_order(address: tuple[str, int], setup: bytes,
                                                 request_: bytes, expected: list[bytes]
                                                 ) -> None:
    """Commands pipelined on one connection take effect in the order sent, 50 times of
    50: each write sees the ones before it, and reads see every earlier write."""
    with socket.create_connection(address, timeout=20) as sock:
        for i in range(TRIES):
            key = f"order-{os.urandom(4).hex()}-{i}".encode()
            if setup:
                pipeline(sock, setup.replace(b"{k}", key), 1)
            want = [line.replace(b"{k}", key) for line in expected]
            assert pipeline(sock, request_.replace(b"{k}", key), len(want)) == want, i


def rss_bytes(pid: int) -> int:
    """The process's resident set size."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def test_unread_pipelined_gets_of_a_big_item_cost_bounded_memory(
        installation: Installation, address: tuple[str, int]) -> None:
    """Three connections each pipelining 1,500 gets of a 1 MB item without reading keep
    directord's RSS within a bound (what max_reply_buffer and max_pipeline allow, not the
    4.5 GB asked for); after they close it returns near where it was, no reply future is
    left with an exception nobody retrieved, and no object server looked dead meanwhile."""
    launcher = installation.cluster.launcher
    pid = launcher.pid_of(installation.spec("directord"))
    assert pid is not None
    big = os.urandom(1_000_000)
    with socket.create_connection(address, timeout=20) as sock:
        assert pipeline(sock, b"set big 0 0 %d\r\n%s\r\n" % (len(big), big), 1) == [b"STORED"]
        sock.sendall(b"get big\r\n")
        got = b""
        while not got.endswith(b"END\r\n"):
            got += sock.recv(1 << 20)
        assert big in got
    time.sleep(1.0)
    baseline = rss_bytes(pid)
    hogs = []
    for _ in range(3):
        hog = socket.create_connection(address, timeout=20)
        hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        hog.sendall(b"get big\r\n" * 1500)
        hogs.append(hog)
    peak = baseline
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        peak = max(peak, rss_bytes(pid))
        time.sleep(0.2)
    # Meanwhile directord serves others.
    with socket.create_connection(address, timeout=20) as sock:
        assert pipeline(sock, b"version\r\n", 1)[0].startswith(b"VERSION ")
    for hog in hogs:
        hog.close()
    deadline = time.monotonic() + 30
    after = rss_bytes(pid)
    while after > baseline + 32 * MIB and time.monotonic() < deadline:
        time.sleep(0.5)
        after = rss_bytes(pid)
    log = launcher.logfile("directord").read_text(errors="replace")
    print(f"directord RSS: baseline {baseline / MIB:.0f} MiB, peak {peak / MIB:.0f} MiB, "
          f"after close {after / MIB:.0f} MiB")
    assert peak - baseline < 200 * MIB
    assert after - baseline < 32 * MIB
    assert "never retrieved" not in log
    assert "is suspect" not in log  # object servers kept answering in time

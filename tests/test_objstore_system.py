"""System tests against a real objstored process: pymemcache, raw sockets, libmemcached's
memccapable, interop with real memcached, durability across kill -9, on-disk corruption."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pymemcache.client.base import Client
from pymemcache.exceptions import (
    MemcacheClientError,
    MemcacheServerError,
    MemcacheUnknownCommandError,
)

from tests.objstore_process import Objstored, free_port, objstored

pytestmark = pytest.mark.system

MIB = 1024 * 1024
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Objstored]:
    with objstored(tmp_path_factory.mktemp("objstored"), flush_all_enabled=True) as s:
        yield s


@pytest.fixture
def mc(server: Objstored) -> Iterator[Client]:
    client = Client((server.host, server.port), timeout=10, connect_timeout=5,
                    default_noreply=False)
    yield client
    client.close()


def send(sock: socket.socket, data: bytes, expect_end: bytes, timeout: float = 5.0) -> bytes:
    """Send and read until the reply ends with ``expect_end``."""
    sock.sendall(data)
    out = b""
    deadline = time.monotonic() + timeout
    while not out.endswith(expect_end):
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        chunk = sock.recv(1 << 20)
        if not chunk:
            break
        out += chunk
    return out


# -- pymemcache -------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 100, 4096, 65536, 1000_000, MIB])
def test_pymemcache_values_up_to_max_item_size(mc: Client, size: int) -> None:
    """Binary values from 0 bytes to exactly the max item size round-trip."""
    value = random.Random(size).randbytes(size)
    assert mc.set(f"size-{size}", value) is True
    assert mc.get(f"size-{size}") == value


def test_pymemcache_over_max_item_size(mc: Client) -> None:
    """A value one byte over the limit is refused with memcached's error."""
    with pytest.raises(MemcacheServerError, match="object too large"):
        mc.set("too-big", b"x" * (MIB + 1))
    assert mc.get("too-big") is None


def test_pymemcache_many_keys(mc: Client) -> None:
    """A thousand keys go in with set_many and come back with get_many."""
    items = {f"many-{i}": hashlib.sha256(b"%d" % i).digest() * (i % 5) for i in range(1000)}
    assert mc.set_many(items) == []
    assert mc.get_many(list(items)) == {k: v for k, v in items.items()}
    assert mc.delete_many(list(items)[:500]) is True
    assert len(mc.get_many(list(items))) == 500


def test_pymemcache_every_command(mc: Client) -> None:
    """Every command pymemcache has behaves as memcached's does."""
    assert mc.version().startswith(b"1.6")
    assert mc.add("c1", b"a") is True and mc.add("c1", b"b") is False
    assert mc.replace("c1", b"r") is True and mc.replace("nope", b"r") is False
    assert mc.append("c1", b">") is True and mc.prepend("c1", b"<") is True
    assert mc.get("c1") == b"<r>"
    value, cas = mc.gets("c1")
    assert value == b"<r>"
    assert mc.cas("c1", b"new", cas) is True
    assert mc.cas("c1", b"newer", cas) is False
    assert mc.cas("c-missing", b"x", b"1") is None
    got = mc.gets_many(["c1", "c-missing"])
    assert list(got) == ["c1"] and got["c1"][0] == b"new"
    assert mc.set("n", b"10") is True
    assert mc.incr("n", 5) == 15 and mc.decr("n", 20) == 0
    assert mc.incr("n-missing", 1) is None
    assert mc.touch("n", 100) is True and mc.touch("n-missing", 100) is False
    assert mc.delete("n") is True and mc.delete("n") is False
    stats = mc.stats()
    assert stats[b"curr_items"] >= 1 and b"lmdb_map_size" in stats
    assert b"item_size_max" in mc.stats("settings")
    assert mc.raw_command(b"mn", b"\r\n") == b"MN"
    with pytest.raises(MemcacheUnknownCommandError):
        mc.cache_memlimit(100)
    with pytest.raises(MemcacheUnknownCommandError):
        mc.shutdown()
    with pytest.raises(MemcacheClientError):
        mc.set("bad key", b"x")  # pymemcache refuses it before sending


def test_pymemcache_noreply(mc: Client) -> None:
    """noreply writes take effect, and a get on the same connection sees them."""
    for i in range(50):
        mc.set(f"nr-{i}", b"v%d" % i, noreply=True)
    mc.delete("nr-0", noreply=True)
    mc.incr("nr-missing", 1, noreply=True)
    assert mc.get_many([f"nr-{i}" for i in range(50)]) == {
        f"nr-{i}": b"v%d" % i for i in range(1, 50)}


def test_pymemcache_flush_all_and_quit(mc: Client, server: Objstored) -> None:
    """flush_all (enabled in this server's config) empties it; quit ends the session."""
    mc.set("f", b"x")
    assert mc.flush_all() is True
    assert mc.get("f") is None
    mc.quit()
    assert mc.get("f") is None  # pymemcache reconnects


# -- raw sockets ------------------------------------------------------------------------

ERRORS = [
    (b"bogus\r\n", b"ERROR\r\n"),
    (b"get\r\n", b"ERROR\r\n"),
    (b"set k 0 0 -1\r\n", b"CLIENT_ERROR bad command line format\r\n"),
    (b"get " + b"k" * 251 + b"\r\n", b"CLIENT_ERROR bad command line format\r\n"),
    (b"set k 0 0 1\r\nxyz\r\n", b"CLIENT_ERROR bad data chunk\r\nERROR\r\n"),
    (b"incr k x\r\n", b"CLIENT_ERROR invalid numeric delta argument\r\n"),
    (b"touch k x\r\n", b"CLIENT_ERROR invalid exptime argument\r\n"),
    (b"delete k 5\r\n",
     b"CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\n"),
    (b"set big 0 0 2000000\r\n" + b"x" * 2_000_000 + b"\r\n",
     b"SERVER_ERROR object too large for cache\r\n"),
    (b"set t 0 0 1\r\nx\r\nincr t 1\r\n",
     b"STORED\r\nCLIENT_ERROR cannot increment or decrement non-numeric value\r\n"),
    (b"mg k zz\r\n", b"CLIENT_ERROR invalid flag\r\n"),
    (b"mg !!! b\r\n", b"CLIENT_ERROR error decoding key\r\n"),
    (b"ms k 2 MZ\r\nhi\r\n", b"CLIENT_ERROR invalid mode for ms M token\r\n"),
    (b"lru_crawler metadump x\r\n", b"BADCLASS invalid class id\r\n"),
]


@pytest.mark.parametrize(("request_bytes", "reply"), ERRORS,
                         ids=[repr(r[:24]) for r, _ in ERRORS])
def test_raw_error_replies(server: Objstored, request_bytes: bytes, reply: bytes) -> None:
    """Each malformed request gets memcached's exact error and the connection goes on."""
    with server.connect() as sock:
        assert send(sock, request_bytes, reply) == reply
        assert send(sock, b"mn\r\n", b"MN\r\n") == b"MN\r\n"


def test_raw_line_too_long_closes(server: Objstored) -> None:
    """A command line without end past max_line is answered and the connection closed."""
    with server.connect() as sock:
        sock.sendall(b"touch " + b"a" * 20000)
        out = b""
        while chunk := sock.recv(1000):
            out += chunk
        assert out == b"CLIENT_ERROR line too long\r\n"


PIPELINE = (b"set p1 0 0 5\r\nhello\r\nget p1 p2\r\nmg p1 v f\r\nincr pn 1\r\n"
            b"bogus\r\nms p2 2 T0\r\nhi\r\nget p2\r\ndelete p1 noreply\r\ndelete p2 noreply\r\n"
            b"delete pn noreply\r\nmn\r\n")
PIPELINE_REPLY = (b"STORED\r\nVALUE p1 0 5\r\nhello\r\nEND\r\nVA 5 f0\r\nhello\r\n"
                  b"NOT_FOUND\r\nERROR\r\nHD\r\nVALUE p2 0 2\r\nhi\r\nEND\r\nMN\r\n")


def test_raw_pipeline_split_at_every_byte(server: Objstored) -> None:
    """A pipeline split in two TCP segments at any byte gives the same replies."""
    for cut in range(1, len(PIPELINE)):
        with server.connect() as sock:
            sock.sendall(PIPELINE[:cut])
            time.sleep(0.002)
            assert send(sock, PIPELINE[cut:], b"MN\r\n") == PIPELINE_REPLY, cut


def test_raw_metadump_lists_keys(server: Objstored) -> None:
    """lru_crawler metadump all lists stored keys with their expiry, CAS and size."""
    with server.connect() as sock:
        send(sock, b"set dump%key 0 1000 3\r\nabc\r\n", b"STORED\r\n")
        out = send(sock, b"lru_crawler metadump all\r\n", b"END\r\n", timeout=30)
    line = next(ln for ln in out.split(b"\n") if ln.startswith(b"key=dump%25key "))
    fields = dict(f.split(b"=") for f in line.split(b" "))
    assert int(fields[b"exp"]) > time.time() + 900
    assert fields[b"size"] == b"%d" % (8 + 32 + 3)


# -- conformance and interop --------------------------------------------------------------


def test_memccapable_ascii(server: Objstored) -> None:
    """libmemcached's conformance checker passes every ascii test."""
    exe = shutil.which("memccapable")
    assert exe, "memccapable (Debian libmemcached-tools) is required"
    proc = subprocess.run([exe, "-a", "-h", server.host, "-p", str(server.port), "-t", "10"],
                          capture_output=True, timeout=120)
    out = proc.stdout.decode() + proc.stderr.decode()
    assert proc.returncode == 0, out
    assert "All tests passed" in out and "[FAIL]" not in out


INTEROP_SCRIPT = [
    b"set a 5 0 2\r\nhi\r\n", b"get a b\r\n", b"add a 0 0 1\r\nx\r\n",
    b"append a 0 0 1\r\n!\r\n", b"prepend a 0 0 1\r\n<\r\n", b"get a\r\n",
    b"replace zz 0 0 1\r\nx\r\n", b"delete a\r\n", b"delete a\r\n",
    b"set n 0 0 2\r\n99\r\n", b"incr n 1\r\n", b"decr n 1000\r\n", b"get n\r\n",
    b"touch n 100\r\n", b"touch zz 100\r\n", b"gat 100 n\r\n", b"verbosity 1\r\n",
    b"set x 0 0 1 noreply\r\nx\r\n", b"get x\r\n", b"set k 0 0 1\r\nabc\r\n",
    b"bogus\r\n", b"incr n x\r\n", b"mn\r\n", b"ms m 2 F3 T0\r\nhi\r\n", b"mg m v f t s k\r\n",
    b"mg zz v\r\n", b"mg zz v q\r\nmn\r\n", b"md m q\r\nmn\r\n", b"md m\r\n",
    b"ma c N0 J13 v\r\n", b"ma c v\r\n", b"ma c MD D100 v\r\n", b"ms m 2 MA\r\nhi\r\n",
    b"mg m O77 k\r\n", b"set e 0 -1 1\r\nx\r\n", b"get e\r\n",
    # Issue 15: duplicate flags, c0 on a set that did not happen, md's c, h (fetched).
    b"mg m v v\r\n", b"ms m 2 T1 T2\r\nxx\r\n", b"md m q q\r\n", b"ma m N0 N0\r\n",
    b"ms m 2 c C999\r\nyy\r\n", b"ms zz 2 c C999 k\r\nyy\r\n", b"md m C999 c\r\n",
    b"ms h 1 T0\r\nx\r\n", b"mg h h\r\n", b"mg h h v\r\n", b"set h 0 0 1\r\ny\r\n",
    b"mg h h\r\n", b"stats detail on\r\n", b"stats detail dump\r\n",
    b"stats detail off\r\n", b"stats detail\r\n", b"stats sizes\r\n",
    b"slabs automove 1\r\n", b"slabs automove 0\r\n", b"ms t1 2 T-1\r\nxx\r\n",
    b"mg t1 t v\r\n", b"get / HTTP/1.0\r\n",
]


def _script_replies(port: int) -> list[bytes]:
    """Each request's replies.  A meta no-op follows every request: both servers answer
    ``MN`` after everything sent before it, so a request's replies end at its ``MN``
    (or where the server closes the connection), however slowly a loaded machine
    answers; no quiet period is taken for the end of a reply."""
    out = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        for request in INTEROP_SCRIPT:
            sock.sendall(request + b"mn\r\n")
            expected = request.count(b"mn\r\n") + 1
            got = b""
            while got.count(b"MN\r\n") < expected:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                got += chunk
            out.append(got[:-len(b"MN\r\n")] if got.endswith(b"MN\r\n") else got)
    return out


def test_same_script_as_real_memcached(tmp_path: Path) -> None:
    """A script of classic and meta commands gets the same replies from objstored as from
    Debian's memcached 1.6."""
    exe = shutil.which("memcached") or "/usr/bin/memcached"
    assert os.path.exists(exe), "memcached is required for the interop test"
    port = free_port()
    args = [exe, "-p", str(port), "-U", "0", "-l", "127.0.0.1", "-t", "1", "-m", "64"]
    if os.geteuid() == 0:
        args += ["-u", "root"]
    mcd = subprocess.Popen(args)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        theirs = _script_replies(port)
    finally:
        mcd.terminate()
        mcd.wait(10)
    with objstored(tmp_path) as s:
        ours = _script_replies(s.port)
    assert ours == theirs


@pytest.mark.parametrize("line", [b"GET / HTTP/1.0\r\n\r\n", b"PUT /x HTTP/1.1\r\n",
                                  b"DELETE /k HTTP/1.1\r\n"])
def test_http_request_is_closed_without_a_word(server: Objstored, line: bytes) -> None:
    """An HTTP request sent to objstored is not answered; the connection closes, as
    memcached closes it."""
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        sock.sendall(line)
        assert sock.recv(1024) == b""


def test_binary_protocol_is_answered_and_closed(server: Objstored) -> None:
    """A binary-protocol request (magic 0x80) is answered ERROR at once and the connection
    closes (issue 15: it used to hang unanswered)."""
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        started = time.monotonic()
        sock.sendall(b"\x80\x0a" + b"\x00" * 22)
        got = b""
        while chunk := sock.recv(1024):
            got += chunk
        assert got == b"ERROR\r\n"
        assert time.monotonic() - started < 2


def test_slow_reader_that_keeps_reading_is_served(tmp_path: Path) -> None:
    """A client reading its pipelined replies slowly but steadily gets all of them, even
    though its replies wait longer than slow_reader_timeout; one that stops reading is cut
    off."""
    value = os.urandom(10_000)
    with objstored(tmp_path, slow_reader_timeout=0.5) as s:
        with socket.create_connection((s.host, s.port), timeout=10) as sock:
            assert send(sock, b"set v 0 0 %d\r\n%s\r\n" % (len(value), value),
                        b"\r\n") == b"STORED\r\n"
        count = 1000
        reply = b"VALUE v 0 %d\r\n%s\r\nEND\r\n" % (len(value), value)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as slow:
            slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
            slow.connect((s.host, s.port))
            slow.sendall(b"get v\r\n" * count)
            got = 0
            slow.settimeout(10)
            while got < len(reply) * count:
                chunk = slow.recv(32 * 1024)
                assert chunk, f"cut off after {got // len(reply)} of {count} replies"
                got += len(chunk)
                time.sleep(0.01)  # about 3 MB/s: replies wait seconds in objstored
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as stuck:
            stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
            stuck.connect((s.host, s.port))
            stuck.sendall(b"get v\r\n" * count)
            time.sleep(3)
            stuck.settimeout(10)
            with pytest.raises(ConnectionResetError):
                while stuck.recv(1 << 20):
                    pass


# -- durability and corruption ------------------------------------------------------------

WRITER = r"""
import hashlib, sys, threading
from pymemcache.client.base import Client
port, prefix, out_path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
depth = int(sys.argv[4]) if len(sys.argv) > 4 else 1
lock = threading.Lock()
out = open(out_path, "a", buffering=1)

def value(key):
    seed = hashlib.sha256(key.encode()).digest()
    return seed * (seed[0] * 8 % 2048 + 1)

def run(t):
    c = Client(("127.0.0.1", port), timeout=5, connect_timeout=2)
    i = 0
    while True:
        keys = [f"{prefix}-{t}-{i + j}" for j in range(depth)]
        try:
            # set_many sends the sets pipelined and returns the keys not stored.
            failed = c.set_many({k: value(k) for k in keys}, noreply=False)
        except Exception:
            return
        with lock:
            out.writelines(k + "\n" for k in keys if k not in failed)
        i += depth

threads = [threading.Thread(target=run, args=(t,)) for t in range(8)]
for th in threads: th.start()
for th in threads: th.join()
"""


def _value(key: str) -> bytes:
    seed = hashlib.sha256(key.encode()).digest()
    return seed * (seed[0] * 8 % 2048 + 1)


@pytest.mark.parametrize(("workers", "depth"), [(1, 1), (2, 16)])
def test_acknowledged_writes_survive_kill_9(tmp_path: Path, workers: int, depth: int) -> None:
    """Every set acknowledged STORED before a kill -9 reads back byte-identical after a
    restart on the same data: one set at a time, and pipelined over two workers whose
    commits make each other's batches durable (group commit across processes)."""
    acked = tmp_path / "acked.txt"
    with objstored(tmp_path / "srv", workers=workers) as s:
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(s.port), "dur",
                                   str(acked), str(depth)], cwd=REPO)
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                time.sleep(0.2)
                if acked.exists() and acked.read_text().count("\n") >= 2000:
                    break
            s.kill()
            writer.wait(30)
        finally:
            writer.kill()
        keys = [k for k in acked.read_text().splitlines() if k]
        assert len(keys) >= 1000
        s.start()
        client = Client(("127.0.0.1", s.port), timeout=10)
        for i in range(0, len(keys), 200):
            chunk = keys[i:i + 200]
            got = client.get_many(chunk)
            missing = [k for k in chunk if got.get(k) != _value(k)]
            assert not missing, f"{len(missing)} acknowledged keys lost, e.g. {missing[:3]}"
        client.close()


def test_on_disk_corruption_is_not_served(tmp_path: Path) -> None:
    """A byte flipped in the LMDB file of a stopped server makes that key a miss, counted
    in stats, while other keys still read."""
    with objstored(tmp_path) as s:
        mc = Client(("127.0.0.1", s.port), timeout=10, default_noreply=False)
        marker = b"MARK" * 5000
        mc.set("victim", marker)
        mc.set("bystander", b"fine" * 1000)
        mc.close()
        assert s.stop() == 0
        path = s.data_dir / "lmdb" / "data.mdb"
        data = bytearray(path.read_bytes())
        at = data.find(marker)
        while at >= 0:
            data[at + 1000] ^= 0x01
            at = data.find(marker, at + 1)
        path.write_bytes(bytes(data))
        s.start()
        mc = Client(("127.0.0.1", s.port), timeout=10, default_noreply=False)
        assert mc.get("victim") is None
        assert mc.get("bystander") == b"fine" * 1000
        stats = mc.stats()
        assert stats[b"corrupt_reads"] == 1
        deadline = time.monotonic() + 5  # the quarantine move is an asynchronous write
        while mc.stats()[b"quarantined_items"] != 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert mc.stats()[b"quarantined_items"] == 1
        mc.close()

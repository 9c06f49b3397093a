"""directord speaks memcached's whole text protocol for plain items: libmemcached's
conformance checker, the same script as real memcached 1.6, cas and incr kept right across
replicas, failover and two directords, flush_all and stats.

The module runs a private installation with ``flush_all_enabled`` (three object servers,
one directord; a second directord is started where a test needs two).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from pymemcache.client.base import Client
from pymemcache.exceptions import MemcacheServerError

from director.client import REGISTRY_REFRESH, BlobClient
from director.keys import item_index_id
from ops.config import parse_hostport
from ops.launcher import free_port, free_port_block
from runtime.config import to_toml
from tests.director_installation import Installation, installation_fixture, with_client

pytestmark = pytest.mark.system

# directord without a login (its object servers still demand one): memccapable and the
# memcached interop script speak the protocol as plain clients, who cannot log in.
installation = installation_fixture("protocol", stages=("objstore", "directord"),
                                    objstores=3, timeout=2.0, flush_all_enabled=True,
                                    directord_auth=False)


@pytest.fixture
def address(installation: Installation) -> tuple[str, int]:
    return parse_hostport(installation.config.director.listen)


@pytest.fixture(scope="module")
def second_directord(installation: Installation,
                     tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """Another directord in front of the same object servers and index."""
    base = free_port_block(2)
    config = dataclasses.replace(installation.config, director=dataclasses.replace(
        installation.config.director, listen=f"127.0.0.1:{base}",
        metrics_listen=f"127.0.0.1:{base + 1}"))
    path = tmp_path_factory.mktemp("second") / "directord.toml"
    path.write_text(to_toml(config))
    spec = dataclasses.replace(installation.cluster.directord_spec(
        "127.0.0.1", base, name="directord-2", config_path=path), ports=(base, base + 1))
    installation.cluster.launcher.start(spec)
    try:
        yield ("127.0.0.1", base)
    finally:
        installation.cluster.launcher.stop(spec)


def client(address: tuple[str, int]) -> Client:
    return Client(address, timeout=10, connect_timeout=5, default_noreply=False)


def unique(name: str) -> str:
    return f"{name}-{os.urandom(4).hex()}"


# -- conformance ---------------------------------------------------------------------------


def test_memccapable_passes_every_ascii_test(address: tuple[str, int]) -> None:
    """libmemcached's conformance checker passes all 27 ascii tests through directord
    (13 did before it spoke the whole protocol)."""
    exe = shutil.which("memccapable")
    assert exe, "memccapable (Debian libmemcached-tools) is required"
    proc = subprocess.run([exe, "-a", "-h", address[0], "-p", str(address[1]), "-t", "10"],
                          capture_output=True, timeout=180)
    out = proc.stdout.decode() + proc.stderr.decode()
    assert proc.returncode == 0, out
    assert "All tests passed" in out and "[FAIL]" not in out
    assert out.count("[pass]") == 27, out


#: Classic and meta commands whose replies must equal memcached 1.6's (``{p}`` is a
#: per-run key prefix; cas uniques are compared as "some cas").
SCRIPT = [
    b"set {p}a 5 0 2\r\nhi\r\n", b"gets {p}a\r\n", b"cas {p}a 0 0 1 99999999\r\nx\r\n",
    b"cas {p}zz 0 0 1 1\r\nx\r\n", b"append {p}a 0 0 1\r\n!\r\n",
    b"prepend {p}a 0 0 1\r\n<\r\n", b"get {p}a\r\n", b"replace {p}zz 0 0 1\r\nx\r\n",
    b"replace {p}a 7 0 1\r\nr\r\n", b"get {p}a\r\n", b"append {p}zz 0 0 1\r\nx\r\n",
    b"add {p}a 0 0 1\r\nx\r\n", b"add {p}b 3 0 1\r\nb\r\n", b"get {p}a {p}b {p}a\r\n",
    b"append {p}b 0 0 1 noreply\r\n+\r\n", b"get {p}b\r\n",
    b"set {p}n 0 0 2\r\n99\r\n", b"incr {p}n 1\r\n", b"decr {p}n 1000\r\n", b"get {p}n\r\n",
    b"incr {p}n 18446744073709551615\r\n", b"incr {p}none 1\r\n", b"decr {p}none 1\r\n",
    b"set {p}k 0 0 3\r\nabc\r\n", b"incr {p}k 1\r\n", b"incr {p}n x\r\n",
    b"touch {p}n 100\r\n", b"touch {p}zz 100\r\n", b"gat 100 {p}n {p}zz\r\n",
    b"gats 100 {p}n\r\n", b"verbosity 1\r\n", b"verbosity 0 noreply\r\n",
    b"ms {p}m 2 F3 T0\r\nhi\r\n", b"mg {p}m v f t s k\r\n", b"mg {p}zz v\r\n",
    b"mg {p}zz v q\r\n", b"mg {p}m v q k\r\n", b"mg {p}m c\r\n",
    b"ms {p}m 2 C99999999\r\nxx\r\n", b"ms {p}m 2 MA\r\n!!\r\n", b"ms {p}m 2 MP\r\n<<\r\n",
    b"mg {p}m v\r\n", b"ms {p}m 2 MR\r\nrr\r\n", b"ms {p}zz 2 MR\r\nrr\r\n",
    b"ms {p}zz 2 MA\r\nrr\r\n",
    b"ms {p}m 2 ME\r\nxx\r\n", b"ms {p}e 2 c k O9\r\nee\r\n", b"mg {p}e c v\r\n",
    b"ms {p}e 2 C1 q\r\nff\r\n", b"mg {p}e v\r\n", b"md {p}e C1\r\n",
    b"md {p}m q\r\n", b"md {p}m\r\n", b"ma {p}c N0 J13 v\r\n", b"ma {p}c v\r\n",
    b"ma {p}c MD D100 v\r\n", b"ma {p}nn\r\n", b"ma {p}nn q\r\n", b"ma {p}c c t\r\n",
    b"mg {p}c c v\r\n", b"ma {p}k\r\n", b"ms {p}s 2 T60\r\nss\r\n", b"md {p}s I T30\r\n",
    b"mg {p}s v c\r\n", b"mg {p}s v\r\n", b"ms {p}s 2 T0\r\nnew\r\n",
    b"ms {p}s 3 T0\r\nnew\r\n", b"mg {p}s v\r\n", b"ms {p}r 2 T10\r\nrr\r\n",
    b"mg {p}r R30 v\r\n", b"mg {p}r R30 v\r\n", b"mg {p}viv N30 v\r\n", b"mg {p}viv N30 v\r\n",
    b"mg {p}n T0 v\r\n", b"mg {p}b s f v O1 k\r\n", b"set {p}e 0 -1 1\r\nx\r\n",
    b"get {p}e\r\n", b"delete {p}b\r\n", b"delete {p}b\r\n", b"get {p}b\r\n",
]

_CAS = re.compile(rb"(VALUE \S+ \d+ \d+) \d+|(?<= )c\d+")


def normalized(reply: bytes) -> bytes:
    """Cas uniques differ between servers: every one reads as ``CAS``."""
    return _CAS.sub(lambda m: m.group(1) + b" CAS" if m.group(1) else b"cCAS", reply)


def script_replies(port: int, prefix: bytes) -> list[bytes]:
    """Each command of SCRIPT followed by ``mn``; its replies, up to MN's."""
    out = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        for request in SCRIPT:
            sock.sendall(request.replace(b"{p}", prefix) + b"mn\r\n")
            got = b""
            while not got.endswith(b"MN\r\n"):
                chunk = sock.recv(65536)
                assert chunk, f"closed after {request!r}"
                got += chunk
            out.append(normalized(got[:-4]))
    return out


@pytest.fixture(scope="module")
def memcached() -> Iterator[int]:
    """Debian's memcached 1.6 on a free port."""
    exe = shutil.which("memcached") or "/usr/bin/memcached"
    assert os.path.exists(exe), "memcached is required for the interop test"
    port = free_port()
    args = [exe, "-p", str(port), "-U", "0", "-l", "127.0.0.1", "-t", "1", "-m", "64"]
    if os.geteuid() == 0:
        args += ["-u", "root"]
    proc = subprocess.Popen(args)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def test_same_script_as_real_memcached(address: tuple[str, int], memcached: int) -> None:
    """cas, replace, append/prepend (and noreply), incr/decr, touch, gat/gats, verbosity
    and the meta commands with their flags (t T N R I C E q k O) and ms modes (A P R E)
    get the same replies from directord as from memcached 1.6."""
    prefix = unique("interop").encode() + b"-"
    theirs = script_replies(memcached, prefix)
    ours = script_replies(address[1], prefix)
    for request, mine, want in zip(SCRIPT, ours, theirs, strict=True):
        assert mine == want, request


def test_cas_from_gets_and_meta_agree(address: tuple[str, int]) -> None:
    """A cas unique from gets succeeds once and only once; mg c reports the same one."""
    mc = client(address)
    key = unique("cas")
    assert mc.set(key, b"one")
    value, cas = mc.gets(key)
    assert value == b"one"
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(b"mg %s c\r\n" % key.encode())
        assert sock.recv(1024) == b"HD c%s\r\n" % cas
    assert mc.cas(key, b"two", cas) is True
    assert mc.cas(key, b"three", cas) is False  # EXISTS: the value changed since
    assert mc.get(key) == b"two"
    assert mc.cas(unique("absent"), b"x", cas) is None  # NOT_FOUND
    mc.close()


# -- replicas, failover, two directords -----------------------------------------------------


async def _copies(blobs: BlobClient, key: bytes) -> dict[str, tuple[bytes, int | None]]:
    """Each replica's copy of an item: node id -> (value, cas)."""
    numbers = await blobs.items.locations(item_index_id(key))
    out = {}
    for node in (await blobs.snapshot()).resolve(numbers):
        got = await blobs.node_client(node).get(key, cas=True)
        assert got is not None, node.id
        out[node.id] = (got.value, got.cas)
    return out


def test_every_replica_has_the_same_value_and_cas(installation: Installation,
                                                  address: tuple[str, int]) -> None:
    """After set, cas, append and incr every replica holds the same value under the same
    cas unique, the one gets reports."""
    mc = client(address)
    for key, steps in ((unique("rep-set"), ["set"]), (unique("rep-cas"), ["set", "cas"]),
                       (unique("rep-app"), ["set", "append"]),
                       (unique("rep-inc"), ["set", "incr"])):
        mc.set(key, b"10")
        if "cas" in steps:
            assert mc.cas(key, b"20", mc.gets(key)[1])
        if "append" in steps:
            assert mc.append(key, b"5")
        if "incr" in steps:
            assert mc.incr(key, 5) == 15
        value, cas = mc.gets(key)
        copies = with_client(installation.config, functools.partial(_copies, key=key.encode()))
        assert len(copies) == installation.config.director.replicas
        assert set(copies.values()) == {(value, int(cas))}, steps
    mc.close()


def test_cas_and_incr_survive_the_primary_failing(installation: Installation,
                                                  address: tuple[str, int]) -> None:
    """kill -9 the item's primary replica: gets still answers the cas it had, cas with it
    succeeds on the next replica, and incr goes on from the value it had."""
    mc = client(address)
    key = unique("failover")
    counter = unique("failover-n")
    assert mc.set(key, b"before") and mc.set(counter, b"41")
    _value, cas = mc.gets(key)

    async def primary(blobs: BlobClient) -> str:
        index_id = item_index_id(key.encode())
        numbers = await blobs.items.locations(index_id)
        return (await blobs._ordered(index_id, numbers, primary=True))[0].id

    victim = with_client(installation.config, primary)
    installation.kill(victim)
    try:
        assert mc.gets(key) == (b"before", cas)
        assert mc.cas(key, b"after", cas) is True
        assert mc.get(key) == b"after"
        assert mc.incr(counter, 1) == 42
    finally:
        installation.start(victim)
    # The replica that missed those writes no longer serves the item.
    time.sleep(REGISTRY_REFRESH + 0.5)
    for _ in range(5):
        assert mc.get(key) == b"after"
        assert mc.get(counter) == b"42"
    mc.close()


def _hammer(addresses: list[tuple[str, int]], work: Callable[[Client], None],
            threads: int) -> None:
    """Run ``work`` in ``threads`` threads, each with a client of one of ``addresses``."""
    errors: list[BaseException] = []

    def run(i: int) -> None:
        mc = client(addresses[i % len(addresses)])
        try:
            work(mc)
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            mc.close()

    pool = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(120)
    assert not errors, errors


def test_incr_append_and_cas_loops_through_two_directords_lose_nothing(
        address: tuple[str, int], second_directord: tuple[str, int]) -> None:
    """Clients of two directords incrementing, appending to and cas-updating the same
    items at once lose no update: the primary replica applies each atomically."""
    counter, log_key, cas_key = unique("n"), unique("log"), unique("casloop")
    mc = client(address)
    assert mc.set(counter, b"0") and mc.set(log_key, b"") and mc.set(cas_key, b"0")
    mc.close()
    per_thread, threads = 25, 6

    def work(c: Client) -> None:
        for _ in range(per_thread):
            c.incr(counter, 1)
            c.append(log_key, b"x")
            while True:
                value, cas = c.gets(cas_key)
                if c.cas(cas_key, b"%d" % (int(value) + 1), cas):
                    break

    _hammer([address, second_directord], work, threads)
    total = per_thread * threads
    for where in (address, second_directord):
        mc = client(where)
        assert mc.get(counter) == b"%d" % total
        assert mc.get(log_key) == b"x" * total
        assert mc.get(cas_key) == b"%d" % total
        mc.close()


# -- flush_all, stats ----------------------------------------------------------------------


def test_flush_all_hides_items_through_every_directord(
        address: tuple[str, int], second_directord: tuple[str, int]) -> None:
    """flush_all (enabled here) hides every item written before it, through this and the
    other directord; items written after it are served; flush_all with a delay cuts off
    when the delay has passed."""
    mc, other = client(address), client(second_directord)
    old = unique("flushed")
    assert mc.set(old, b"old")
    assert mc.flush_all(noreply=False)
    assert mc.get(old) is None
    assert not mc.delete(old)
    assert mc.add(old, b"again")  # missing now, so add stores it
    deadline = time.monotonic() + REGISTRY_REFRESH + 5
    later = unique("later")
    assert mc.set(later, b"new")
    while other.get(later) != b"new" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert other.get(later) == b"new" and other.get(old) == b"again"
    assert mc.flush_all(delay=2, noreply=False)
    assert mc.get(later) == b"new"
    time.sleep(2.5)
    assert mc.get(later) is None and mc.get(old) is None
    fresh = unique("fresh")
    assert mc.set(fresh, b"after the cut-off") and mc.get(fresh) == b"after the cut-off"
    mc.close()
    other.close()


def test_stats_are_directords_own_counters(address: tuple[str, int]) -> None:
    """stats answers directord's counters (gets, hits, misses, sets, connections, read
    batches), stats settings its limits, stats reset zeroes the counters."""
    mc = client(address)
    before = mc.stats()
    key = unique("stats")
    mc.set(key, b"v")
    mc.get(key)
    mc.get(unique("stats-miss"))
    after = mc.stats()
    assert after[b"version"] == b"1.6.18-directord"
    assert after[b"pid"] > 0 and after[b"curr_connections"] >= 1
    assert after[b"cmd_get"] - before[b"cmd_get"] == 2
    assert after[b"get_hits"] - before[b"get_hits"] == 1
    assert after[b"get_misses"] - before[b"get_misses"] == 1
    assert after[b"cmd_set"] - before[b"cmd_set"] == 1
    # Two gets one at a time: two read batches, each of one key.
    assert after[b"item_read_batches"] - before[b"item_read_batches"] == 2
    assert after[b"item_gets"] - before[b"item_gets"] == 2
    settings = mc.stats("settings")
    assert settings[b"flush_enabled"] == b"yes" and settings[b"cas_enabled"] == b"yes"
    assert settings[b"item_size_max"] == 1024 * 1024
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(b"stats reset\r\n")
        assert sock.recv(100) == b"RESET\r\n"
    assert mc.stats()[b"cmd_get"] == 0
    mc.close()


def test_me_reports_the_primary_replicas_item(address: tuple[str, int]) -> None:
    """me answers an item's debug line (exp, la, cas, size) and EN for a missing key."""
    key = unique("me").encode()
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(b"ms %s 2 T100 E4242\r\nhi\r\nme %s\r\nme %s-no\r\n" % (key, key, key))
        got = b""
        while got.count(b"\r\n") < 3:
            got += sock.recv(4096)
    lines = got.split(b"\r\n")
    assert lines[0] == b"HD"
    assert re.fullmatch(rb"ME %s exp=(99|100) la=\d+ cas=4242 fetch=no cls=1 size=\d+" % key,
                        lines[1]), lines[1]
    assert lines[2] == b"EN"


def test_values_at_the_item_limit_through_append(address: tuple[str, int]) -> None:
    """An append that would pass the item size is refused as memcached refuses it, and
    the value stays."""
    mc = client(address)
    key = unique("big-append")
    assert mc.set(key, b"x" * (1024 * 1024 - 100))
    with pytest.raises(MemcacheServerError, match="out of memory storing object"):
        mc.append(key, b"y" * 200)
    assert mc.get(key) == b"x" * (1024 * 1024 - 100)
    mc.close()

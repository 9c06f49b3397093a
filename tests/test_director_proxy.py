"""directord against real clients: pymemcache and libmemcached's memcp/memcat talking to a
real directord process in front of real objstored processes and Redis Cluster.

The module runs a private installation (its own Redis prefix, four object servers and a
directord, started by the project launcher), so killing an object server here disturbs
no other test.  As every dev cluster, it demands memcached's authentication on its blob
plane: the clients here log in first (:mod:`tests.memcache_auth`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pymemcache.client.base import Client
from pymemcache.exceptions import MemcacheServerError

from director.blobids import BlobIds
from director.client import BlobClient
from director.codec import FLAG_ZLIB
from director.collector import Collector
from director.keys import item_index_id
from director.memcache_client import NodeAccess
from director.proxy import VERSION, unsupported
from metadata.store import MetadataStore
from ops.config import parse_hostport, to_toml
from ops.launcher import free_port
from tests.conftest import CORPUS
from tests.director_installation import (
    Installation,
    installation_codec,
    installation_fixture,
    wait_idle,
    with_client,
)
from tests.memcache_auth import LoginClient, login_request

MEMCP = shutil.which("memcp") or shutil.which("memccp")
MEMCAT = shutil.which("memcat") or shutil.which("memccat")


installation = installation_fixture("proxy", stages=("objstore", "directord"),
                                    timeout=1.0, gc_min_grace=0.0)


@dataclass(frozen=True)
class Endpoint:
    """directord's address and the credentials it demands."""

    host: str
    port: int
    access: NodeAccess


@pytest.fixture
def address(installation: Installation) -> Endpoint:
    host, port = parse_hostport(installation.config.director.listen)
    return Endpoint(host, port, installation.cluster.directord_access())


def client(address: Endpoint, **kw: object) -> Client:
    """pymemcache, logged in on each connection."""
    kw.setdefault("default_noreply", False)
    return LoginClient((address.host, address.port), address.access, timeout=10,
                       connect_timeout=5, **kw)


def exchange(address: Endpoint, request: bytes, until: bytes = b"\r\n") -> bytes:
    """Log in, send raw bytes, read until the reply ends with ``until``."""
    with socket.create_connection((address.host, address.port), timeout=10) as sock:
        login = login_request(address.access)
        if login:
            sock.sendall(login)
            reply = b""
            while not reply.endswith(b"\r\n"):
                reply += sock.recv(1)
            assert reply == b"STORED\r\n"
        sock.sendall(request)
        out = b""
        while not out.endswith(until):
            chunk = sock.recv(65536)
            if not chunk:
                break
            out += chunk
        return out


def test_set_get_add_delete_touch(address: Endpoint) -> None:
    """The classic commands behave as memcached's: set overwrites, add refuses a present
    key, delete removes, touch answers for present keys only."""
    mc = client(address)
    key = f"k-{os.urandom(4).hex()}"
    assert mc.get(key) is None
    assert mc.set(key, b"one")
    assert mc.get(key) == b"one"
    assert mc.set(key, b"two")
    assert mc.get(key) == b"two"
    assert not mc.add(key, b"three")
    assert mc.get(key) == b"two"
    assert mc.add(key + "-new", b"fresh") and mc.get(key + "-new") == b"fresh"
    assert mc.touch(key, 3600)
    assert not mc.touch(key + "-none", 10)
    assert mc.delete(key)
    assert mc.get(key) is None
    assert not mc.delete(key)
    assert mc.get_many([key, key + "-new", "absent"]) == {key + "-new": b"fresh"}
    value, cas = mc.gets(key + "-new")
    assert value == b"fresh" and int(cas) > 0
    mc.close()


def test_binary_values_and_flags_are_kept_exactly(address: Endpoint) -> None:
    """Values with every byte (CR LF included) and client flags come back as set."""
    key = f"bin-{os.urandom(4).hex()}".encode()
    value = bytes(range(256)) * 40 + b"\r\nEND\r\n" + os.urandom(1000)
    reply = exchange(address, b"set %s 4242 0 %d\r\n%s\r\n" % (key, len(value), value))
    assert reply == b"STORED\r\n"
    reply = exchange(address, b"get %s\r\n" % key, until=b"END\r\n")
    assert reply == b"VALUE %s 4242 %d\r\n%s\r\nEND\r\n" % (key, len(value), value)


def test_set_replicates_as_given_in_distinct_zones(installation: Installation,
                                                   address: Endpoint) -> None:
    """A set stores the value and flags unchanged on `replicas` object servers of
    distinct zones, recorded in the items' index key space under the key's index id."""
    key = f"repl-{os.urandom(4).hex()}".encode()
    value = b"x" * 5000  # compressible, but stored as given
    assert exchange(address, b"set %s 7 0 %d\r\n%s\r\n" % (key, len(value), value)) == \
        b"STORED\r\n"

    async def body(blobs: BlobClient) -> None:
        numbers = await blobs.items.locations(item_index_id(key))
        nodes = (await blobs.snapshot()).resolve(numbers)
        assert len(nodes) == installation.config.director.replicas
        assert len({n.zone for n in nodes}) == len(nodes)
        for node in nodes:
            got = await blobs.node_client(node).get(key)
            assert got is not None and (got.flags, got.value) == (7, value)

    with_client(installation.config, body)


def test_noreply_then_read_sees_the_writes(address: Endpoint) -> None:
    """noreply writes answer nothing; a read on the same connection sees them."""
    mc = client(address, default_noreply=True)
    keys = [f"nr-{os.urandom(3).hex()}-{i}" for i in range(20)]
    for i, key in enumerate(keys):
        mc.set(key, b"%d" % i)
    assert mc.get_many(keys) == {k: b"%d" % i for i, k in enumerate(keys)}
    mc.delete(keys[0])
    assert mc.get(keys[0]) is None
    mc.close()


def test_values_up_to_the_item_size(installation: Installation,
                                    address: Endpoint) -> None:
    """A value of exactly the object servers' item size is stored; one byte more is
    refused in memcached's words, and the key's old value is gone."""
    limit = installation.config.objstore.max_item_size
    mc = client(address)
    key = f"big-{os.urandom(4).hex()}"
    big = os.urandom(limit)
    assert mc.set(key, big)
    assert mc.get(key) == big
    with pytest.raises(MemcacheServerError, match="object too large for cache"):
        mc.set(key, big + b"!")
    assert mc.get(key) is None
    assert mc.version() == VERSION
    mc.close()


def test_lru_crawler_is_refused_by_name(address: Endpoint) -> None:
    """lru_crawler (directord holds no items of its own to list) gets SERVER_ERROR naming
    the command; the rest of the protocol is served (tests/test_director_proxy_protocol)."""
    assert exchange(address, b"lru_crawler metadump all\r\n") == \
        b"SERVER_ERROR lru_crawler not supported by directord\r\n"
    assert unsupported(b"lru_crawler").line == \
        b"SERVER_ERROR lru_crawler not supported by directord"


def test_flush_all_is_refused_unless_enabled(address: Endpoint) -> None:
    """flush_all is refused by default, even with noreply, and nothing is flushed."""
    mc = client(address)
    key = f"keep-{os.urandom(4).hex()}"
    assert mc.set(key, b"kept")
    assert exchange(address, b"flush_all\r\n") == b"CLIENT_ERROR flush_all not allowed\r\n"
    assert exchange(address, b"flush_all 0 noreply\r\n") == \
        b"CLIENT_ERROR flush_all not allowed\r\n"
    assert mc.get(key) == b"kept"
    mc.close()


def test_blob_ids_are_only_set_or_added(address: Endpoint) -> None:
    """Writes that would change a blob id's value in place are refused."""
    bid = BlobIds().id_of(b"immutable").encode()
    for request in (b"append %s 0 0 1\r\nx\r\n", b"prepend %s 0 0 1\r\nx\r\n",
                    b"replace %s 0 0 1\r\nx\r\n", b"cas %s 0 0 1 5\r\nx\r\n",
                    b"incr %s 1\r\n", b"ma %s\r\n", b"ms %s 1 MA\r\nx\r\n"):
        assert exchange(address, request % bid) == \
            b"CLIENT_ERROR blob ids are immutable (set or add them whole)\r\n", request


def test_unknown_and_malformed_commands(address: Endpoint) -> None:
    """Garbage gets memcached's own words, and the connection goes on."""
    assert exchange(address, b"bogus\r\nversion\r\n", until=b"directord\r\n") == \
        b"ERROR\r\nVERSION " + VERSION + b"\r\n"
    assert exchange(address, b"set k x 0 1\r\n") == b"CLIENT_ERROR bad command line format\r\n"
    assert exchange(address, b"incr n 1 noreply\r\nversion\r\n") == \
        b"VERSION " + VERSION + b"\r\n"


def test_meta_commands(address: Endpoint) -> None:
    """ms/mg/md/mn work with the flags a proxy can honour; others are refused."""
    key = f"meta-{os.urandom(4).hex()}".encode()
    assert exchange(address, b"ms %s 5 F7 T0 k Oab\r\nhello\r\n" % key) == \
        b"HD k%s Oab\r\n" % key
    assert exchange(address, b"mg %s s v f k\r\n" % key, until=b"hello\r\n") == \
        b"VA 5 s5 f7 k%s\r\nhello\r\n" % key
    assert exchange(address, b"mg %s-none v k q\r\nmn\r\n" % key) == b"MN\r\n"
    assert exchange(address, b"mg %s-none v k\r\n" % key) == b"EN k%s-none\r\n" % key
    assert exchange(address, b"ms %s 2 ME\r\nzz\r\n" % key) == b"NS\r\n"
    assert exchange(address, b"ms %s 2 MR\r\nzz\r\n" % key) == b"HD\r\n"
    assert exchange(address, b"mg %s t v\r\n" % key, until=b"zz\r\n") == \
        b"VA 2 t-1\r\nzz\r\n"
    assert exchange(address, b"md %s q\r\nmn\r\n" % key) == b"MN\r\n"
    assert exchange(address, b"md %s\r\n" % key) == b"NF\r\n"


def test_blob_ids_read_encoded_and_are_guarded(installation: Installation,
                                               address: Endpoint) -> None:
    """A blob stored by the library reads through directord as stored (compressed, with
    the flag that says so); a value that is not the blob's content is refused; a second
    set is a dedup hit; blob ids cannot be deleted or made to expire."""
    files = sorted(p for p in (CORPUS / "apache-spamassassin").rglob("*") if p.is_file())
    data = files[0].read_bytes() + os.urandom(8)
    bid = with_client(installation.config, lambda blobs: blobs.put(data))
    reply = exchange(address, b"get %s\r\n" % bid.encode(), until=b"END\r\n")
    head, _, rest = reply.partition(b"\r\n")
    _value, _key, flags_s, size_s = head.split()
    flags, size = int(flags_s), int(size_s)
    assert flags & FLAG_ZLIB and size < len(data)
    assert installation_codec(installation.config).decode(rest[:size], flags, bid) == data

    other = os.urandom(300)
    other_id = BlobIds().id_of(other)
    assert exchange(address, b"set %s 0 0 3\r\nbad\r\n" % other_id.encode()).startswith(
        b"CLIENT_ERROR value does not match its blob id")
    assert exchange(address, b"set %s 0 0 %d\r\n%s\r\n" % (
        other_id.encode(), len(other), other)) == b"STORED\r\n"
    assert with_client(installation.config, lambda blobs: blobs.get(other_id)) == other
    assert exchange(address, b"set %s 0 0 %d\r\n%s\r\n" % (
        other_id.encode(), len(other), other)) == b"STORED\r\n"
    assert exchange(address, b"add %s 0 0 %d\r\n%s\r\n" % (
        other_id.encode(), len(other), other)) == b"NOT_STORED\r\n"
    assert exchange(address, b"delete %s\r\n" % other_id.encode()).startswith(
        b"CLIENT_ERROR blob ids are deleted by gc")
    assert exchange(address, b"touch %s 60\r\n" % other_id.encode()).startswith(
        b"CLIENT_ERROR blob ids never expire")
    assert exchange(address, b"set %s/0 0 0 1\r\nx\r\n" % other_id.encode()).startswith(
        b"CLIENT_ERROR keys <blob id>/<n> are reserved")
    mc = client(address)
    assert mc.get(other_id) == other  # read, then served from the cache
    assert mc.get(other_id) == other
    mc.close()
    metrics = scrape(installation)
    assert _metric(metrics, "directord_dedup_hits_total") >= 2
    assert _metric(metrics, "directord_cache_hits_total") >= 1


def scrape(installation: Installation) -> str:
    host, port = parse_hostport(installation.config.director.metrics_listen)
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return resp.read().decode()


def _metric(text: str, line_start: str) -> float:
    """The value of the sample whose name and labels are exactly ``line_start``."""
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name == line_start:
            return float(value)
    raise AssertionError(f"{line_start} not in metrics:\n{text}")


def test_metrics_endpoint(installation: Installation, address: Endpoint) -> None:
    """GET /metrics counts requests and errors by command and times them."""
    mc = client(address)
    mc.set("metrics-key", b"v")
    mc.get("metrics-key")
    mc.close()
    exchange(address, b"lru_crawler metadump all\r\n")
    text = scrape(installation)
    assert _metric(text, 'directord_requests_total{command="set"}') >= 1
    assert _metric(text, 'directord_errors_total{command="lru_crawler",kind="unsupported"}') \
        >= 1
    assert _metric(text, 'directord_request_seconds_bucket{command="get",le="+Inf"}') >= 1
    assert _metric(text, 'directord_request_seconds_count{command="get"}') >= 1
    assert _metric(text, "directord_open_connections") >= 0
    assert "# TYPE directord_request_seconds histogram" in text


def test_unauthenticated_clients_are_refused(address: Endpoint) -> None:
    """A client that did not log in gets CLIENT_ERROR unauthenticated for get, delete
    and metadump, and its set is a refused login: nothing reaches the object servers."""
    key = f"anon-{os.urandom(4).hex()}".encode()
    open_ = Endpoint(address.host, address.port, NodeAccess())
    for request in (b"get %s\r\n" % key, b"delete %s\r\n" % key,
                    b"lru_crawler metadump all\r\n", b"version\r\n"):
        assert exchange(open_, request) == b"CLIENT_ERROR unauthenticated\r\n"
    assert exchange(open_, b"set %s 0 0 5\r\nvalue\r\n" % key) == \
        b"CLIENT_ERROR bad authentication token format\r\n"
    assert exchange(open_, b"set %s 0 0 11\r\nvalue value\r\n" % key) == \
        b"CLIENT_ERROR authentication failure\r\n"
    wrong = Endpoint(address.host, address.port, NodeAccess(address.access.user, "wrong"))
    with pytest.raises(AssertionError):
        exchange(wrong, b"get %s\r\n" % key)
    assert exchange(address, b"get %s\r\n" % key, until=b"END\r\n") == b"END\r\n"


@pytest.mark.skipif(MEMCP is None or MEMCAT is None, reason="libmemcached-tools missing")
def test_memcp_and_memcat_roundtrip_a_file(installation: Installation, tmp_path: Path) -> None:
    """libmemcached's memcp stores a file through directord and memcat reads it back
    byte for byte, flags included.  libmemcached 1.1 cannot log in with the text
    protocol, so they talk to a second directord without ``director.auth_file`` (in
    front of the same, authenticated, object servers), and the first one refuses them."""
    source = max((p for p in (CORPUS / "apache-spamassassin").rglob("*") if p.is_file()),
                 key=lambda p: p.stat().st_size)
    name = f"mail-{os.urandom(4).hex()}.eml"
    copy = tmp_path / name
    copy.write_bytes(source.read_bytes())
    assert MEMCP is not None and MEMCAT is not None
    refused = subprocess.run([MEMCP, "--servers", installation.config.director.listen,
                              str(copy)], capture_output=True, timeout=60)
    assert refused.returncode != 0
    with open_directord(installation, tmp_path) as servers:
        put = subprocess.run([MEMCP, "--servers", servers, "--flags", "99", str(copy)],
                             capture_output=True, timeout=60)
        assert put.returncode == 0, put.stderr
        out = tmp_path / "out"
        got = subprocess.run([MEMCAT, "--servers", servers, f"--file={out}", name],
                             capture_output=True, timeout=60)
        assert got.returncode == 0, got.stderr
        assert out.read_bytes() == source.read_bytes()
        flags = subprocess.run([MEMCAT, "--servers", servers, "--flags", name],
                               capture_output=True, timeout=60)
        assert flags.stdout.startswith(b"99\n")


@contextlib.contextmanager
def open_directord(installation: Installation, tmp_path: Path) -> Iterator[str]:
    """A second directord of the installation whose own port demands no login."""
    config = dataclasses.replace(installation.config, director=dataclasses.replace(
        installation.config.director, auth_file="", metrics_listen=""))
    path = tmp_path / "open-directord.toml"
    path.write_text(to_toml(config))
    host, port = parse_hostport(installation.config.director.listen)
    port = free_port()
    spec = dataclasses.replace(  # no metrics port: the installation's directord has it
        installation.cluster.directord_spec(host, port, name="directord-open",
                                            config_path=path), ports=(port,))
    installation.cluster.launcher.start(spec)
    try:
        yield f"{host}:{port}"
    finally:
        installation.cluster.launcher.stop(spec)


def test_get_fails_over_when_a_replica_dies(installation: Installation,
                                            address: Endpoint) -> None:
    """kill -9 a replica of the keys directord reads (first, for about half of those it
    holds): gets still answer from the other replica; the restarted server serves
    again."""
    mc = client(address)
    keys = [f"fo-{os.urandom(4).hex()}-{i}" for i in range(30)]
    for key in keys:
        assert mc.set(key, key.encode() * 3)

    async def read_order(blobs: BlobClient) -> list[str]:
        index_id = item_index_id(keys[0].encode())
        numbers = await blobs.items.locations(index_id)
        return [n.id for n in await blobs._ordered(index_id, numbers)]

    wait_idle(installation.config)  # idle replicas: directord reads each first half the time
    victim = with_client(installation.config, read_order)[0]
    installation.kill(victim)
    try:
        started = time.monotonic()
        assert mc.get_many(keys) == {k: k.encode() * 3 for k in keys}
        for key in keys:
            assert mc.get(key) == key.encode() * 3
        assert time.monotonic() - started < 30
        assert mc.set(b"after-kill", b"still writing")
        assert mc.get(b"after-kill") == b"still writing"
        assert _metric(scrape(installation), "directord_failovers_total") >= 1
    finally:
        installation.start(victim)
    assert mc.set(b"after-restart", b"x") and mc.get(b"after-restart") == b"x"
    mc.close()


def test_set_to_a_dead_target_is_indexed_where_it_landed(installation: Installation,
                                                         address: Endpoint) -> None:
    """A plain set records its index entry while its copies are written; when a target
    is dead the copy goes to the next candidate and the entry is corrected before
    STORED: it names exactly the nodes that took the new value, never the dead target,
    which holds the old value once restarted and is never read."""
    mc = client(address)
    keys = [f"moved-{os.urandom(4).hex()}-{i}".encode() for i in range(12)]
    replicas = installation.config.director.replicas

    async def holders(blobs: BlobClient) -> dict[bytes, dict[str, bytes | None]]:
        out: dict[bytes, dict[str, bytes | None]] = {}
        snap = await blobs.snapshot()
        for key in keys:
            numbers = await blobs.items.locations(item_index_id(key))
            out[key] = {}
            for node in snap.resolve(numbers):
                got = await blobs.node_client(node).get(key)
                out[key][node.id] = None if got is None else got.value
        return out

    wait_idle(installation.config)  # placement weighs load reports: let them settle
    for key in keys:
        assert mc.set(key, b"old " + key)
    before = with_client(installation.config, holders)
    counts: dict[str, int] = {}
    for key in keys:
        assert before[key] == dict.fromkeys(before[key], b"old " + key)
        for node_id in before[key]:
            counts[node_id] = counts.get(node_id, 0) + 1
    # The node holding most of them: its keys' next sets target it (placement is
    # deterministic but for load), find it dead and fall back.
    victim = max(counts, key=lambda n: counts[n])
    installation.kill(victim)
    try:
        for key in keys:
            assert mc.set(key, b"new " + key)
        after = with_client(installation.config, holders)
        for key in keys:
            assert victim not in after[key]
            assert after[key] == dict.fromkeys(after[key], b"new " + key)
            assert len(after[key]) == replicas
    finally:
        installation.start(victim)
    for _ in range(5):
        for key in keys:
            assert mc.get(key) == b"new " + key
    again = with_client(installation.config, holders)
    assert all(victim not in again[key] for key in keys)
    mc.close()


def test_items_set_through_directord_survive_gc(installation: Installation, postgres: str,
                                                address: Endpoint) -> None:
    """Issue 11, data loss 3: ``set mykey`` through directord, a whole gc run (which keeps
    only what messages reference), then ``get mykey`` still returns the value: plain keys
    live in the items' key space, which gc never sweeps, while a blob id set through
    directord and referenced by no message is collected, as documented."""
    mc = client(address)
    key = f"mykey-{os.urandom(4).hex()}"
    orphan = b"an orphan blob set through directord " + os.urandom(64)
    assert mc.set(key, b"kept by gc")
    assert mc.set(BlobIds().id_of(orphan), orphan)

    async def gc(blobs: BlobClient) -> int:
        store = await MetadataStore.open(postgres, pool_min=1, pool_max=2)
        try:
            stats = await Collector(blobs, store.references, grace=0.0).run_once()
        finally:
            await store.close()
        assert stats.finished and not stats.errors
        return stats.collected

    assert with_client(installation.config, gc) >= 1
    assert mc.get(key) == b"kept by gc"
    # (directord's memory cache may still answer for the orphan: read the index.)
    assert not with_client(installation.config, lambda b: b.exists(BlobIds().id_of(orphan)))
    mc.close()

"""The blob client through failures, with real processes: object servers killed with
SIGKILL, a Redis Cluster master killed, and object servers that hang or answer garbage.

The module runs a private installation on the session's Redis Cluster: its own Redis
prefix, four objstored (zones a, b, c, a; 2 replicas per blob) started by the launcher,
and three misbehaving servers run by the test itself, registered first (so they have the
lowest node numbers and, being idle, are read first) in a tier that takes no new blobs.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socketserver
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from director.blobids import BlobIds
from director.client import BlobClient
from director.errors import BlobCorrupt, BlobUnavailable, WriteUnconfirmed
from director.keys import item_index_id
from director.nodes import NodeState
from ops.config import Config
from ops.devcluster import wait_redis_cluster_ok
from runtime.nodekeys import report_key
from tests.conftest import RunningRedis
from tests.director_installation import (
    Installation,
    installation_codec,
    private_installation,
    register_node,
    wait_idle,
    wait_state,
    with_client,
)
from tests.test_director_index import current_masters, restore_roles
from tests.test_director_redisconn import wait_replication_links

#: Seconds the client waits for an object server's reply in this module.
TIMEOUT = 0.5


class _Hang(socketserver.BaseRequestHandler):
    """Reads requests and never answers."""

    def handle(self) -> None:
        while self.request.recv(65536):
            pass


class _Garbage(socketserver.BaseRequestHandler):
    """Answers every request with something that is not memcached's protocol."""

    def handle(self) -> None:
        while self.request.recv(65536):
            self.request.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n<html>nope</html>\r\n")


class _Liar(socketserver.BaseRequestHandler):
    """Speaks the protocol, but every value it returns is the wrong bytes."""

    def handle(self) -> None:
        buf = b""
        while chunk := self.request.recv(65536):
            buf += chunk
            while b"\r\n" in buf:
                line, buf = buf.split(b"\r\n", 1)
                words = line.split()
                if words and words[0] in (b"get", b"gets"):
                    junk = b"definitely not the blob you stored"
                    self.request.sendall(b"VALUE %s 0 %d\r\n%s\r\nEND\r\n"
                                         % (words[1], len(junk), junk))
                else:
                    self.request.sendall(b"ERROR\r\n")


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@dataclass
class Fake:
    """A misbehaving server registered as a node."""

    node_id: str
    server: _Server
    number: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"


@dataclass
class Setup:
    installation: Installation
    fakes: dict[str, Fake]

    @property
    def config(self) -> Config:
        return self.installation.config


@pytest.fixture(scope="module")
def setup(redis_cluster: RunningRedis,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    fakes = {}
    for name, handler in (("hang", _Hang), ("garbage", _Garbage), ("liar", _Liar)):
        server = _Server(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        fakes[name] = Fake(f"fake-{name}", server)

    def register_fakes(config: Config) -> None:
        for fake in fakes.values():
            fake.number = register_node(config, fake.node_id, fake.address, zone="x",
                                        tier="hdd")

    try:
        with private_installation(redis_cluster, tmp_path_factory.mktemp("failover"),
                                  before_start=register_fakes, timeout=TIMEOUT,
                                  cache_bytes=0) as inst:
            yield Setup(inst, fakes)
    finally:
        for fake in fakes.values():
            fake.server.shutdown()
            fake.server.server_close()


def blobs(n: int, tag: str) -> list[bytes]:
    """Distinct blobs of a few sizes, compressible and not."""
    out = []
    for i in range(n):
        head = f"{tag} {i} {os.urandom(6).hex()}\n".encode()
        out.append(head * (1 + i % 50) if i % 2 else head + os.urandom(100 + 37 * i))
    return out


def test_fakes_never_take_new_blobs(setup: Setup) -> None:
    """The misbehaving servers are live nodes of another tier: placement never picks them,
    so only the tests below that name them in the index send reads their way."""
    datas = blobs(40, "placement")

    async def body(client: BlobClient) -> set[int]:
        ids = await client.put_many(datas)
        found = await client.index.lookup(ids)
        snap = await client.snapshot(force=True)
        assert all(snap.get(f.node_id).state is NodeState.ACTIVE  # type: ignore[union-attr]
                   for f in setup.fakes.values())
        return {n for numbers in found.values() for n in numbers}

    used = with_client(setup.config, body)
    assert not used & {f.number for f in setup.fakes.values()}


def test_kill_9_one_objstored(setup: Setup) -> None:
    """kill -9 an object server: every blob written before reads back (from the other
    replica), puts go on to the other servers, and once restarted it serves again."""
    inst = setup.installation
    replicas = inst.config.director.replicas
    before = [*blobs(60, "before"), os.urandom(int(1.5 * inst.config.objstore.max_item_size))]
    # Reads pick among idle replicas at random: the victim is read first for about half
    # of the blobs it holds.
    victim = inst.objstores()[0].name

    async def write_before(client: BlobClient) -> tuple[list[str], list[str]]:
        ids = await client.put_many(before)
        found = await client.index.lookup(ids)
        snap = await client.snapshot()
        number = snap.get(victim).number  # type: ignore[union-attr]
        assert all(len(found[i]) == replicas for i in ids)
        return ids, [i for i in ids[:-1] if number in found[i]]

    ids, on_victim = with_client(setup.config, write_before)
    assert on_victim, f"{victim} got none of {len(ids)} blobs"
    wait_idle(setup.config)  # every server reports 0 ops/s: replicas weigh the same
    inst.kill(victim)
    during = blobs(30, "during")
    try:
        async def outage(client: BlobClient) -> tuple[int, int, int, list[tuple[int, ...]],
                                                      int]:
            snap = await client.snapshot(force=True)
            number = snap.get(victim).number  # type: ignore[union-attr]
            # Once its report is late (a few report intervals) the victim is down, read
            # last without a try; until then reads try it and fail over.
            first = 0 if snap.get(victim).readable else -1  # type: ignore[union-attr]
            for bid in ids:
                order = await client._ordered(bid, await client.index.locations(bid))
                first += order[0].id == victim
            got = await client.get_many(ids)
            assert [got[i] for i in ids] == before
            failovers = client.stats.failovers
            # Now suspect, the dead server is read last: no more failovers.
            for bid in on_victim:
                assert await client.get(bid) == before[ids.index(bid)]
            again = client.stats.failovers - failovers
            new_ids = await client.put_many(during)
            found = await client.index.lookup(new_ids)
            assert [await client.get(i) for i in new_ids] == during
            return failovers, again, first, [found[i] for i in new_ids], number

        failovers, again, first, placed, number = with_client(setup.config, outage)
        if first >= 0:
            assert first >= 1, "the dead server is still read first for some of its blobs"
            assert failovers >= 1, "reads that tried the dead server first failed over"
        assert again == 0, "a server that failed is read last for a while"
        assert all(len(p) == replicas and number not in p for p in placed)
    finally:
        inst.start(victim)
    wait_state(setup.config, victim, NodeState.ACTIVE)

    async def after(client: BlobClient) -> None:
        node = (await client.snapshot(force=True)).get(victim)
        assert node is not None
        codec = installation_codec(inst.config)
        for bid in on_victim:
            raw = await client.node_client(node).get(bid.encode())
            assert raw is not None
            assert codec.decode(raw.value, raw.flags, bid) == before[ids.index(bid)]
        for attempt in range(200):
            bid = await client.put(f"after restart {attempt} {os.urandom(8).hex()}".encode())
            if node.number in await client.index.locations(bid):
                return
        raise AssertionError(f"no new blob was placed on the restarted {victim}")

    with_client(setup.config, after)


def _index_with(setup: Setup, bid: str, fake: str) -> None:
    """List a misbehaving server as a holder of ``bid`` too."""
    async def body(client: BlobClient) -> None:
        await client.index.add_locations(bid, [setup.fakes[fake].number])

    with_client(setup.config, body)


@pytest.mark.parametrize("fake", ["hang", "garbage", "liar"])
def test_bad_server_is_failed_over(setup: Setup, fake: str) -> None:
    """A replica that hangs times out, one that answers garbage or wrong bytes is caught;
    either way the read fails over to a good replica and returns the right bytes."""
    data = f"failover through {fake} ".encode() * 30 + os.urandom(16)
    bid = with_client(setup.config, lambda client: client.put(data))
    _index_with(setup, bid, fake)

    async def read(client: BlobClient) -> tuple[bytes, float]:
        # Reads pick a replica at random (the idle fake more often than not); the first
        # that tries the fake first fails over (the fake is then suspect, read last).
        numbers = await client.index.locations(bid)
        for _attempt in range(40):
            before = client.stats.failovers
            started = time.monotonic()
            got = await client._read(bid, numbers)  # past the cache
            took = time.monotonic() - started
            assert got == data
            if client.stats.failovers > before:
                return got, took
        raise AssertionError("no read tried the fake first")

    got, took = with_client(setup.config, read)
    assert got == data
    if fake == "hang":
        assert TIMEOUT * 0.9 <= took < TIMEOUT * 10
    else:
        assert took < TIMEOUT * 10


@pytest.mark.parametrize("fake", ["hang", "garbage"])
def test_bad_server_is_failed_over_for_items(setup: Setup, fake: str) -> None:
    """Items (directord's keys) fail over past a bad replica the same way."""
    key = f"item-{fake}-{os.urandom(4).hex()}".encode()

    async def body(client: BlobClient) -> bytes | None:
        assert await client.put_item(key, b"item value", 5)
        await client.items.add_locations(item_index_id(key), [setup.fakes[fake].number])
        for _attempt in range(40):  # until a read picks the fake first (it is random)
            item = await client.get_item(key)
            assert item is not None and item.value == b"item value"
            if client.stats.failovers:
                return item.value
        return None

    assert with_client(setup.config, body) == b"item value"


def test_nothing_corrupt_is_returned(setup: Setup) -> None:
    """When the only replicas left hang, lie or babble, get raises instead of returning
    anything: BlobCorrupt when every answer had wrong bytes, BlobUnavailable otherwise."""
    data = os.urandom(500)
    bid = BlobIds().id_of(data)

    async def body(client: BlobClient) -> None:
        await client.index.add_locations(bid, [setup.fakes["liar"].number])
        with pytest.raises(BlobCorrupt):
            await client.get(bid)
        await client.index.add_locations(bid, [setup.fakes["hang"].number,
                                               setup.fakes["garbage"].number])
        with pytest.raises(BlobUnavailable):
            await client.get(bid)
        assert client.stats.bad_replicas >= 2
        await client.index.delete(bid)

    with_client(setup.config, body)


def test_reports_go_under_the_installation_prefix(setup: Setup) -> None:
    """objstored writes its load report under cluster.redis_prefix, where this
    installation's registry reads it, not under the default prefix."""
    rc = setup.installation.redis()
    try:
        for objstore in setup.installation.objstores():
            # Reports may be backing off after another test's Redis failover.
            deadline = time.monotonic() + 60
            while not rc.exists(report_key(objstore.name, setup.installation.prefix)):
                assert time.monotonic() < deadline, f"{objstore.name} does not report"
                time.sleep(0.2)
            # The session's own object servers may share the name, not the address.
            other = rc.hget(report_key(objstore.name), "addr")
            assert other != f"{objstore.host}:{objstore.port}".encode()
    finally:
        rc.close()


@pytest.mark.slow
def test_redis_master_killed_loses_no_acknowledged_put(setup: Setup,
                                                       redis_cluster: RunningRedis) -> None:
    """kill -9 a Redis Cluster master while blobs are being put: the client retries with
    backoff through the failover (puts whose index writes the promoted replica, short of a
    replica itself, cannot confirm fail temporarily), and every put it acknowledged is
    indexed and readable afterwards."""
    cluster = redis_cluster.cluster
    wait_replication_links(redis_cluster)
    masters = current_masters(redis_cluster)
    config = setup.config
    reporting = live_reports(setup)

    async def go(client: BlobClient) -> tuple[list[tuple[str, bytes]], int, float]:
        victim = client.index.runner.client.get_primaries()[0]
        spec = cluster.spec(f"redis-{victim.port}")
        acked: list[tuple[str, bytes]] = []
        longest = 0.0
        t0 = time.monotonic()
        killed = False
        batch = 0
        while time.monotonic() - t0 < 12:
            if not killed and time.monotonic() - t0 > 1:
                cluster.launcher.signal(spec, signal.SIGKILL)
                killed = True
            datas = blobs(10, f"redis-failover-{batch}")
            batch += 1
            started = time.monotonic()
            try:
                ids = await client.put_many(datas)
            except WriteUnconfirmed:
                # The promoted replica has no replica of its own until the killed master
                # comes back: its writes are refused (a temporary failure), not acked.
                longest = max(longest, time.monotonic() - started)
                await asyncio.sleep(0.2)
                continue
            longest = max(longest, time.monotonic() - started)
            acked += list(zip(ids, datas, strict=True))
        cluster.launcher.start(spec)
        wait_redis_cluster_ok(cluster.redis_addresses, timeout=60, auth=redis_cluster.auth)
        return acked, client.index.runner.stats.retries, longest

    try:
        acked, retries, longest = with_client(config, go)
    finally:
        restore_roles(redis_cluster, masters)
        # Object servers (this session's too) back off while Redis fails: leave only
        # once every one that reported before reports again, as later tests expect.
        deadline = time.monotonic() + 90
        while missing := reporting - live_reports(setup):
            assert time.monotonic() < deadline, f"reports not back: {sorted(missing)}"
            time.sleep(0.5)
    assert retries > 0, "the kill should have made the client retry"
    assert longest > 1.0, "a put should have waited out the failover"

    async def check(client: BlobClient) -> list[str]:
        found = await client.index.lookup([bid for bid, _ in acked])
        unindexed = [bid for bid, _ in acked
                     if len(found[bid]) != config.director.replicas]
        got = await client.get_many([bid for bid, _ in acked])
        wrong = [bid for bid, data in acked if got[bid] != data]
        return unindexed + wrong

    assert with_client(config, check) == []


def live_reports(setup: Setup) -> set[bytes]:
    """Every load report key in the Redis Cluster, whatever the installation."""
    rc = setup.installation.redis()
    try:
        return set(rc.scan_iter(match="*node:{*}:report", count=1000))
    finally:
        rc.close()


def test_index_writes_fail_while_the_replica_is_stopped(setup: Setup,
                                                        redis_cluster: RunningRedis) -> None:
    """With the Redis replica of a master stopped (SIGSTOP), a put whose index bucket lives
    on that master fails with a temporary error (WriteUnconfirmed, a DirectorError: LMTP
    451) after director.index_write_timeout instead of being acknowledged without a copy;
    once the replica runs again the same put succeeds and reads back."""
    cluster = redis_cluster.cluster
    wait_replication_links(redis_cluster)

    async def go(client: BlobClient) -> None:
        runner = client.index.runner
        await client.snapshot(force=True)  # the cluster client knows the topology now
        master = runner.client.get_primaries()[0]
        data = next(d for d in (os.urandom(700) for _ in range(10_000))
                    if getattr(runner.client.get_node_from_key(
                        client.index.bucket_key(client.id_of(d))), "name", "") == master.name)
        info = await runner.client.execute_command("INFO", "replication",
                                                   target_nodes=master)
        replica = replica_port(info)
        spec = cluster.spec(f"redis-{replica}")
        cluster.launcher.signal(spec, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(WriteUnconfirmed):
                await client.put(data)
            took = time.monotonic() - started
            assert setup.config.director.index_write_timeout <= took < 10
        finally:
            cluster.launcher.signal(spec, signal.SIGCONT)
        wait_replication_links(redis_cluster)
        bid = await client.put(data)
        assert await client.get(bid) == data

    with_client(setup.config, go)


def replica_port(info: object) -> int:
    """The port of the (first) replica named in a master's INFO replication (as redis-py
    parses it, or as text)."""
    if isinstance(info, dict):
        first = info.get("slave0") or info.get(b"slave0")
        if isinstance(first, dict):
            return int(first["port"])
        if first is None and len(info) == 1:  # keyed by node name
            return replica_port(next(iter(info.values())))
    text = info.decode() if isinstance(info, bytes) else str(info)
    for line in text.splitlines():
        if line.startswith("slave0:"):
            fields = dict(part.split("=", 1) for part in line.split(":", 1)[1].split(","))
            return int(fields["port"])
    raise AssertionError(f"the master has no replica: {info!r}")

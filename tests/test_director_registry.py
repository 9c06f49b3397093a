"""Tests of the node registry against the real Redis Cluster, with real load reports."""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from director.errors import RegistryError, RemoveRefused, UnknownNode
from director.index import LocationIndex
from director.keys import Keyspace
from director.nodes import NodeState
from director.policy import PlacementPolicy
from director.redisconn import ClusterRunner, Command
from director.registry import Registry, remove_node
from objstore.reporter import (
    Identity,
    LoadSample,
    RedisClusterSink,
    Registration,
    build_report,
)
from objstore.stats import OP_NAMES
from tests.conftest import RunningRedis

GIB = 1 << 30


def report_fields(node_id: str, address: str, *, zone: str = "a", tier: str = "ssd",
                  used: int = 10 * GIB, capacity: int = 100 * GIB,
                  number: int = 0, site: str = "") -> dict[str, str]:
    """A report exactly as objstored builds it."""
    ident = Identity(node_id=node_id, address=address, zone=zone, tier=tier, site=site)
    zeros = [0] * len(OP_NAMES)
    prev = LoadSample(at=time.time() - 5, capacity_bytes=capacity, used_bytes=used, items=0,
                      ops=zeros)
    cur = LoadSample(at=time.time(), capacity_bytes=capacity, used_bytes=used, items=42,
                     ops=[5] * len(OP_NAMES))
    fields, _hot = build_report(ident, prev, cur, hot_keys=0, number=number)
    return fields


class Env:
    """A registry under a private key prefix, plus a way to publish reports there."""

    def __init__(self, runner: ClusterRunner, keys: Keyspace) -> None:
        self.runner = runner
        self.keys = keys
        self.registry = Registry(runner, keys)

    async def report(self, node_id: str, address: str, *, ttl_ms: int = 30_000,
                     **kw: Any) -> None:
        key = self.keys.report(node_id)
        fields = report_fields(node_id, address, **kw)
        await self.runner.run("report", [
            Command(key, ("HSET", key, *[x for kv in fields.items() for x in kv])),
            Command(key, ("PEXPIRE", key, ttl_ms))])


def with_env(redis_cluster: RunningRedis, body: Callable[[Env], Awaitable[Any]],
             keys: Keyspace | None = None) -> Any:
    async def go() -> Any:
        runner = ClusterRunner(redis_cluster.client())
        try:
            return await body(Env(runner, keys or Keyspace(f"t-{uuid.uuid4().hex[:8]}:")))
        finally:
            await runner.aclose()

    return asyncio.run(go())


def test_add_numbers_nodes_and_reads_their_reports(redis_cluster: RunningRedis) -> None:
    """Added nodes get numbers 1, 2, ...; with a live report a node is active, without
    one it is down; the snapshot carries the report's figures."""

    async def body(env: Env) -> Any:
        await env.report("n1", "127.255.0.1:11211")
        a = await env.registry.add("n1", "127.255.0.1:11211", zone="a", tier="ssd")
        b = await env.registry.add("n2", "127.255.0.2:11211", zone="b", tier="hdd", weight=2.5)
        return a, b, await env.registry.snapshot()

    a, b, snap = with_env(redis_cluster, body)
    assert (a.number, a.state) == (1, NodeState.ACTIVE)
    assert (b.number, b.state, b.weight, b.tier) == (2, NodeState.DOWN, 2.5, "hdd")
    assert [n.id for n in snap.nodes] == ["n1", "n2"]
    assert snap.by_number(1).report.items == 42
    assert snap.by_number(1).report.used_bytes == 10 * GIB
    assert [n.id for n in snap.resolve([2, 9, 1])] == ["n2", "n1"]


def test_sites_are_kept_and_old_records_are_in_the_default_site(
        redis_cluster: RunningRedis) -> None:
    """A node added with a site keeps it; a record written before sites (no site field)
    reads as site 'default'; an object server's reported site is what reregister gives
    it back after the registry was lost."""

    async def body(env: Env) -> Any:
        r = env.registry
        east = await r.add("n1", "127.255.2.1:1", zone="a", tier="ssd", site="east")
        old = await r.add("n2", "127.255.2.2:1", zone="b", tier="ssd")
        await env.runner.run("old record", [Command(env.keys.node("n2"), (
            "HDEL", env.keys.node("n2"), "site"))])
        await env.report("n1", east.address, number=east.number, site="east")
        snap = await r.snapshot()
        await env.runner.run("lose", [Command(k, ("DEL", k)) for k in (
            env.keys.node("n1"), env.keys.node("n2"), env.keys.node_numbers,
            env.keys.next_number)])
        back = await r.reregister()
        return east, old, snap, back

    east, old, snap, back = with_env(redis_cluster, body)
    assert (east.site, old.site) == ("east", "default")
    assert [(n.id, n.site) for n in snap.nodes] == [("n1", "east"), ("n2", "default")]
    assert snap.get("n1").report.site == "east"
    assert [(n.id, n.number, n.site) for n in back] == [("n1", 1, "east")]


@pytest.mark.parametrize(("node_id", "address", "words"), [
    ("n1", "127.255.0.9:1", "already registered"),
    ("n9", "127.255.0.1:11211", "already registered as node n1"),
    ("bad{id}", "127.255.0.9:1", "not a node id"),
    ("n9", "no-port", "host:port"),
])
def test_add_refuses_duplicates_and_bad_values(redis_cluster: RunningRedis, node_id: str,
                                               address: str, words: str) -> None:
    """A second node with the same id or address, or an unusable id/address, is refused."""

    async def body(env: Env) -> None:
        await env.registry.add("n1", "127.255.0.1:11211", zone="a", tier="ssd")
        with pytest.raises(RegistryError, match=words):
            await env.registry.add(node_id, address, zone="a", tier="ssd")

    with_env(redis_cluster, body)


def test_states_drain_activate_remove_readd(redis_cluster: RunningRedis) -> None:
    """Drain and activate flip the admin state; a removed node cannot be drained, and
    adding it again revives it with its old number."""

    async def body(env: Env) -> list[Any]:
        r = env.registry
        await env.report("n1", "127.255.0.1:1")
        await r.add("n1", "127.255.0.1:1", zone="a", tier="ssd")
        await r.add("n2", "127.255.0.2:1", zone="a", tier="ssd")
        out: list[Any] = [(await r.drain("n1")).state, (await r.activate("n1")).state]
        await r.set_state("n1", NodeState.REMOVED)
        with pytest.raises(RegistryError, match="was removed"):
            await r.drain("n1")
        with pytest.raises(UnknownNode):
            await r.drain("nobody")
        with pytest.raises(RegistryError, match="not a state"):
            await r.set_state("n2", NodeState.DOWN)
        back = await r.add("n1", "127.255.0.1:1", zone="b", tier="ssd")
        out += [back.number, back.state, back.zone]
        return out

    assert with_env(redis_cluster, body) == [NodeState.DRAINING, NodeState.ACTIVE, 1,
                                             NodeState.ACTIVE, "b"]


def test_node_whose_report_expires_is_down(redis_cluster: RunningRedis) -> None:
    """When the object server stops reporting, its report expires and it shows as down."""

    async def body(env: Env) -> tuple[NodeState, NodeState]:
        await env.report("n1", "127.255.0.1:1", ttl_ms=300)
        before = (await env.registry.add("n1", "127.255.0.1:1", zone="a", tier="ssd")).state
        await asyncio.sleep(0.5)
        return before, (await env.registry.get("n1")).state

    assert with_env(redis_cluster, body) == (NodeState.ACTIVE, NodeState.DOWN)


def test_reporting_but_unregistered_nodes_are_new(redis_cluster: RunningRedis) -> None:
    """A node that reports but was never added is listed as new, found by its address,
    and is not in the snapshot placement uses."""

    async def body(env: Env) -> Any:
        await env.report("fresh", "127.255.0.7:11211", zone="c")
        await env.report("known", "127.255.0.8:11211")
        await env.registry.add("known", "127.255.0.8:11211", zone="a", tier="ssd")
        new = await env.registry.unregistered()
        found = await env.registry.reporter_at("127.255.0.7:11211")
        missing = await env.registry.reporter_at("127.255.0.9:11211")
        return new, found, missing, await env.registry.snapshot()

    new, found, missing, snap = with_env(redis_cluster, body)
    assert [(n.id, n.state, n.zone) for n in new] == [("fresh", NodeState.NEW, "c")]
    assert found is not None and found.node_id == "fresh"
    assert missing is None
    assert snap.get("fresh") is None


def test_snapshot_feeds_placement(redis_cluster: RunningRedis) -> None:
    """Placement over a snapshot uses only active, reporting nodes of the write tier."""

    async def body(env: Env) -> Any:
        r = env.registry
        for i, zone in enumerate("abc", start=1):
            await env.report(f"n{i}", f"127.255.0.{i}:1", zone=zone)
            await r.add(f"n{i}", f"127.255.0.{i}:1", zone=zone, tier="ssd")
        await r.add("silent", "127.255.0.9:1", zone="a", tier="ssd")
        await env.report("cold", "127.255.0.8:1", tier="hdd")
        await r.add("cold", "127.255.0.8:1", zone="b", tier="hdd")
        await r.drain("n3")
        return await r.snapshot()

    snap = with_env(redis_cluster, body)
    placer = snap.placer(PlacementPolicy(replicas=2, tier="ssd"))
    assert set(placer.weights) == {"n1", "n2"}
    placement = placer.place(hashlib.sha256(b"x").hexdigest())
    assert {n.id for n in placement.targets} == {"n1", "n2"}
    assert {n.state for n in snap.nodes} == {NodeState.ACTIVE, NodeState.DRAINING,
                                             NodeState.DOWN}


def test_remove_is_refused_while_a_node_holds_sole_copies(redis_cluster: RunningRedis) -> None:
    """remove_node refuses (and changes nothing) while the node is some blob's only
    location; once every blob has another copy it removes the node and strips it from
    the index."""
    keys = Keyspace(f"t-{uuid.uuid4().hex[:8]}:")
    ids = [hashlib.sha256(f"rm{i}".encode()).hexdigest() for i in range(100)]

    async def body(env: Env) -> Any:
        index = await LocationIndex.open(redis_cluster.nodes,
                                         auth=redis_cluster.auth, buckets=16, keys=keys,
                                         runner=env.runner)
        r = env.registry
        a = await r.add("a", "127.255.0.1:1", zone="a", tier="ssd")
        b = await r.add("b", "127.255.0.2:1", zone="b", tier="ssd")
        await index.add_many({x: [a.number, b.number] for x in ids})
        await index.add_many({x: [a.number] for x in blob_ids_only_on_a})
        with pytest.raises(RemoveRefused) as refused:
            await remove_node(r, index, "a")
        unchanged = (await r.get("a")).admin_state
        await index.add_many({x: [b.number] for x in blob_ids_only_on_a})
        outcome = await remove_node(r, index, "a")
        after = await index.lookup(ids + blob_ids_only_on_a)
        return refused.value, unchanged, outcome, after, b.number

    blob_ids_only_on_a = [hashlib.sha256(f"sole{i}".encode()).hexdigest() for i in range(3)]
    refused, unchanged, outcome, after, b_number = with_env(redis_cluster, body, keys)
    assert refused.sole_copies == 3 and set(refused.examples) == set(blob_ids_only_on_a)
    assert "drain" in str(refused)
    assert unchanged is NodeState.ACTIVE
    assert outcome.node.state is NodeState.REMOVED
    assert (outcome.strip.removed, outcome.strip.kept_sole) == (103, 0)
    assert set(after.values()) == {(b_number,)}


def test_reports_written_by_objstored_are_read(redis_cluster: RunningRedis) -> None:
    """A report written by objstored's own Redis writer (default key names) is what the
    registry reads for that node."""
    node_id = f"obj-{uuid.uuid4().hex[:10]}"
    address = f"127.{1 + uuid.uuid4().int % 250}.0.1:9"
    # A private prefix: a node registered active in the shared keyspace would draw the
    # other tests' writes to an address nothing serves.
    keys = Keyspace(f"t-{uuid.uuid4().hex[:8]}:")
    sink = RedisClusterSink(redis_cluster.nodes, prefix=keys.prefix, auth=redis_cluster.auth)
    try:
        sink.write(node_id, report_fields(node_id, address, zone="z9"), {}, 30)
    finally:
        sink.close()

    async def body(env: Env) -> Any:
        report = await env.registry.reporter_at(address)
        node = await env.registry.add(node_id, address, zone="z9", tier="ssd")
        return report, node

    report, node = with_env(redis_cluster, body, keys)
    assert report is not None and (report.node_id, report.zone) == (node_id, "z9")
    assert node.state is NodeState.ACTIVE and node.report is not None


def test_hot_keys_written_by_objstored_are_read_hottest_first(
        redis_cluster: RunningRedis) -> None:
    """The hottest keys objstored's writer publishes for a node come back hottest first
    with their reads per second; a node that published none has none."""
    node_id = f"obj-{uuid.uuid4().hex[:10]}"
    quiet = f"obj-{uuid.uuid4().hex[:10]}"
    hot = {b"cold-ish": 1.5, b"hottest": 90.0, b"warm": 12.0}
    keys = Keyspace(f"t-{uuid.uuid4().hex[:8]}:")
    sink = RedisClusterSink(redis_cluster.nodes, prefix=keys.prefix, auth=redis_cluster.auth)
    try:
        sink.write(node_id, report_fields(node_id, "127.255.9.9:11211"), hot, 30)
    finally:
        sink.close()

    async def body(env: Env) -> Any:
        return (await env.registry.hot([node_id, quiet], limit=2),
                await env.registry.hot([node_id]))

    two, every = with_env(redis_cluster, body, keys)
    assert two == {node_id: (("hottest", 90.0), ("warm", 12.0)), quiet: ()}
    assert [k for k, _s in every[node_id]] == ["hottest", "warm", "cold-ish"]


def test_numbers_come_back_after_the_registry_is_lost(redis_cluster: RunningRedis) -> None:
    """Once every registry key is gone, a node that reports the number it kept gets it
    back from node add, a new node gets a number above every kept one (never one an old
    node comes back with), and reregister adds back each reporting node that kept one."""

    async def body(env: Env) -> Any:
        r = env.registry
        first = [await r.add(f"n{i}", f"127.255.1.{i}:1", zone="abc"[i - 1], tier="ssd")
                 for i in (1, 2, 3)]
        for node in first:
            await env.report(node.id, node.address, zone=node.zone, number=node.number)
        lost = [env.keys.node(n.id) for n in first] + [env.keys.node_numbers,
                                                        env.keys.next_number]
        await env.runner.run("lose", [Command(k, ("DEL", k)) for k in lost])
        assert (await r.snapshot()).nodes == ()
        fresh = await r.add("n9", "127.255.1.9:1", zone="a", tier="ssd")
        back = await r.add("n2", "127.255.1.2:1", zone="b", tier="ssd")
        again = await r.reregister()
        return ([n.number for n in first], fresh.number, back.number,
                [(n.id, n.number, n.zone, n.state) for n in again], await r.reregister())

    numbers, fresh, back, again, twice = with_env(redis_cluster, body)
    assert numbers == [1, 2, 3]
    assert (fresh, back) == (4, 2)
    assert again == [("n1", 1, "a", NodeState.ACTIVE), ("n3", 3, "c", NodeState.ACTIVE)]
    assert twice == []


def test_objstored_writer_reads_its_registry_number(redis_cluster: RunningRedis) -> None:
    """objstored's report writer answers with its node's registry record: none before it
    is added, its number once added, removed once removed."""
    node_id = f"obj-{uuid.uuid4().hex[:10]}"
    address = f"127.{1 + uuid.uuid4().int % 250}.0.2:9"
    keys = Keyspace(f"t-{uuid.uuid4().hex[:8]}:")
    sink = RedisClusterSink(redis_cluster.nodes, prefix=keys.prefix, auth=redis_cluster.auth)

    def write() -> Registration | None:
        return sink.write(node_id, report_fields(node_id, address), {}, 30)

    async def add(env: Env) -> int:
        return (await env.registry.add(node_id, address, zone="a", tier="ssd")).number

    async def remove(env: Env) -> None:
        await env.registry.set_state(node_id, NodeState.REMOVED)

    try:
        assert write() is None
        number = with_env(redis_cluster, add, keys)
        assert write() == Registration(number)
        with_env(redis_cluster, remove, keys)
        assert write() == Registration(number, removed=True)
    finally:
        sink.close()

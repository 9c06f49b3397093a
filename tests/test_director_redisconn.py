"""Tests of the Redis Cluster runner: retries, backoff, deadline, NOSCRIPT, durable acks."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import redis
from redis import exceptions as rx
from redis.asyncio.cluster import RedisCluster

from director.errors import DirectorError, IndexUnavailable, WriteUnconfirmed
from director.redisconn import ClusterRunner, Command, LuaScript, RetryPolicy, new_cluster_client
from objstore.reporter import RedisClusterSink
from ops.config import parse_hostport
from ops.devcluster import redis_auth_conf, wait_redis_cluster_ok, wait_redis_replicas
from ops.launcher import Launcher, ProcessSpec
from runtime.nodekeys import report_key
from runtime.secrets import RedisAuth
from tests.conftest import RunningRedis, free_port_block
from tests.tls_support import make_certificates


class Sleeps:
    """Records the backoff instead of waiting it out."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await asyncio.sleep(0)


def run(coro_fn: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(coro_fn())  # type: ignore[arg-type]


def prefix() -> str:
    return f"t-{uuid.uuid4().hex[:8]}:"


def wait_replication_links(redis: RunningRedis, timeout: float = 30.0) -> None:
    """Wait until every master has an online replica again (after a failover)."""
    wait_redis_replicas([parse_hostport(n) for n in redis.nodes], timeout, auth=redis.auth)


def test_durable_batch_is_confirmed_by_a_replica(redis_cluster: RunningRedis) -> None:
    """Writes spread over every master come back in order, each master's WAIT answered."""
    wait_replication_links(redis_cluster)

    async def go() -> tuple[list[Any], int, int]:
        runner = ClusterRunner(redis_cluster.client())
        try:
            p = prefix()
            writes = [Command(f"{p}{i}", ("SET", f"{p}{i}", str(i))) for i in range(60)]
            await runner.run("test write", writes, durable=True)
            reads = [Command(f"{p}{i}", ("GET", f"{p}{i}")) for i in range(60)]
            got = await runner.run("test read", reads)
            masters = {getattr(runner.client.get_node_from_key(c.key), "name", None)
                       for c in writes}
            return got, runner.stats.unconfirmed_writes, len(masters)
        finally:
            await runner.aclose()

    got, unconfirmed, masters = run(go)
    assert got == [str(i).encode() for i in range(60)]
    assert unconfirmed == 0
    assert masters == 3


def test_unreachable_cluster_fails_fast_with_backoff() -> None:
    """Nothing listening on a cluster never reached: IndexUnavailable after the short
    `unreachable` deadline (not the failover deadline), with growing delays, and a
    message that names the nodes and the cause, not the operation."""
    port = free_port_block(2)
    sleeps = Sleeps()
    clock = [0.0]

    async def fake_sleep(delay: float) -> None:
        clock[0] += delay
        await sleeps(delay)

    async def go() -> ClusterRunner:
        runner = ClusterRunner(new_cluster_client([f"127.0.0.1:{port}"], socket_timeout=0.2),
                               retry=RetryPolicy(deadline=30.0, unreachable=2.0,
                                                 first_delay=0.1, max_delay=1.0),
                               sleep=fake_sleep, monotonic=lambda: clock[0],
                               rng=random.Random(7))
        try:
            with pytest.raises(IndexUnavailable) as caught:
                await runner.run("test op", [Command("k", ("GET", "k"))])
            assert str(caught.value) == (
                f"Redis Cluster unreachable at 127.0.0.1:{port}: Connection refused")
            return runner
        finally:
            await runner.aclose()

    runner = run(go)
    assert runner.stats.retries >= 4
    assert all(d <= 1.0 for d in sleeps.delays)
    assert sleeps.delays[0] <= 0.1 and max(sleeps.delays) > 0.5
    assert sum(sleeps.delays) == pytest.approx(2.0, abs=1e-9)


def test_a_cluster_reached_before_gets_the_whole_deadline(redis_cluster: RunningRedis) -> None:
    """Once an operation succeeded, connection errors are a failover to ride out: the
    runner retries until the full deadline, then says for how long it was unavailable."""
    sleeps = Sleeps()
    clock = [0.0]
    calls = [0]

    async def fake_sleep(delay: float) -> None:
        clock[0] += delay
        await sleeps(delay)

    async def then_refused(client: RedisCluster) -> str:
        calls[0] += 1
        if calls[0] == 1:
            return "reached"
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except OSError as exc:
            raise rx.ConnectionError("injected") from exc

    async def go() -> str:
        runner = ClusterRunner(new_cluster_client(redis_cluster.nodes,
                                                  auth=redis_cluster.auth),
                               retry=RetryPolicy(deadline=8.0, unreachable=1.0),
                               sleep=fake_sleep, monotonic=lambda: clock[0])
        try:
            assert await runner.call("first", then_refused) == "reached"
            with pytest.raises(IndexUnavailable) as caught:
                await runner.call("later", then_refused)
            return str(caught.value)
        finally:
            await runner.aclose()

    message = run(go)
    assert message.startswith("Redis Cluster unavailable at ")
    assert message.endswith(" for 8s: Connection refused")
    assert sum(sleeps.delays) == pytest.approx(8.0, abs=1e-9)


def test_transient_errors_are_retried(redis_cluster: RunningRedis) -> None:
    """An operation failing twice with connection errors succeeds on the third try."""
    sleeps = Sleeps()
    attempts = [0]

    async def flaky(client: RedisCluster) -> str:
        attempts[0] += 1
        if attempts[0] < 3:
            raise rx.ConnectionError("injected")
        return "done"

    async def go() -> tuple[str, int]:
        runner = ClusterRunner(redis_cluster.client(), sleep=sleeps)
        try:
            return await runner.call("flaky", flaky), runner.stats.retries
        finally:
            await runner.aclose()

    assert run(go) == ("done", 2)
    assert len(sleeps.delays) == 2


def test_scripts_are_loaded_again_after_a_script_flush(redis_cluster: RunningRedis) -> None:
    """A master that lost its scripts (new, promoted, flushed) answers NOSCRIPT; the
    runner loads them and the batch succeeds."""
    script = LuaScript("echo", "return redis.call('SET', KEYS[1], ARGV[1])")

    async def go() -> tuple[list[Any], int]:
        runner = ClusterRunner(redis_cluster.client())
        runner.register(script)
        try:
            await runner.call("flush", lambda c: c.execute_command(
                "SCRIPT", "FLUSH", target_nodes=c.get_primaries()))
            p = prefix()
            replies = await runner.run("scripted", [
                Command.script(script, f"{p}{i}", "v") for i in range(10)], durable=True)
            return replies, runner.stats.script_loads
        finally:
            await runner.aclose()

    replies, loads = run(go)
    assert replies == [b"OK"] * 10
    assert loads == 1


def test_refused_commands_are_not_retried(redis_cluster: RunningRedis) -> None:
    """A command Redis refuses for good (WRONGTYPE) raises at once, without retries."""

    async def go() -> int:
        runner = ClusterRunner(redis_cluster.client())
        try:
            key = f"{prefix()}str"
            await runner.run("set", [Command(key, ("SET", key, "x"))])
            with pytest.raises(DirectorError, match="WRONGTYPE"):
                await runner.run("hget", [Command(key, ("HGET", key, "f"))])
            return runner.stats.retries
        finally:
            await runner.aclose()

    assert run(go) == 0


def test_a_write_too_few_replicas_acknowledge_fails(redis_cluster: RunningRedis) -> None:
    """A master that cannot get enough replicas to acknowledge (2 asked, 1 exists): the
    durable write fails with WriteUnconfirmed (a temporary error) after the WAIT timeout,
    without retrying, every time it is tried; a read-only batch is not affected."""
    wait_replication_links(redis_cluster)

    async def go() -> list[float]:
        runner = ClusterRunner(redis_cluster.client(), wait_replicas=2, wait_timeout=0.05)
        key = f"{prefix()}k"
        took = []
        try:
            for _ in range(2):
                started = time.monotonic()
                with pytest.raises(WriteUnconfirmed, match=r"\(1 of 2\)"):
                    await runner.run("w", [Command(key, ("SET", key, "v"))], durable=True)
                took.append(time.monotonic() - started)
            assert await runner.run("r", [Command(key, ("GET", key))]) == [b"v"]
            assert runner.stats.unconfirmed_writes == 2 and runner.stats.retries == 0
            return took
        finally:
            await runner.aclose()

    took = run(go)
    assert all(0.05 <= t < 5 for t in took), took


def test_script_missing_on_one_master_runs_every_command_once(
        redis_cluster: RunningRedis) -> None:
    """When one master lacks a script (a promoted replica), only its commands are re-run
    after loading it: a non-idempotent script in the same batch never runs twice."""
    bump = LuaScript("objmail_test_bump", "return redis.call('INCR', KEYS[1])")

    async def go() -> list[int]:
        runner = ClusterRunner(redis_cluster.client())
        runner.register(bump)
        try:
            await runner.call("load", lambda c: c.execute_command(
                "SCRIPT", "LOAD", bump.source, target_nodes=c.get_primaries()))
            p = prefix()
            keys = [f"{p}{i}" for i in range(30)]
            victim = runner.client.get_node_from_key(keys[0])
            await runner.call("flush", lambda c: c.execute_command(
                "SCRIPT", "FLUSH", target_nodes=victim))
            replies = await runner.run("bump", [Command.script(bump, k) for k in keys],
                                       durable=True)
            counts = await runner.run("read", [Command(k, ("GET", k)) for k in keys])
            assert [int(r) for r in replies] == [1] * len(keys)
            return [int(c) for c in counts]
        finally:
            await runner.aclose()

    assert asyncio.run(go()) == [1] * 30


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, RedisAuth]]:
    """A one-node Redis Cluster that speaks only TLS, verifies client certificates and has
    an ACL user (the default user off): its address and the credentials it accepts."""
    work = tmp_path_factory.mktemp("redis-tls")
    certs = make_certificates(work / "tls")
    password = secrets.token_urlsafe(16)
    auth = RedisAuth("objmail", password, tls=True, tls_ca=str(certs.ca),
                     tls_cert=str(certs.client_cert), tls_key=str(certs.client_key))
    conf = work / "auth.conf"
    conf.write_text(redis_auth_conf(auth))
    conf.chmod(0o600)
    port = free_port_block(1, bus_offset=10000)
    argv = ["redis-server", str(conf), "--port", "0", "--tls-port", str(port),
            "--bind", "127.0.0.1", "--tls-cert-file", str(certs.server_cert),
            "--tls-key-file", str(certs.server_key), "--tls-ca-cert-file", str(certs.ca),
            "--tls-auth-clients", "yes", "--tls-cluster", "yes", "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf", "--dir", str(work), "--save", "",
            "--appendonly", "no", "--logfile", ""]

    def probe() -> bool:
        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1,
                             **auth.client_kwargs())
        try:
            return bool(client.ping())
        finally:
            client.close()

    launcher = Launcher(work)
    spec = ProcessSpec("redis-tls", "redis", tuple(argv), (port, port + 10000), probe)
    launcher.start(spec)
    try:
        client = redis.Redis(host="127.0.0.1", port=port, **auth.client_kwargs())
        try:
            client.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
        finally:
            client.close()
        wait_redis_cluster_ok([("127.0.0.1", port)], timeout=30, auth=auth)
        yield f"127.0.0.1:{port}", auth
    finally:
        launcher.stop(spec)


@pytest.mark.system
def test_cluster_client_speaks_tls_with_client_certificate_and_acl_user(
        tls_redis: tuple[str, RedisAuth]) -> None:
    """With redis_tls, the CA, a client certificate and the ACL user, the director's cluster
    client and objstored's report sink work; plaintext, a missing client certificate or
    a missing password are refused."""
    address, auth = tls_redis

    async def batch(with_auth: RedisAuth) -> list[Any]:
        runner = ClusterRunner(new_cluster_client([address], auth=with_auth),
                               retry=RetryPolicy(deadline=0.5), wait_replicas=0)
        try:
            await runner.run("tls write", [Command("t:k", ("SET", "t:k", "v"))], durable=True)
            return await runner.run("tls read", [Command("t:k", ("GET", "t:k"))])
        finally:
            await runner.aclose()

    assert asyncio.run(batch(auth)) == [b"v"]
    refused = [(dataclasses.replace(auth, tls=False), "unreachable at"),
               (dataclasses.replace(auth, tls_cert="", tls_key=""),
                # TLS 1.3: the server checks the client certificate after the client
                # finished its side, so the refusal may arrive as a reset.
                "unreachable at .*: (TLS handshake failed|Connection reset by peer)"),
               (dataclasses.replace(auth, password=None), "invalid username-password")]
    for wrong, why in refused:
        with pytest.raises(IndexUnavailable, match=why):
            asyncio.run(batch(wrong))
    sink = RedisClusterSink([address], prefix="t:", auth=auth)
    try:
        sink.write("tls-node", {"node_id": "tls-node"}, {}, 60)
    finally:
        sink.close()
    client = redis.Redis(host="127.0.0.1", port=int(address.rsplit(":", 1)[1]),
                         **auth.client_kwargs())
    try:
        assert client.hget(report_key("tls-node", "t:"), "node_id") == b"tls-node"
    finally:
        client.close()

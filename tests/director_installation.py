"""A private objmail installation on the session's Redis Cluster, for director system tests.

Tests that kill object servers, or register broken ones, must not disturb the session's
shared object servers: each module gets its own installation instead, under its own
``cluster.redis_prefix`` (so its registry, index and load reports are its own), with its
own object servers (and directord) started by the project's launcher
(:class:`ops.devcluster.DevCluster`) on free ports.  At the end every process is stopped
and every Redis key under the prefix is deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from redis.cluster import RedisCluster

from director.client import REGISTRY_REFRESH, BlobClient, open_keys
from director.codec import BlobCodec
from director.keyring import Keyring, write_keyring
from director.nodes import NodeState
from director.redisstate import RedisState
from ops.config import Config, DirectorConfig, ObjstoreConfig
from ops.devcluster import DevCluster, DevObjstore, DevOptions
from ops.launcher import ProcessSpec
from runtime.nodekeys import report_key
from tests.conftest import RunningRedis, free_port_block, redis_auth, sync_cluster_client

T = TypeVar("T")


@dataclass
class Installation:
    """A running private installation."""

    config: Config
    cluster: DevCluster

    @property
    def prefix(self) -> str:
        return self.config.cluster.redis_prefix

    def objstores(self) -> list[DevObjstore]:
        return self.cluster.dev_objstores()

    def spec(self, name: str) -> ProcessSpec:
        return self.cluster.spec(name)

    def kill(self, name: str) -> None:
        """kill -9 one process and wait until it is gone."""
        spec = self.spec(name)
        pid = self.cluster.launcher.pid_of(spec)
        assert pid is not None, f"{name} is not running"
        self.cluster.launcher.signal(spec, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while self.cluster.launcher.pid_of(spec) is not None:
            assert time.monotonic() < deadline, f"{name} survived SIGKILL"
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.02)

    def start(self, name: str) -> None:
        """(Re)start one process through the launcher and wait until it serves."""
        self.cluster.launcher.start(self.spec(name))

    def redis(self) -> RedisCluster:
        return sync_cluster_client(self.config.cluster)


def private_config(redis: RunningRedis, objstores: int, **director: Any) -> Config:
    """A config of its own on the session's Redis Cluster (and its credentials): a fresh
    Redis prefix and free ports for everything.

    Load reports live 15 s so that a Redis failover (reporters back off while it lasts)
    does not make the object servers look down.
    """
    # One block for every port: separately drawn blocks are not reserved until bound,
    # so two of them could overlap.
    metrics_count = max(objstores, 1)
    objstore_base = free_port_block(objstores + metrics_count + 2)
    objstore_metrics = objstore_base + objstores
    director_base = objstore_metrics + metrics_count
    return Config(
        cluster=dataclasses.replace(redis.cluster.config.cluster,
                                    redis_prefix=f"t{uuid.uuid4().hex[:10]}:"),
        objstore=ObjstoreConfig(listen=f"127.0.0.1:{objstore_base}", report_interval=1.0,
                                report_ttl=15, metrics_listen=f"127.0.0.1:{objstore_metrics}"),
        director=dataclasses.replace(
            DirectorConfig(listen=f"127.0.0.1:{director_base}",
                           metrics_listen=f"127.0.0.1:{director_base + 1}",
                           index_buckets=1024, workers=1), **director))


@contextlib.contextmanager
def private_installation(redis: RunningRedis, run_dir: Path, *, objstores: int = 4,
                         stages: tuple[str, ...] = ("objstore",),
                         before_start: Callable[[Config], None] | None = None,
                         objstore_settings: Mapping[str, Any] | None = None,
                         directord_auth: bool = True, sites: int = 1,
                         dev_tiers: tuple[tuple[str, int], ...] = (),
                         **director: Any) -> Iterator[Installation]:
    """Run ``objstores`` objstored (zones a, b, c, a...) registered under a private
    prefix, plus the other ``stages`` (e.g. ``directord``), for the block.

    :param before_start: called with the config before anything starts (to register
        nodes that must get the lowest node numbers).
    :param objstore_settings: ``[objstore]`` settings to change.
    :param directord_auth: directord demands the blob plane's login (as every dev
        cluster's does); off for clients that cannot log in (libmemcached's tools).
    :param sites: sites the object servers are dealt into in turn (s1, s2, s1...; 1: all
        in the default site).
    :param dev_tiers: ``objmail dev up --tiers`` (:func:`ops.devcluster.parse_dev_tiers`):
        the object servers' tiers and the ``[[director.tiers]]`` that go with them.
    :param director: ``[director]`` settings to change.
    """
    config = private_config(redis, objstores, **director)
    if objstore_settings:
        config = dataclasses.replace(config, objstore=dataclasses.replace(
            config.objstore, **objstore_settings))
    cluster = DevCluster(config, run_dir, DevOptions(
        objstore_count=objstores, only=frozenset(stages), install_missing=False,
        directord_auth=directord_auth, sites=sites, tiers=dev_tiers))
    config = cluster.config  # with the installation's own keyring
    cluster.write_config()
    try:
        if before_start is not None:
            before_start(config)
        cluster.up()
        # The cluster's config: with the credentials it generated (blob plane included).
        yield Installation(cluster.config, cluster)
    finally:
        try:
            cluster.down()
        finally:
            drop_prefix(config)


def installation_fixture(name: str, **settings: Any) -> Any:
    """A module-scoped fixture running a :func:`private_installation` (under a temporary
    directory named ``name``) for the module's tests; ``settings`` go to it unchanged.

    Assign it to the fixture's name: ``inst = installation_fixture("drain", objstores=4)``.
    """

    @pytest.fixture(scope="module")
    def installation(redis_cluster: RunningRedis,
                     tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installation]:
        with private_installation(redis_cluster, tmp_path_factory.mktemp(name),
                                  **settings) as inst:
            yield inst

    return installation


def with_new_keyring(config: Config, directory: Path) -> Config:
    """``config`` with a fresh keyring of its own, written (0600) under ``directory``."""
    path = directory / "keyring.toml"
    write_keyring(path, Keyring.generate())
    return dataclasses.replace(config, director=dataclasses.replace(
        config.director, keyring_file=str(path)))


def installation_codec(config: Config) -> BlobCodec:
    """The codec the installation's blob clients use (its keyring), for tests that read
    stored values themselves."""
    keyring, legacy = open_keys(config.director)
    return BlobCodec(config.director.compression_level, keyring, legacy_key=legacy)


def with_client(config: Config, body: Callable[[BlobClient], Awaitable[T]]) -> T:
    """Run ``body`` with a fresh blob client of the installation, on a fresh event loop."""
    async def go() -> T:
        client = await BlobClient.open(config.cluster, config.director,
                                       auth=redis_auth(config.cluster))
        try:
            return await body(client)
        finally:
            await client.aclose()

    return asyncio.run(go())


def wait_idle(config: Config, timeout: float = 30.0) -> None:
    """Return once every reporting node's last load report says 0 ops/s, and every
    director's cached registry snapshot is old enough to be read again.

    Readers weigh replicas by inverse reported load (:func:`director.placement.read_order`):
    a test that wants every replica equally likely to be read first waits for idle
    reports.
    """
    async def go(client: BlobClient) -> None:
        deadline = time.monotonic() + timeout
        while True:
            snap = await client.snapshot(force=True)
            busy = {n.id: n.report.ops_per_sec for n in snap.nodes
                    if n.report is not None and n.report.ops_per_sec > 0}
            if not busy:
                return
            assert time.monotonic() < deadline, f"nodes not idle: {busy}"
            await asyncio.sleep(0.2)

    with_client(config, go)
    time.sleep(REGISTRY_REFRESH + 0.1)


def drop_prefix(config: Config) -> None:
    """Delete every Redis key of the installation (its prefix) on every master."""
    rc = sync_cluster_client(config.cluster)
    try:
        for key in list(rc.scan_iter(match=f"{config.cluster.redis_prefix}*", count=1000)):
            rc.delete(key)
    finally:
        rc.close()


def register_node(config: Config, node_id: str, address: str, *, zone: str, tier: str,
                  ops_per_sec: float = 0.0, ttl: int = 3600) -> int:
    """Register a node that is not an objstored (a test's fake server) and give it a live
    load report, as objstored would write; returns its node number."""
    async def go() -> int:
        state = await RedisState.open(config.cluster, config.director,
                                      auth=redis_auth(config.cluster))
        try:
            node = await state.registry.add(node_id, address, zone=zone, tier=tier)
            return node.number
        finally:
            await state.aclose()

    number = asyncio.run(go())
    rc = sync_cluster_client(config.cluster)
    try:
        key = report_key(node_id, config.cluster.redis_prefix)
        rc.hset(key, mapping={
            "node_id": node_id, "addr": address, "zone": zone, "tier": tier,
            "capacity_bytes": str(1 << 30), "used_bytes": "0", "items": "0",
            "ops_per_sec": f"{ops_per_sec:.1f}", "reported_at": f"{time.time():.3f}"})
        rc.expire(key, ttl)
    finally:
        rc.close()
    return number


def wait_state(config: Config, node_id: str, wanted: NodeState, timeout: float = 30) -> None:
    """Wait until the registry shows ``node_id`` in state ``wanted``."""
    async def go() -> None:
        state = await RedisState.open(config.cluster, config.director,
                                      auth=redis_auth(config.cluster))
        try:
            deadline = time.monotonic() + timeout
            while True:
                node = (await state.registry.snapshot()).get(node_id)
                if node is not None and node.state is wanted:
                    return
                assert time.monotonic() < deadline, \
                    f"{node_id} is {node.state if node else 'unknown'}, not {wanted}"
                await asyncio.sleep(0.2)
        finally:
            await state.aclose()

    asyncio.run(go())

"""Session fixtures: a real local cluster started by the project's own launcher.

Every service runs from the system binaries on loopback, on free ports, under a
temporary directory, and is always stopped at the end of the session, even when
tests fail.  Each kind of service is a separate fixture, so a test run that
needs only PostgreSQL starts only PostgreSQL.

As with ``objmail dev up``, Redis and PostgreSQL demand the passwords the launcher
generated (``<run dir>/secrets``); the config the daemons read names the files, and test
code gets them from :attr:`SessionCluster.credentials` (the ``postgres`` fixture's DSN
carries the password, for test code only).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import random
import shutil
import sys
import tempfile
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
from hypothesis import HealthCheck, settings
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import ClusterNode
from redis.cluster import RedisCluster as SyncRedisCluster

from director.redisconn import new_cluster_client
from ops.config import ClusterConfig, Config, DirectorConfig, ImapdConfig, ObjstoreConfig
from ops.devcluster import DevCluster, DevOptions
from ops.launcher import free_port_block
from runtime.config import parse_hostport
from runtime.config import toml_value as to_toml_value
from runtime.secrets import Credentials, RedisAuth, load_credentials

# Hypothesis's timing checks measure the machine, not the code: on a shared 2-core
# machine a slow example is load, so no deadline and no too-slow health check.
settings.register_profile("objmail", deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("objmail")


def _find_corpus() -> Path:
    # The corpus sits in ``shared/`` beside the checkout: two levels up from a clone,
    # three from a worktree under ``wt/``.
    for parent in Path(__file__).resolve().parents:
        if (parent / "shared" / "corpus").is_dir():
            return parent / "shared" / "corpus"
    return Path(__file__).resolve().parents[2] / "shared" / "corpus"


CORPUS = _find_corpus()


def pytest_configure(config: pytest.Config) -> None:
    # pytest's default base temp dir keeps only the 3 newest runs and deletes
    # older ones, data directories of a still running session included: give
    # each run its own, removed at the end when everything passed.
    if config.option.basetemp is None:
        config.option.basetemp = tempfile.mkdtemp(prefix="objmail-tests-")
        config.stash[_OWN_BASETEMP] = Path(config.option.basetemp)


def pytest_unconfigure(config: pytest.Config) -> None:
    own = config.stash.get(_OWN_BASETEMP, None)
    if own is not None and config.stash.get(_PASSED, False):
        shutil.rmtree(own, ignore_errors=True)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    session.config.stash[_PASSED] = exitstatus == 0


_OWN_BASETEMP = pytest.StashKey[Path]()
_PASSED = pytest.StashKey[bool]()

#: The fixtures below that start services.  Every other fixture that runs one (a private
#: installation, imapd, directord) asks for one of these, so a test whose fixture closure
#: holds none of them needs no service.
SERVICE_FIXTURES = frozenset({"postgres", "redis_cluster", "objstore_cluster",
                              "storage_cluster"})


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark `system` every test that needs a service fixture, so ``-m "not system"``
    runs the fast, in-process layer alone.  Tests that start processes on their own
    carry ``pytest.mark.system`` themselves; :func:`_refuse_spawn` catches the ones that
    forget."""
    for item in items:
        if SERVICE_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.system)


#: What runs now that must not start processes (collection, a fast test), else None.
_fast_test: str | None = None
_SPAWN_EVENTS = frozenset({"subprocess.Popen", "os.system", "os.posix_spawn", "os.spawn",
                           "os.fork", "os.exec"})


def _refuse_spawn(event: str, args: tuple[object, ...]) -> None:
    # An audit hook sees every way of starting a process, fixtures and libraries included.
    if _fast_test is not None and event in _SPAWN_EVENTS:
        raise RuntimeError(f"{_fast_test}: a process started ({event} {args[:1]!r}) "
                           "outside a system test; mark the test pytest.mark.system")


sys.addaudithook(_refuse_spawn)


@pytest.hookimpl(wrapper=True)
def pytest_collection(session: pytest.Session) -> Generator[None, object, object]:
    # Importing a test module starts nothing: services belong in fixtures.
    global _fast_test
    _fast_test = "collection"
    try:
        return (yield)
    finally:
        _fast_test = None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    return (yield from _fast_only(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    return (yield from _fast_only(item))


def _fast_only(item: pytest.Item) -> Iterator[None]:
    # Not during teardown: the last test before a module or session ends tears down
    # fixtures (and stops services) that were set up for others.
    global _fast_test
    _fast_test = None if item.get_closest_marker("system") else item.nodeid
    try:
        return (yield)
    finally:
        _fast_test = None


@dataclass
class SessionCluster:
    """The session's cluster: config and the launcher's view of it."""

    config: Config
    run_dir: Path
    options: DevOptions

    def cluster(self, *stages: str) -> DevCluster:
        opts = dataclasses.replace(self.options, only=frozenset(stages))
        return DevCluster(self.config, self.run_dir, opts)

    @property
    def pg_dsn(self) -> str:
        return self.config.cluster.pg_dsn

    @property
    def redis_nodes(self) -> list[str]:
        return list(self.config.cluster.redis_nodes)

    @functools.cached_property
    def credentials(self) -> Credentials:
        """The generated Redis and PostgreSQL passwords (read once per session)."""
        return self.cluster().credentials


def redis_auth(cluster: ClusterConfig) -> RedisAuth:
    """The Redis credentials ``cluster`` names, read as a daemon's main() reads them."""
    return load_credentials(cluster).redis


def sync_cluster_client(cluster: ClusterConfig, **kwargs: Any) -> SyncRedisCluster:
    """A blocking redis-py cluster client of ``cluster``, with its credentials (for tests
    that look at Redis keys directly)."""
    host, port = parse_hostport(cluster.redis_nodes[0])
    return SyncRedisCluster(startup_nodes=[ClusterNode(host, port)],
                            **redis_auth(cluster).client_kwargs(), **kwargs)


def credential_keys(cluster: ClusterConfig) -> str:
    """The ``[cluster]`` lines naming ``cluster``'s credentials, for config files tests
    write by hand (the section header is the caller's)."""
    return "".join(f"{name} = {to_toml_value(getattr(cluster, name))}\n"
                   for name in ("redis_user", "redis_password_file", "pg_password_file"))


def dsn_with_password(dsn: str, password: str | None) -> str:
    """``dsn`` with ``password`` in it: for test code that passes DSNs around; the
    daemons read ``cluster.pg_password_file`` instead."""
    if password is None:
        return dsn
    parts = urlsplit(dsn)
    userinfo = f"{parts.username or ''}:{quote(password, safe='')}"
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{userinfo}@{host}").geturl()


def make_test_config(rng: random.Random | None = None) -> Config:
    """A config whose every port is free right now."""
    redis_base = free_port_block(6, bus_offset=10000, rng=rng)
    redis_ports = {redis_base + i + bus for i in range(6) for bus in (0, 10000)}
    # Every other port from one block, drawn apart from Redis's: ports handed out one at
    # a time are not reserved until bound, so two draws could return the same one.
    # Layout: 3 objstored, their 3 metrics ports, PostgreSQL, then one port per listener.
    while True:
        base = free_port_block(14, rng=rng)
        if not redis_ports & set(range(base, base + 14)):
            break
    objstore_base, objstore_metrics, pg_port = base, base + 3, base + 6
    ports = iter(range(base + 7, base + 14))
    cluster = ClusterConfig(
        pg_dsn=f"postgresql://postgres@127.0.0.1:{pg_port}/objmail",
        redis_nodes=tuple(f"127.0.0.1:{redis_base + i}" for i in range(6)))
    objstore = ObjstoreConfig(listen=f"127.0.0.1:{objstore_base}", report_interval=1.0,
                              report_ttl=5, metrics_listen=f"127.0.0.1:{objstore_metrics}")

    def free() -> str:
        return f"127.0.0.1:{next(ports)}"

    # One directord process: tests read its metrics, logs and stats.
    director = DirectorConfig(listen=free(), metrics_listen=free(), workers=1)
    imapd = ImapdConfig(imap_listen=free(), imaps_listen=free(), pop3_listen=free(),
                        lmtp_listen=free(), metrics_listen=free(), login_delay=0.2,
                        workers=1)  # one process: tests read its metrics and logs
    return Config(cluster=cluster, objstore=objstore, director=director, imapd=imapd)


@pytest.fixture(scope="session")
def test_cluster(tmp_path_factory: pytest.TempPathFactory) -> SessionCluster:
    run_dir = tmp_path_factory.mktemp("cluster")
    options = DevOptions(fast=True, redis_node_timeout_ms=2000)
    # The launcher's config: the one given plus the password files it generates.
    config = DevCluster(make_test_config(), run_dir, options).config
    tc = SessionCluster(config, run_dir, options)
    tc.cluster().write_config()
    return tc


@contextlib.contextmanager
def running(tc: SessionCluster, *stages: str) -> Iterator[DevCluster]:
    """Run ``stages`` of the session's cluster for the duration of the block."""
    cluster = tc.cluster(*stages)
    try:
        cluster.up()
        yield cluster
    finally:
        cluster.down()


@pytest.fixture(scope="session")
def postgres(test_cluster: SessionCluster) -> Iterator[str]:
    """DSN of a private PostgreSQL with the objmail database created (password included)."""
    with running(test_cluster, "postgres"):
        yield dsn_with_password(test_cluster.pg_dsn, test_cluster.credentials.pg_password)


@dataclass
class RunningRedis:
    """The session's Redis Cluster: startup nodes, the credentials it demands, and the
    launcher to kill/restart nodes."""

    nodes: list[str]
    cluster: DevCluster
    auth: RedisAuth

    def client(self, **kwargs: Any) -> AsyncRedisCluster:
        """An unconnected asyncio cluster client with the credentials (for a runner)."""
        return new_cluster_client(self.nodes, auth=self.auth, **kwargs)


@pytest.fixture(scope="session")
def redis_cluster(test_cluster: SessionCluster) -> Iterator[RunningRedis]:
    """A 6-node Redis Cluster (3 masters, 3 replicas) on loopback."""
    with running(test_cluster, "redis") as cluster:
        yield RunningRedis(test_cluster.redis_nodes, cluster, cluster.credentials.redis)


@dataclass
class RunningObjstores:
    """Redis Cluster plus the dev object servers, registered and reporting."""

    config: Config
    cluster: DevCluster


@pytest.fixture(scope="session")
def objstore_cluster(test_cluster: SessionCluster,
                     redis_cluster: RunningRedis) -> Iterator[RunningObjstores]:
    """Three objstored (zones a, b, c) added to the registry, as `objmail dev up` does."""
    with running(test_cluster, "objstore") as cluster:
        yield RunningObjstores(test_cluster.config, cluster)


@pytest.fixture(scope="session")
def storage_cluster(postgres: str, objstore_cluster: RunningObjstores) -> Config:
    """PostgreSQL (migrated) + Redis Cluster + registered object servers: their config."""
    return objstore_cluster.config

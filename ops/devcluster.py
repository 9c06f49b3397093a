"""The local objmail cluster behind ``objmail dev up|down|status`` and the test fixtures.

A :class:`DevCluster` turns a :class:`~ops.config.Config` plus a run directory
into an ordered list of stages.  Each stage is a process kind (PostgreSQL, the
six Redis Cluster nodes, object servers, ...) with the processes it runs and a
step that follows their start (create the database, form the Redis Cluster).
Adding a process kind is one more ``_stage_*`` method listed in ``stages``.

PostgreSQL and Redis are not started when the config points at existing
servers (``external_pg`` / ``external_redis``, set when OBJMAIL_PG_DSN or
OBJMAIL_REDIS_NODES are given).

Every generated password lives under ``<run dir>/secrets`` (0700, files 0600): Redis's,
PostgreSQL's, and the blob plane's memcached authfile (``blob-auth``, one
``objmail:<password>`` line), which the object servers (``objstore.auth_file``),
directord (``director.auth_file``) and every blob client (``director.objstore_auth_file``)
all name, so no client gets at a blob without it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from secrets import token_urlsafe
from typing import Any
from urllib.parse import urlsplit

from director.config import TierConfig
from director.keyring import Keyring, write_keyring
from director.memcache_client import OPEN_ACCESS, NodeAccess
from director.nodes import DEFAULT_SITE
from objstore.auth import auth_request
from ops import binaries
from ops.config import Config, parse_hostport, to_toml
from ops.launcher import (
    Launcher,
    LaunchError,
    ProcessSpec,
    ProcessStatus,
    private_dir,
    tcp_connectable,
)
from runtime.secrets import (
    Credentials,
    RedisAuth,
    load_credentials,
    read_authfile,
    write_secret,
)
from runtime.workers import cpu_count

#: First line of the config ``dev up`` writes (``objmail dev`` knows its run dir by it).
DEV_CONFIG_HEADER = "# Written by `objmail dev up`"

#: Zones given to the dev object servers in turn.
DEV_ZONES = ("a", "b", "c")

#: Copies of a cold blob ``dev up --tiers`` keeps on its slower tier (fewer when it has
#: fewer nodes).
DEV_COLD_COPIES = 2


def parse_dev_tiers(text: str) -> tuple[tuple[str, int], ...]:
    """``dev up --tiers FAST:N,SLOW:M`` (e.g. ``ssd:2,hdd:2``): two tiers, fastest
    first, and how many object servers each gets.

    :raises ValueError: not two ``name:count`` items with distinct names and counts >= 1.
    """
    out: list[tuple[str, int]] = []
    for item in text.split(","):
        name, sep, count = item.strip().partition(":")
        if not sep or not name or not count.isdigit() or int(count) < 1:
            raise ValueError(f"--tiers wants NAME:NODES items (ssd:2,hdd:2), got {item!r}")
        out.append((name, int(count)))
    if len(out) != 2 or out[0][0] == out[1][0]:
        raise ValueError(f"--tiers wants two tiers, fastest first (ssd:2,hdd:2), got {text!r}")
    return tuple(out)


def dev_tier_configs(tiers: Sequence[tuple[str, int]]) -> tuple[TierConfig, ...]:
    """The ``[[director.tiers]]`` of ``dev up --tiers``: a hot blob keeps one copy on the
    fast tier and one on the slow one, a cold blob :data:`DEV_COLD_COPIES` on the slow
    one (as many as it has nodes, up to that)."""
    (fast, _n), (slow, slow_nodes) = tiers
    return (TierConfig(fast, 0, 1, 0),
            TierConfig(slow, 1, 1, min(DEV_COLD_COPIES, slow_nodes)))


#: The Redis ACL user the dev cluster creates for objmail (the ``default`` user is off).
DEV_REDIS_USER = "objmail"

#: The user of the blob plane's authfile (object servers and directord).
DEV_BLOB_USER = "objmail"

#: directord's location cache in a dev cluster (``director.location_cache_entries``,
#: about 46 MB when full): on, because every Redis node and every directord of a dev
#: cluster share one host, where the cache is exact (docs/director.md, "The location
#: cache of plain items").
DEV_LOCATION_CACHE_ENTRIES = 100_000


@dataclass(frozen=True)
class DevOptions:
    """What the local cluster consists of, beyond the ports in the config."""

    objstore_count: int = 3
    #: Sites the object servers are dealt into in turn (1: all in the default site).
    sites: int = 1
    #: Storage tiers, fastest first, and their object servers (``--tiers ssd:2,hdd:2``):
    #: the first ones of ``objstore_count`` get the first tier, and so on; with them the
    #: config gets :func:`dev_tier_configs`.  Empty: every node in ``objstore.tier``.
    tiers: tuple[tuple[str, int], ...] = ()
    #: Stages to run; None = all that exist.
    only: frozenset[str] | None = None
    external_pg: bool = False
    external_redis: bool = False
    #: Trade durability for speed (tests): fsync off in PostgreSQL.
    fast: bool = False
    redis_node_timeout_ms: int = 5000
    install_missing: bool = True
    #: directord demands the blob plane's login too (off: only the object servers do,
    #: for clients that cannot log in, such as libmemcached's tools).
    directord_auth: bool = True
    #: The object servers and directord demand the blob plane's login at all (off: an
    #: open blob plane, for benchmarks that measure what the login costs).
    blob_auth: bool = True
    #: directord's location cache when the config leaves it off (0): kept off with an
    #: external Redis (``OBJMAIL_REDIS_NODES``: maybe on another host, where the cache
    #: is not proven exact) or Redis over TLS (not tracked); 0 keeps it off.
    location_cache_entries: int = DEV_LOCATION_CACHE_ENTRIES
    #: The source tree the daemons run (their working directory, which ``python -m``
    #: puts first on ``sys.path``, ahead of ``PYTHONPATH``); "" = this checkout.  A
    #: benchmark comparing two trees in one run gives each cluster its own.
    source_root: str = ""


@dataclass(frozen=True)
class DevObjstore:
    """One object server of the dev cluster; its name is also its node id.

    :param metrics_listen: where it serves its Prometheus metrics ("" = nowhere).
    """

    name: str
    host: str
    port: int
    zone: str
    data_dir: Path
    metrics_listen: str = ""
    site: str = DEFAULT_SITE
    tier: str = "ssd"


@dataclass
class Stage:
    """One kind of process and what to do once its processes run."""

    name: str
    specs: list[ProcessSpec]
    after_start: Callable[[], None] | None = None
    before_start: Callable[[], None] | None = None
    started: list[str] = field(default_factory=list)


class DevCluster:
    """A complete objmail cluster under one directory."""

    def __init__(self, config: Config, run_dir: Path, options: DevOptions | None = None) -> None:
        self.run_dir = run_dir.resolve()
        self.options = options or DevOptions()
        self.config = self._with_dev_location_cache(self._with_dev_keyring(
            self._with_dev_credentials(self._with_dev_tls(self._with_dev_tiers(config)))))
        self.launcher = Launcher(self.run_dir)
        self.config_path = self.run_dir / "objmail.toml"
        self._credentials: Credentials | None = None
        self._node_access: NodeAccess | None = None

    def _with_dev_location_cache(self, config: Config) -> Config:
        """Turn directord's location cache on (:attr:`DevOptions.location_cache_entries`)
        unless the config sets it, or Redis may be elsewhere (external) or speaks TLS.

        The cache's exactness rests on Redis writing an invalidation into the reading
        directord's socket before it answers the writer; that holds when the reader and
        every Redis node share a host (loopback), which is what a dev cluster is: its own
        Redis nodes and its directords run here."""
        entries = self.options.location_cache_entries
        if not entries or config.director.location_cache_entries \
                or self.options.external_redis or config.cluster.redis_tls:
            return config
        return dataclasses.replace(config, director=dataclasses.replace(
            config.director, location_cache_entries=entries))

    def _with_dev_tiers(self, config: Config) -> Config:
        """With ``--tiers``, the storage hierarchy of :func:`dev_tier_configs`."""
        if not self.options.tiers:
            return config
        return dataclasses.replace(config, director=dataclasses.replace(
            config.director, tiers=dev_tier_configs(self.options.tiers)))

    def _with_dev_tls(self, config: Config) -> Config:
        """Give imapd the cluster's self-signed certificate unless one is configured.

        On loopback only, plaintext LOGIN is allowed too, so that a first try with any
        client works; a real deployment keeps ``allow_plaintext_auth = false``.
        """
        imapd = config.imapd
        if imapd.tls_cert:
            return config
        cert, key = self.tls_paths
        loopback = all(parse_hostport(a)[0] in ("127.0.0.1", "::1", "localhost")
                       for a in (imapd.imap_listen, imapd.pop3_listen) if a)
        return dataclasses.replace(config, imapd=dataclasses.replace(
            imapd, tls_cert=str(cert), tls_key=str(key),
            allow_plaintext_auth=imapd.allow_plaintext_auth or loopback))

    @property
    def keyring_path(self) -> Path:
        """The dev cluster's keyring, made by :meth:`ensure_secrets` when missing."""
        return self.secrets_dir / "keyring.toml"

    def _with_dev_keyring(self, config: Config) -> Config:
        """Point the director at the cluster's own keyring unless the config names one
        (or runs without encryption on purpose): encryption is on by default."""
        director = config.director
        if director.keyring_file or director.allow_plaintext:
            return config
        return dataclasses.replace(config, director=dataclasses.replace(
            director, keyring_file=str(self.keyring_path)))

    @property
    def tls_paths(self) -> tuple[Path, Path]:
        """The dev cluster's self-signed certificate and key."""
        return self.run_dir / "tls" / "imapd-cert.pem", self.run_dir / "tls" / "imapd-key.pem"

    @property
    def secrets_dir(self) -> Path:
        """Where the generated passwords live (mode 0700, files 0600)."""
        return self.run_dir / "secrets"

    @property
    def blob_auth_path(self) -> Path:
        """The generated memcached authfile of the blob plane."""
        return self.secrets_dir / "blob-auth"

    def _with_dev_credentials(self, config: Config) -> Config:
        """Name the cluster's generated password files in its config: Redis's and
        PostgreSQL's unless the config names its own or points at servers this cluster
        does not run, and the blob plane's authfile unless the config names one."""
        cluster = config.cluster
        changes: dict[str, Any] = {}
        if not self.options.external_redis and not cluster.redis_password_file:
            changes["redis_user"] = cluster.redis_user or DEV_REDIS_USER
            changes["redis_password_file"] = str(self.secrets_dir / "redis-password")
        if not self.options.external_pg and not cluster.pg_password_file:
            changes["pg_password_file"] = str(self.secrets_dir / "pg-password")
        if changes:
            config = dataclasses.replace(config, cluster=dataclasses.replace(cluster, **changes))
        director = config.director
        if self.options.blob_auth and not (config.objstore.auth_file or director.auth_file
                                           or director.objstore_auth_file):
            blob_auth = str(self.blob_auth_path)
            config = dataclasses.replace(
                config, objstore=dataclasses.replace(config.objstore, auth_file=blob_auth),
                director=dataclasses.replace(
                    director, auth_file=blob_auth if self.options.directord_auth else "",
                    objstore_auth_file=blob_auth))
        return config

    def ensure_secrets(self) -> None:
        """Create the generated password files and keyring that do not exist yet (0600,
        in a 0700 directory); a file the config names outside :attr:`secrets_dir` is the
        operator's."""
        cluster = self.config.cluster
        for name in (cluster.redis_password_file, cluster.pg_password_file):
            path = Path(name) if name else None
            if path is not None and path.parent == self.secrets_dir and not path.exists():
                private_dir(self.secrets_dir)
                write_secret(path, token_urlsafe(32))
        director = self.config.director
        path = self.blob_auth_path
        if path in {Path(p) for p in (self.config.objstore.auth_file, director.auth_file,
                                      director.objstore_auth_file) if p} \
                and not path.exists():
            private_dir(self.secrets_dir)
            # memcached's authfile format: the object servers and directord read it as
            # such, the blob clients take its first (only) line.
            write_secret(path, f"{DEV_BLOB_USER}:{token_urlsafe(32)}")
        if Path(self.config.director.keyring_file) == self.keyring_path \
                and not self.keyring_path.exists():
            private_dir(self.secrets_dir)
            write_keyring(self.keyring_path, Keyring.generate())

    @property
    def credentials(self) -> Credentials:
        """The secrets the cluster's config names, read once (after :meth:`ensure_secrets`).

        :raises ConfigError: a secret file is missing or not private.
        """
        if self._credentials is None:
            self._credentials = load_credentials(self.config.cluster)
        return self._credentials

    def _redis_auth(self) -> RedisAuth:
        return self.credentials.redis

    @property
    def node_access(self) -> NodeAccess:
        """How a client reaches this cluster's object servers (``director.objstore_*``),
        read once (after :meth:`ensure_secrets`).

        :raises ConfigError: a file the config names is missing or malformed.
        """
        if self._node_access is None:
            self._node_access = NodeAccess.load(self.config.director)
        return self._node_access

    def directord_access(self) -> NodeAccess:
        """How a client logs in to directord: the first user of ``director.auth_file``
        (plaintext: the readiness probe of a TLS directord needs a client of its own)."""
        path = self.config.director.auth_file
        if not path:
            return OPEN_ACCESS
        user, password = read_authfile(path, "director.auth_file")[0]
        return NodeAccess(user, password)

    # -- the plan -------------------------------------------------------------------

    @property
    def pg_port(self) -> int:
        return urlsplit(self.config.cluster.pg_dsn).port or 5432

    @property
    def redis_addresses(self) -> list[tuple[str, int]]:
        return self.config.cluster.redis_startup_nodes

    @property
    def objstore_addresses(self) -> list[tuple[str, int]]:
        host, port = parse_hostport(self.config.objstore.listen)
        return [(host, port + i) for i in range(self.options.objstore_count)]

    def stages(self) -> list[Stage]:
        """Every stage in start order; each builder skips what the options exclude."""
        stages = [self._stage_postgres(), self._stage_redis(), self._stage_objstore(),
                  self._stage_directord(), self._stage_imapd()]
        return [s for s in stages
                if s is not None and (self.options.only is None or s.name in self.options.only)]

    def _stage_postgres(self) -> Stage | None:
        if self.options.external_pg:
            return None
        data = self.run_dir / "pg" / "data"
        sockdir = self.run_dir / "pg" / "sock"
        postgres = binaries.require(binaries.POSTGRES, install=self.options.install_missing)
        bindir = os.path.dirname(postgres)
        user = _postgres_user()
        port = self.pg_port
        argv = [postgres, "-D", str(data), "-p", str(port), "-k", str(sockdir),
                "-c", "listen_addresses=127.0.0.1", "-c", "max_connections=300"]
        if self.options.fast:
            argv += ["-c", "fsync=off", "-c", "synchronous_commit=off",
                     "-c", "full_page_writes=off"]
        isready = os.path.join(bindir, "pg_isready")

        def probe() -> bool:
            if not tcp_connectable("127.0.0.1", port):
                return False
            if os.path.exists(isready):
                return subprocess.run(
                    [isready, "-q", "-h", "127.0.0.1", "-p", str(port)],
                    check=False, timeout=5).returncode == 0
            return True

        def before() -> None:
            if (data / "PG_VERSION").exists():
                return
            if user is not None:
                _make_traversable(self.run_dir)
            for path in (data.parent, data, sockdir):
                private_dir(path, owner=user)
            password = self.credentials.pg_password
            if password is None:
                raise LaunchError("the dev PostgreSQL needs cluster.pg_password_file")
            # initdb reads the superuser's password from a file it can open (it runs as
            # the postgres account under root); the file goes once initdb is done.
            pwfile = data.parent / "initdb-password"
            pwfile.unlink(missing_ok=True)
            write_secret(pwfile, password)
            if user is not None:
                shutil.chown(pwfile, user, user)
            initdb = binaries.require(binaries.INITDB, install=self.options.install_missing)
            superuser = urlsplit(self.config.cluster.pg_dsn).username or "postgres"
            try:
                # scram-sha-256 for local and host connections: no client gets in without
                # the password, and the server keeps only a salted verifier of it.
                result = subprocess.run(
                    [initdb, "-D", str(data), "-U", superuser, "--auth=scram-sha-256",
                     f"--pwfile={pwfile}", "-E", "UTF8", "--no-locale", "--no-sync"],
                    user=user, capture_output=True, text=True, check=False)
            finally:
                pwfile.unlink(missing_ok=True)
            if result.returncode != 0:
                raise LaunchError(f"initdb failed for {data}:\n{result.stderr.strip()}")

        spec = ProcessSpec("postgres", "postgres", tuple(argv), (port,), probe, user=user,
                           stop_signal=signal.SIGINT, ready_timeout=60)
        return Stage("postgres", [spec], after_start=self._create_database, before_start=before)

    def _create_database(self) -> None:
        dsn = self.config.cluster.pg_dsn
        password = self.credentials.pg_password
        parts = urlsplit(dsn)
        dbname = parts.path.lstrip("/") or "postgres"
        admin_dsn = parts._replace(path="/postgres").geturl()

        async def create() -> None:
            import asyncpg

            deadline = time.monotonic() + 30
            while True:
                try:
                    conn = await asyncpg.connect(admin_dsn, password=password)
                    break
                except asyncpg.CannotConnectNowError:
                    # pg_isready can say yes a moment before the server's recovery ends.
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.1)
            try:
                exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1",
                                             dbname)
                if not exists:
                    await conn.execute(f'CREATE DATABASE "{dbname}"')
            finally:
                await conn.close()

        asyncio.run(create())
        # A usable cluster has the schema of this release (idempotent when already there).
        from metadata.migrate import migrate_dsn

        migrate_dsn(dsn, password=password)

    def _stage_redis(self) -> Stage | None:
        if self.options.external_redis:
            return None
        server = binaries.require(binaries.REDIS_SERVER, install=self.options.install_missing)
        auth_conf = self.run_dir / "redis" / "auth.conf"
        specs = []
        for host, port in self.redis_addresses:
            node_dir = self.run_dir / "redis" / str(port)
            # The ACL and replication passwords come from a 0600 file, never argv (`ps`).
            argv = [server, str(auth_conf), "--port", str(port), "--bind", host,
                    "--protected-mode", "yes",
                    "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                    "--cluster-node-timeout", str(self.options.redis_node_timeout_ms),
                    "--dir", str(node_dir), "--appendonly", "yes",
                    "--appendfsync", "everysec", "--save", "", "--daemonize", "no",
                    "--logfile", ""]
            specs.append(ProcessSpec(_redis_name(port), "redis", tuple(argv),
                                     (port, port + 10000),
                                     _redis_ping_probe(host, port, self._redis_auth),
                                     host=host, cwd=str(self.run_dir)))

        def before() -> None:
            private_dir(self.run_dir / "redis")
            for _host, port in self.redis_addresses:
                private_dir(self.run_dir / "redis" / str(port))
            _write_private(auth_conf, redis_auth_conf(self._redis_auth()))

        return Stage("redis", specs, after_start=self._form_redis_cluster, before_start=before)

    def _form_redis_cluster(self) -> None:
        """Create the cluster once; later starts just wait for it to be healthy again
        (without the nodes held stopped: the cluster fails over around them)."""
        addresses = self.redis_addresses
        auth = self._redis_auth()
        held = {(h, p) for h, p in addresses if self.launcher.held(_redis_name(p))}
        if held:
            running = [a for a in addresses if a not in held]
            wait_redis_cluster_ok(running, timeout=60, auth=auth, known=len(addresses))
            return
        infos = [_redis_cluster_info(h, p, auth) for h, p in addresses]
        formed = all(int(i.get("cluster_known_nodes", "1")) >= len(addresses) for i in infos)
        if not formed:
            if any(int(i.get("cluster_known_nodes", "1")) > 1 for i in infos):
                raise LaunchError(
                    "the Redis nodes know some but not all of each other; remove "
                    f"{self.run_dir / 'redis'} to start the Redis Cluster afresh")
            cli = binaries.require(binaries.REDIS_CLI, install=self.options.install_missing)
            replicas = "1" if len(addresses) >= 6 else "0"
            user = ["--user", auth.username] if auth.username else []
            # redis-cli takes the password from REDISCLI_AUTH: not in argv, so not in `ps`.
            env = dict(os.environ, REDISCLI_AUTH=auth.password) if auth.password else None
            result = subprocess.run(
                [cli, *user, "--cluster", "create", *[f"{h}:{p}" for h, p in addresses],
                 "--cluster-replicas", replicas, "--cluster-yes"],
                capture_output=True, text=True, check=False, timeout=120, env=env)
            if result.returncode != 0:
                raise LaunchError(
                    f"redis-cli --cluster create failed:\n{result.stdout[-2000:]}"
                    f"{result.stderr[-2000:]}")
        wait_redis_cluster_ok(addresses, timeout=60, auth=auth)
        wait_redis_replicas(addresses, timeout=60, auth=auth)

    def _stage_objstore(self) -> Stage | None:
        specs = [self.objstored_spec(n.name, n.host, n.port, n.data_dir, zone=n.zone,
                                     metrics_listen=n.metrics_listen,
                                     extra_args=("--site", n.site, "--tier", n.tier))
                 for n in self.dev_objstores()]
        if not specs:
            return None

        def before() -> None:
            for n in self.dev_objstores():
                private_dir(n.data_dir)

        return Stage("objstore", specs, after_start=self._register_objstores,
                     before_start=before)

    def _register_objstores(self) -> None:
        """Add the dev object servers to the registry (what ``objmail node add`` does)
        and wait until each reports, so the cluster takes blobs once ``up`` returns."""
        from director.nodes import NodeState
        from director.redisstate import RedisState

        wanted = self.dev_objstores()
        held = {n.name for n in wanted if self.launcher.held(n.name)}

        async def register() -> None:
            state = await RedisState.open(self.config.cluster, self.config.director,
                                          auth=self._redis_auth())
            try:
                known = {n.id: n for n in (await state.registry.snapshot()).nodes}
                for n in wanted:
                    if n.name not in known:
                        await state.registry.add(n.name, f"{n.host}:{n.port}", zone=n.zone,
                                                 tier=n.tier, site=n.site)
                deadline = time.monotonic() + 30
                while True:
                    nodes = {n.id: n for n in (await state.registry.snapshot()).nodes}
                    # Held ones (objmail dev stop) stay down: no report to wait for.
                    waiting = [n.name for n in wanted if n.name not in held
                               and nodes[n.name].state is not NodeState.ACTIVE]
                    if not waiting:
                        return
                    if time.monotonic() > deadline:
                        raise LaunchError(
                            f"object servers registered but not reporting to Redis: "
                            f"{', '.join(waiting)}; see their logs in {self.launcher.log_dir}")
                    await asyncio.sleep(0.2)
            finally:
                await state.aclose()

        asyncio.run(register())

    def dev_objstores(self) -> list[DevObjstore]:
        """The object servers of this cluster: ``objstored-<n>`` in zones a, b, c...,
        serving metrics on consecutive ports from ``objstore.metrics_listen``'s (9111,
        9112... by default), as they listen on consecutive ports from ``objstore.listen``."""
        metrics = self.config.objstore.metrics_listen
        tiers = [name for name, count in self.options.tiers for _ in range(count)]
        out = []
        for i, (host, port) in enumerate(self.objstore_addresses, start=1):
            if metrics:
                mhost, mport = parse_hostport(metrics)
                metrics_listen = f"{mhost}:{mport + i - 1}"
            else:
                metrics_listen = ""
            sites = self.options.sites
            out.append(DevObjstore(f"objstored-{i}", host, port,
                                   DEV_ZONES[(i - 1) % len(DEV_ZONES)],
                                   self.run_dir / "objstore" / str(i), metrics_listen,
                                   f"s{(i - 1) % sites + 1}" if sites > 1 else DEFAULT_SITE,
                                   tiers[i - 1] if i <= len(tiers)
                                   else self.config.objstore.tier))
        return out

    @property
    def source_root(self) -> str:
        """Where the daemons' code is (:attr:`DevOptions.source_root`)."""
        return str(Path(self.options.source_root).resolve() if self.options.source_root
                   else _project_root())

    def objstored_spec(self, name: str, host: str, port: int, data_dir: Path, *,
                       zone: str, extra_args: Sequence[str] = (),
                       config_path: Path | None = None,
                       metrics_listen: str = "") -> ProcessSpec:
        """One object server; also used by tests that need a special one (which serve no
        metrics unless given where: the config's port belongs to ``objstored-1``)."""
        return objstored_process_spec(name, host, port, data_dir,
                                      config_path or self.config_path,
                                      ["--node-id", name, "--zone", zone, *extra_args],
                                      metrics_listen=metrics_listen,
                                      access=lambda: self.node_access,
                                      cwd=self.source_root)

    def _stage_directord(self) -> Stage | None:
        # It fronts this cluster's object servers: none (--objstores 0, only the
        # databases wanted), no proxy.
        if self.options.objstore_count == 0:
            return None
        host, port = parse_hostport(self.config.director.listen)
        return Stage("directord", [self.directord_spec(host, port)])

    def directord_spec(self, host: str, port: int, *, name: str = "directord",
                       config_path: Path | None = None) -> ProcessSpec:
        """The memcached proxy; ready when it answers ``version`` (it opens its port only
        once Redis Cluster is reachable).  With ``director.workers`` above 1 every
        worker's metrics port (``metrics_listen``'s + its index) must be free too."""
        argv = [sys.executable, "-m", "director.main", "--config",
                str(config_path or self.config_path), "--listen", f"{host}:{port}"]
        ports = [port]
        if self.config.director.metrics_listen:
            metrics = parse_hostport(self.config.director.metrics_listen)[1]
            workers = self.config.director.workers or cpu_count()
            ports += [metrics + i for i in range(workers)]
        return ProcessSpec(name, "directord", tuple(argv), tuple(ports),
                           memcache_version_probe(host, port, self.directord_access),
                           host=host, cwd=self.source_root, ready_timeout=60)

    def _stage_imapd(self) -> Stage | None:
        # The mailbox server needs object servers to serve anything.
        if self.options.objstore_count == 0:
            return None

        def before() -> None:
            cert, key = self.tls_paths
            if cert.exists() and key.exists():
                return
            openssl = binaries.require(binaries.OPENSSL, install=self.options.install_missing)
            private_dir(cert.parent)
            result = subprocess.run(
                [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "825",
                 "-subj", "/CN=localhost", "-addext",
                 "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key),
                 "-out", str(cert)], capture_output=True, text=True, check=False)
            if result.returncode != 0:
                raise LaunchError(f"openssl could not make the dev certificate:\n"
                                  f"{result.stderr.strip()}")
            key.chmod(0o600)

        return Stage("imapd", [self.imapd_spec()], before_start=before)

    def imapd_spec(self, *, name: str = "imapd", config: Config | None = None,
                   config_path: Path | None = None) -> ProcessSpec:
        """The mailbox server (IMAP, IMAPS, POP3, LMTP); ready when it greets ``* OK``."""
        conf = (config or self.config).imapd
        addresses = [a for a in (conf.imap_listen, conf.pop3_listen, conf.lmtp_listen,
                                 conf.imaps_listen if conf.tls_cert else "",
                                 conf.metrics_listen) if a]
        host, port = parse_hostport(conf.imap_listen)
        argv = [sys.executable, "-m", "imapd.main", "--config",
                str(config_path or self.config_path)]
        return ProcessSpec(name, "imapd", tuple(argv),
                           tuple(parse_hostport(a)[1] for a in addresses),
                           _greeting_probe(host, port, b"* OK "), host=host,
                           cwd=self.source_root, ready_timeout=60)

    # -- operations -----------------------------------------------------------------

    def write_config(self) -> Path:
        """The config every daemon of this cluster reads (``var/objmail.toml``), and the
        password files and keyring it names."""
        self.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.ensure_secrets()
        text = (f"{DEV_CONFIG_HEADER}; every daemon of this cluster reads it.\n"
                + to_toml(self.config))
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(self.config_path)
        return self.config_path

    def up(self, progress: Callable[[str], None] = lambda _msg: None) -> list[str]:
        """Start every process that is not running, except those the operator stopped
        with :meth:`stop_named` (held: named in ``progress``, left stopped); return the
        names of those started.

        :raises LaunchError: a port is taken, a process failed, or a step failed;
            the message names the part and its log.
        """
        self.write_config()
        stages = self.stages()
        held = {spec.name for st in stages for spec in st.specs
                if self.launcher.held(spec.name)}
        # Check every port before starting anything, so a clash leaves nothing behind.
        self.launcher.check_ports([s for st in stages for s in st.specs if s.name not in held])
        started: list[str] = []
        for stage in stages:
            for name in sorted(held.intersection(s.name for s in stage.specs)):
                progress(f"{name}: held (stopped with objmail dev stop); objmail dev start "
                         f"{name} starts it")
            wanted = [s for s in stage.specs if s.name not in held]
            if wanted:
                started += self._start_stage(stage, wanted, progress)
        return started

    def _start_stage(self, stage: Stage, specs: Sequence[ProcessSpec],
                     progress: Callable[[str], None]) -> list[str]:
        """Start ``specs`` of ``stage`` (those not running), with the stage's steps."""
        if stage.before_start is not None:
            stage.before_start()
        started = []
        for spec in specs:
            progress(f"{spec.name}: starting on port {spec.port}")
            t0 = time.monotonic()
            if self.launcher.start(spec):
                started.append(spec.name)
                progress(f"{spec.name}: ready in {time.monotonic() - t0:.1f}s")
            else:
                progress(f"{spec.name}: already running")
        if stage.after_start is not None:
            stage.after_start()
        return started

    def down(self, progress: Callable[[str], None] = lambda _msg: None) -> list[str]:
        """Stop every process this cluster started (reverse order) and forget which were
        held, so the next :meth:`up` starts everything.

        :raises LaunchError: some process survived SIGKILL (the others were stopped).
        """
        stopped: list[str] = []
        failed: list[str] = []
        for stage in reversed(self.stages()):
            for spec in reversed(stage.specs):
                try:
                    if self.launcher.stop(spec):
                        stopped.append(spec.name)
                        progress(f"{spec.name}: stopped")
                except LaunchError as exc:
                    failed.append(str(exc))
                    progress(f"{spec.name}: {exc}")
                self.launcher.release(spec.name)
        if failed:
            raise LaunchError("; ".join(failed))
        return stopped

    # -- one component ----------------------------------------------------------------

    def select(self, names: Sequence[str]) -> list[tuple[Stage, list[ProcessSpec]]]:
        """The processes ``names`` mean, by stage in start order: a process name
        (``objstored-2``), a kind (``objstored``, ``redis``) or a stage (``objstore``).

        :raises KeyError: a name that is none of these (the message lists the names).
        """
        stages = self.stages()
        wanted: set[str] = set()
        for name in names:
            hit = {spec.name for st in stages for spec in st.specs
                   if name in (spec.name, spec.kind, st.name)}
            if not hit:
                known = ", ".join(spec.name for st in stages for spec in st.specs)
                raise KeyError(f"no process {name!r} in this cluster (one of: {known}, or a "
                               "kind such as objstored, redis)")
            wanted |= hit
        return [(st, [s for s in st.specs if s.name in wanted]) for st in stages
                if any(s.name in wanted for s in st.specs)]

    def stop_named(self, names: Sequence[str],
                   progress: Callable[[str], None] = lambda _msg: None) -> list[str]:
        """Stop the processes ``names`` mean and hold them: :meth:`up` leaves them
        stopped until :meth:`start_named` (or :meth:`down`, which forgets every hold)."""
        stopped = []
        for _stage, specs in reversed(self.select(names)):
            for spec in reversed(specs):
                self.launcher.hold(spec.name)
                if self.launcher.stop(spec):
                    stopped.append(spec.name)
                    progress(f"{spec.name}: stopped (held until objmail dev start "
                             f"{spec.name})")
                else:
                    progress(f"{spec.name}: was not running (held until objmail dev start "
                             f"{spec.name})")
        return stopped

    def start_named(self, names: Sequence[str],
                    progress: Callable[[str], None] = lambda _msg: None) -> list[str]:
        """Release and start the processes ``names`` mean (those not running), with
        their stage's steps (a registration, the Redis Cluster's health)."""
        selected = self.select(names)
        self.write_config()
        self.launcher.check_ports([s for _st, specs in selected for s in specs])
        started = []
        for stage, specs in selected:
            for spec in specs:
                self.launcher.release(spec.name)
            started += self._start_stage(stage, specs, progress)
        return started

    def status(self) -> list[ProcessStatus]:
        return [self.launcher.status(spec) for stage in self.stages() for spec in stage.specs]

    def spec(self, name: str) -> ProcessSpec:
        for stage in self.stages():
            for spec in stage.specs:
                if spec.name == name:
                    return spec
        raise KeyError(name)


def objstored_process_spec(name: str, host: str, port: int, data_dir: Path,
                           config_path: Path, extra_args: Sequence[str] = (), *,
                           env: Mapping[str, str] | None = None,
                           metrics_listen: str = "",
                           access: Callable[[], NodeAccess] = lambda: OPEN_ACCESS,
                           cwd: str = "") -> ProcessSpec:
    """How the launcher runs one objstored (``python -m objstore.main``), ready once it
    answers ``version``: the dev cluster's object servers and the tests' own.

    :param metrics_listen: where it serves metrics; "" for nowhere (several object
        servers share the host, so the config's one address cannot serve them all).
    :param access: how the readiness probe connects (credentials, TLS), asked at each
        probe.
    """
    argv = [sys.executable, "-m", "objstore.main", "--listen", f"{host}:{port}",
            "--data", str(data_dir), "--config", str(config_path),
            "--metrics-listen", metrics_listen, *extra_args]
    ports = (port, parse_hostport(metrics_listen)[1]) if metrics_listen else (port,)
    return ProcessSpec(name, "objstored", tuple(argv), ports,
                       memcache_version_probe(host, port, access), host=host,
                       env=dict(env or {}), cwd=cwd or str(_project_root()))


def wait_redis_cluster_ok(addresses: Sequence[tuple[str, int]], timeout: float, *,
                          auth: RedisAuth, known: int | None = None) -> None:
    """Wait until every node says ``cluster_state:ok`` and knows all the others (or
    ``known`` nodes, when some of the cluster's nodes are not among ``addresses``)."""
    deadline = time.monotonic() + timeout
    known = len(addresses) if known is None else known
    while True:
        infos = [_redis_cluster_info(h, p, auth) for h, p in addresses]
        if all(i.get("cluster_state") == "ok"
               and int(i.get("cluster_known_nodes", "0")) >= known for i in infos):
            return
        if time.monotonic() > deadline:
            bad = [f"{h}:{p} ({i.get('cluster_state', 'unreachable')})"
                   for (h, p), i in zip(addresses, infos, strict=True)
                   if i.get("cluster_state") != "ok"]
            raise LaunchError(f"Redis Cluster not ok after {timeout:.0f}s: {', '.join(bad)}")
        time.sleep(0.2)


def wait_redis_replicas(addresses: Sequence[tuple[str, int]], timeout: float, *,
                        auth: RedisAuth) -> None:
    """Wait until every master has an online replica.

    The cluster says ``ok`` as soon as the slots are served, while replicas may still
    be in their first sync and cannot acknowledge a ``WAIT`` yet; the director's
    durable writes need them.
    """
    import redis

    deadline = time.monotonic() + timeout
    for host, port in addresses:
        client = redis.Redis(host=host, port=port, decode_responses=True, socket_timeout=2,
                             **auth.client_kwargs())
        try:
            while True:
                info = client.info("replication")
                if info["role"] != "master" or any(
                        isinstance(v, dict) and v.get("state") == "online"
                        for k, v in info.items() if k.startswith("slave")):
                    break
                if time.monotonic() > deadline:
                    raise LaunchError(f"Redis master {host}:{port}: no replica came online "
                                      f"after {timeout:.0f}s")
                time.sleep(0.1)
        finally:
            client.close()


def _redis_cluster_info(host: str, port: int, auth: RedisAuth) -> dict[str, str]:
    import redis

    try:
        client = redis.Redis(host=host, port=port, socket_timeout=2, socket_connect_timeout=2,
                             **auth.client_kwargs())
        try:
            raw = client.execute_command("CLUSTER", "INFO")
        finally:
            client.close()
    except redis.RedisError:
        return {}
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


def _redis_name(port: int) -> str:
    return f"redis-{port}"


def redis_auth_conf(auth: RedisAuth) -> str:
    """The dev Redis's ACL and replication settings (a config file, mode 0600).

    objmail's user may do everything (``~* &* +@all``); the server keeps only the SHA-256
    of its password.  The ``default`` user is off, so a client that does not
    authenticate can run no command.  Replicas authenticate to their master as the same
    user (``masteruser``/``masterauth``), so replication and failover keep working.
    """
    if auth.password is None:
        raise LaunchError("the dev Redis needs cluster.redis_password_file")
    digest = hashlib.sha256(auth.password.encode()).hexdigest()
    user = auth.username or "default"
    lines = ["# Written by `objmail dev up`: who may use this Redis.",
             "protected-mode yes"]
    if user != "default":
        lines.append("user default off")
    lines += [f"user {user} on #{digest} ~* &* +@all",
              f"masterauth {_redis_conf_quote(auth.password)}"]
    if user != "default":
        lines.append(f"masteruser {user}")
    return "\n".join(lines) + "\n"


def _redis_conf_quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _write_private(path: Path, text: str) -> None:
    """Replace ``path`` atomically with ``text``, mode 0600 from its creation."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    tmp.replace(path)


def _redis_ping_probe(host: str, port: int,
                      auth: Callable[[], RedisAuth]) -> Callable[[], bool]:
    def probe() -> bool:
        import redis

        client = redis.Redis(host=host, port=port, socket_timeout=1, socket_connect_timeout=1,
                             **auth().client_kwargs())
        try:
            return bool(client.ping())
        finally:
            client.close()

    return probe


def memcache_version_probe(host: str, port: int,
                           access: Callable[[], NodeAccess]) -> Callable[[], bool]:
    """A probe that connects as ``access()`` says (TLS) and is true once the server
    answers ``version``, logging in first when the server asks for it (as the blob
    client does: credentials never go to a server that would store them)."""
    def probe() -> bool:
        import socket

        how = access()
        with socket.create_connection((host, port), timeout=1) as raw:
            sock = (how.tls.wrap_socket(raw, server_hostname=host) if how.tls is not None
                    else raw)
            sock.sendall(b"version\r\n")
            reply = _read_line(sock)
            if reply == b"CLIENT_ERROR unauthenticated\r\n" and how.user:
                sock.sendall(b"".join(auth_request(how.user, how.password)))
                if _read_line(sock) != b"STORED\r\n":
                    return False
                sock.sendall(b"version\r\n")
                reply = _read_line(sock)
            return reply.startswith(b"VERSION ")

    return probe


def _read_line(sock: Any) -> bytes:
    line = b""
    while not line.endswith(b"\n") and len(line) < 256:
        chunk = sock.recv(256 - len(line))
        if not chunk:
            break
        line += chunk
    return line


def _greeting_probe(host: str, port: int, prefix: bytes) -> Callable[[], bool]:
    def probe() -> bool:
        import socket

        with socket.create_connection((host, port), timeout=1) as sock:
            return sock.recv(256).startswith(prefix)

    return probe


def _postgres_user() -> str | None:
    """PostgreSQL refuses to run as root: run it as the 'postgres' account then."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise LaunchError("running as root, PostgreSQL needs the 'postgres' account, "
                          "which the Debian package 'postgresql' creates") from None
    return "postgres"


def _make_traversable(path: Path) -> None:
    # The postgres account must reach its data dir under our (root-owned) run dir;
    # temporary directories are created 0700.
    for p in [path, *path.parents]:
        if p == Path("/"):
            break
        try:
            mode = p.stat().st_mode
            if not mode & 0o001:
                os.chmod(p, mode | 0o011)
        except PermissionError:
            break


def _project_root() -> Path:
    return Path(__file__).resolve().parent.parent

"""System tests of the local cluster launcher against real PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import dataclasses
import imaplib
import json
import os
import random
import smtplib
import socket
import stat
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest
import redis
from redis.cluster import RedisCluster

from ops.config import ClusterConfig, Config, parse_hostport
from ops.devcluster import (
    DEV_BLOB_USER,
    DEV_REDIS_USER,
    DevCluster,
    DevOptions,
    wait_redis_replicas,
)
from ops.launcher import (
    LaunchError,
    ephemeral_port_range,
    free_port,
    free_port_block,
    port_in_use,
)
from tests.conftest import CORPUS, RunningRedis, SessionCluster, make_test_config
from tests.imapd_process import Mail, self_signed, start_imapd


def test_redis_cluster_spreads_keys_over_three_masters(redis_cluster: RunningRedis) -> None:
    """Keys written through RedisCluster land on all three masters and read back."""
    host, port = parse_hostport(redis_cluster.nodes[0])
    rc = RedisCluster(host=host, port=port, decode_responses=True,
                      **redis_cluster.auth.client_kwargs())
    try:
        masters = {f"{n.host}:{n.port}" for n in rc.get_primaries()}
        assert len(masters) == 3
        seen: set[str] = set()
        for i in range(200):
            key = f"objmail:test:{i}"
            rc.set(key, f"value-{i}")
            seen.add(f"{rc.get_node_from_key(key).host}:{rc.get_node_from_key(key).port}")
        assert seen == masters
        for i in range(200):
            assert rc.get(f"objmail:test:{i}") == f"value-{i}"
    finally:
        rc.close()


def test_postgres_table_roundtrip(postgres: str) -> None:
    """A table created in the launched PostgreSQL holds what was written to it."""

    async def run() -> list[tuple[int, str]]:
        conn = await asyncpg.connect(postgres)
        try:
            await conn.execute("CREATE TEMP TABLE t (id int PRIMARY KEY, name text)")
            await conn.executemany("INSERT INTO t VALUES ($1, $2)", [(1, "a"), (2, "ü")])
            rows = await conn.fetch("SELECT id, name FROM t ORDER BY id")
            return [(r["id"], r["name"]) for r in rows]
        finally:
            await conn.close()

    assert asyncio.run(run()) == [(1, "a"), (2, "ü")]


def _processes_mentioning(needles: list[str]) -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(n in cmd for n in needles):
            found.append(f"{pid}: {cmd}")
    return found


@pytest.fixture
def own_cluster(tmp_path: Path) -> DevCluster:
    """A cluster of PostgreSQL + Redis of this test alone."""
    config = make_test_config()
    return DevCluster(config, tmp_path / "var",
                      DevOptions(only=frozenset({"postgres", "redis"}), fast=True,
                                 redis_node_timeout_ms=2000))


def _needles(cluster: DevCluster) -> list[str]:
    ports = [p for _h, p in cluster.redis_addresses]
    return [f"127.0.0.1:{p} [cluster]" for p in ports] + [str(cluster.run_dir / "pg")]


@pytest.mark.system
def test_up_is_idempotent_and_down_leaves_nothing(own_cluster: DevCluster) -> None:
    """up starts everything once, a second up starts nothing, down leaves no process."""
    try:
        started = own_cluster.up()
        assert len(started) == 7
        assert all(s.state == "healthy" for s in own_cluster.status())
        pids = {s.name: s.pid for s in own_cluster.status()}
        assert own_cluster.up() == []
        assert {s.name: s.pid for s in own_cluster.status()} == pids
    finally:
        stopped = own_cluster.down()
    assert len(stopped) == 7
    assert _processes_mentioning(_needles(own_cluster)) == []
    assert all(s.state == "stopped" for s in own_cluster.status())
    for _host, port in own_cluster.redis_addresses:
        assert not port_in_use("127.0.0.1", port)


@pytest.mark.system
def test_restart_after_down_reuses_data(own_cluster: DevCluster) -> None:
    """After down, up brings the same Redis Cluster back with its data."""
    host, port = own_cluster.redis_addresses[0]
    try:
        own_cluster.up()
        rc = RedisCluster(host=host, port=port, **own_cluster.credentials.redis.client_kwargs())
        rc.set("objmail:test:persist", b"kept")
        rc.close()
        # Redis rewrites its AOF on a clean shutdown, so the key survives.
        own_cluster.down()
        own_cluster.up()
        rc = RedisCluster(host=host, port=port, **own_cluster.credentials.redis.client_kwargs())
        assert rc.get("objmail:test:persist") == b"kept"
        rc.close()
    finally:
        own_cluster.down()


@pytest.mark.system
def test_port_taken_is_named(own_cluster: DevCluster) -> None:
    """up refuses to start when a port is taken, names the port, and starts nothing."""
    _host, port = own_cluster.redis_addresses[2]
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", port))
    blocker.listen()
    try:
        with pytest.raises(LaunchError, match=f"port {port} "):
            own_cluster.up()
        assert all(s.state == "stopped" for s in own_cluster.status())
    finally:
        blocker.close()
        own_cluster.down()


@pytest.mark.system
def test_cli_up_status_down(tmp_path: Path) -> None:
    """`objmail dev up/status/down` work from the command line with their exit codes."""
    config = make_test_config()
    conf = tmp_path / "objmail.toml"
    redis_nodes = ", ".join(f'"{n}"' for n in config.cluster.redis_nodes)
    conf.write_text(f'[cluster]\npg_dsn = "{config.cluster.pg_dsn}"\n'
                    f"redis_nodes = [{redis_nodes}]\n")
    run_dir = tmp_path / "var"
    # Only PostgreSQL and Redis here: external servers are not started at all.
    env = dict(os.environ, OBJMAIL_CONFIG=str(conf))
    env.pop("OBJMAIL_PG_DSN", None)
    env.pop("OBJMAIL_REDIS_NODES", None)

    def objmail(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "ops.cli", *args], env=env,
                              capture_output=True, text=True, timeout=180, check=False)

    try:
        up = objmail("dev", "up", "--dir", str(run_dir), "--objstores", "0")
        assert up.returncode == 0, up.stderr
        # Its own Redis on this host: directord's location cache is on (DevOptions).
        assert "location_cache_entries = 100000" in (run_dir / "objmail.toml").read_text()
        status = objmail("dev", "status", "--dir", str(run_dir), "--objstores", "0")
        assert status.returncode == 0, status.stdout + status.stderr
        assert status.stdout.count("healthy") == 7
    finally:
        down = objmail("dev", "down", "--dir", str(run_dir), "--objstores", "0")
    assert down.returncode == 0
    assert "stopped 7 process(es)" in down.stdout


def test_env_override_points_at_existing_servers(test_cluster) -> None:
    """OBJMAIL_PG_DSN / OBJMAIL_REDIS_NODES mean: use those, start no PostgreSQL or Redis."""
    config = dataclasses.replace(test_cluster.config, cluster=ClusterConfig())
    cluster = DevCluster(config, Path("/nonexistent"),
                         DevOptions(external_pg=True, external_redis=True, objstore_count=0))
    assert cluster.stages() == []


@pytest.mark.system
def test_whole_cluster_up_twice_status_down(tmp_path: Path) -> None:
    """Every kind of process comes up healthy, a second up changes nothing, and down
    leaves no process of the cluster behind."""
    config = make_test_config()
    cluster = DevCluster(config, tmp_path / "var",
                         DevOptions(fast=True, redis_node_timeout_ms=2000))
    try:
        started = cluster.up()
        kinds = {s.kind for s in cluster.status()}
        assert kinds == {"postgres", "redis", "objstored", "directord", "imapd"}
        assert len(started) == 12
        assert all(s.state == "healthy" for s in cluster.status()), cluster.status()
        pids = {s.name: s.pid for s in cluster.status()}
        assert cluster.up() == []
        assert {s.name: s.pid for s in cluster.status()} == pids
    finally:
        stopped = cluster.down()
    assert len(stopped) == 12
    assert all(s.state == "stopped" for s in cluster.status())
    leftovers = _processes_mentioning([*_needles(cluster), str(cluster.run_dir)])
    assert leftovers == []


def test_dev_objstores_get_their_own_metrics_ports(tmp_path: Path) -> None:
    """objstored-n serves metrics on objstore.metrics_listen's port + n - 1 (9111, 9112,
    9113 by default), passed on its command line and checked as one of its ports; one
    started specially serves none unless told where."""
    from ops.config import Config

    cluster = DevCluster(Config(), tmp_path, DevOptions(objstore_count=3))
    specs = [cluster.spec(f"objstored-{n}") for n in (1, 2, 3)]
    for n, spec in enumerate(specs, start=1):
        at = spec.argv.index("--metrics-listen")
        assert spec.argv[at + 1] == f"127.0.0.1:{9110 + n}"
        assert spec.ports == (11210 + n, 9110 + n)
    special = cluster.objstored_spec("x", "127.0.0.1", 1, tmp_path, zone="a")
    assert special.argv[special.argv.index("--metrics-listen") + 1] == ""
    assert special.ports == (1,)


def test_dev_directord_checks_every_workers_metrics_port(tmp_path: Path) -> None:
    """directord's spec claims its port and, per worker, metrics_listen's port + its
    index (9101 alone with the default one worker; 9101..9103 with three)."""
    import dataclasses

    from ops.config import Config

    cluster = DevCluster(Config(), tmp_path, DevOptions(objstore_count=3))
    assert cluster.spec("directord").ports == (11311, 9101)
    config = Config()
    config = dataclasses.replace(config, director=dataclasses.replace(config.director,
                                                                      workers=3))
    spec = DevCluster(config, tmp_path, DevOptions(objstore_count=3)).spec("directord")
    assert spec.ports == (11311, 9101, 9102, 9103)


def test_dev_directord_runs_with_the_location_cache(tmp_path: Path) -> None:
    """`objmail dev up` turns directord's location cache on (every Redis node and
    directord on this host, where it is exact), unless the config sets it, the options
    say 0, Redis is external (maybe another host) or speaks TLS."""
    from ops.config import Config
    from ops.devcluster import DEV_LOCATION_CACHE_ENTRIES

    def entries(config: Config, **options: object) -> int:
        cluster = DevCluster(config, tmp_path, DevOptions(**options))  # type: ignore[arg-type]
        return cluster.config.director.location_cache_entries

    config = Config()
    assert entries(config) == DEV_LOCATION_CACHE_ENTRIES > 0
    assert entries(config, location_cache_entries=5000) == 5000
    assert entries(config, location_cache_entries=0) == 0
    assert entries(config, external_redis=True) == 0
    assert entries(dataclasses.replace(config, cluster=dataclasses.replace(
        config.cluster, redis_tls=True))) == 0
    assert entries(dataclasses.replace(config, director=dataclasses.replace(
        config.director, location_cache_entries=77))) == 77


def test_daemons_run_the_source_tree_they_are_given(tmp_path: Path) -> None:
    """Every Python daemon starts in ``DevOptions.source_root`` (``python -m`` puts its
    working directory ahead of ``PYTHONPATH``, so that is the code it runs), and in this
    checkout when none is given."""
    from ops.config import Config

    checkout = str(Path(__file__).resolve().parent.parent)
    tree = tmp_path / "before"
    tree.mkdir()
    for options, expected in ((DevOptions(), checkout),
                              (DevOptions(source_root=str(tree)), str(tree))):
        cluster = DevCluster(Config(), tmp_path, options)
        for name in ("objstored-1", "directord", "imapd"):
            spec = cluster.spec(name)
            assert spec.argv[1] == "-m" and spec.cwd == expected, (name, spec.cwd)


def test_free_ports_stay_out_of_the_ephemeral_range() -> None:
    """Ports handed to servers never come from the range the kernel picks outgoing
    connections' local ports from: a client reconnecting to a killed server there can
    take its port, and the restart then finds it "already in use" (as a CI run did)."""
    low, high = ephemeral_port_range()
    rng = random.Random(7)
    for _ in range(200):
        base = free_port_block(6, bus_offset=10000, rng=rng)
        for port in [*range(base, base + 6), *range(base + 10000, base + 10006)]:
            assert not low <= port <= high, port
            assert not port_in_use("127.0.0.1", port)
        assert not low <= free_port() <= high


def test_redis_refuses_clients_without_credentials(redis_cluster: RunningRedis) -> None:
    """The launcher's Redis runs no command for a client that has not authenticated, nor
    for a wrong password or the disabled default user; objmail's ACL user gets in, and
    the replicas, authenticating as that user, stay online."""
    host, port = parse_hostport(redis_cluster.nodes[0])
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(b"PING\r\nGET objmail:x\r\n")
        answer = b""
        while answer.count(b"\r\n") < 2:
            answer += sock.recv(4096)
    assert answer.startswith(b"-NOAUTH ") and answer.count(b"-NOAUTH ") == 2, answer
    password = redis_cluster.auth.password
    assert password is not None and redis_cluster.auth.username == DEV_REDIS_USER
    refused: list[tuple[str | None, str | None]] = [
        (None, None), (None, "wrong"), (DEV_REDIS_USER, "wrong"), ("default", password)]
    for username, wrong in refused:
        client = redis.Redis(host=host, port=port, socket_timeout=5, username=username,
                             password=wrong)
        try:
            with pytest.raises(redis.AuthenticationError):
                client.ping()
        finally:
            client.close()
    with pytest.raises(redis.RedisClusterException, match="HELLO must be called"):
        RedisCluster(host=host, port=port, socket_timeout=5)
    client = redis.Redis(host=host, port=port, socket_timeout=5,
                         **redis_cluster.auth.client_kwargs())
    try:
        assert client.ping()
        assert client.config_get("protected-mode") == {"protected-mode": "yes"}
    finally:
        client.close()
    wait_redis_replicas(redis_cluster.cluster.redis_addresses, timeout=5,
                        auth=redis_cluster.auth)


def test_postgres_refuses_connections_without_the_password(
        postgres: str, test_cluster: SessionCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """The launcher's PostgreSQL (scram-sha-256 for every connection) refuses a client
    without the password or with a wrong one, and keeps only a SCRAM verifier of it."""
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", "/nonexistent")
    dsn = test_cluster.pg_dsn
    password = test_cluster.credentials.pg_password
    assert password is not None and password not in dsn

    async def run() -> tuple[list[str], str]:
        for wrong in (None, "", "wrong"):
            with pytest.raises(asyncpg.InvalidPasswordError):
                await asyncpg.connect(dsn, password=wrong)
        conn = await asyncpg.connect(dsn, password=password)
        try:
            methods = await conn.fetch("SELECT DISTINCT auth_method FROM pg_hba_file_rules")
            verifier = await conn.fetchval(
                "SELECT rolpassword FROM pg_authid WHERE rolname = current_user")
        finally:
            await conn.close()
        return [r["auth_method"] for r in methods], verifier

    methods, verifier = asyncio.run(run())
    assert methods == ["scram-sha-256"]
    assert verifier.startswith("SCRAM-SHA-256$") and password not in verifier


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_secrets_logs_and_data_are_private(postgres: str, redis_cluster: RunningRedis,
                                           test_cluster: SessionCluster) -> None:
    """The generated passwords and keyring are 0600 files in a 0700 directory, and the
    config names the keyring; logs, Redis and PostgreSQL data are in 0700 directories
    and nothing in them is readable by group or others; no password shows in the config
    or in any process's command line (ps)."""
    run_dir = test_cluster.run_dir
    cluster = test_cluster.config.cluster
    secret_files = [Path(cluster.redis_password_file), Path(cluster.pg_password_file),
                    Path(test_cluster.config.director.keyring_file)]
    assert {p.parent for p in secret_files} == {run_dir / "secrets"}
    assert _mode(run_dir / "secrets") == 0o700
    assert all(_mode(p) == 0o600 for p in secret_files)
    assert _mode(run_dir / "redis" / "auth.conf") == 0o600
    trees = [run_dir / "secrets", run_dir / "log", run_dir / "redis", run_dir / "pg"]
    exposed = []
    for tree in trees:
        assert _mode(tree) == 0o700, tree
        for root, dirs, files in os.walk(tree):
            for name in dirs + files:
                path = Path(root) / name
                mode = path.lstat().st_mode
                # A socket's own mode is moot inside a 0700 directory.
                if mode & 0o077 and not stat.S_ISSOCK(mode):
                    exposed.append(f"{stat.S_IMODE(mode):04o} {path}")
    assert exposed == []
    assert _mode(run_dir / "pg" / "data") == 0o700
    passwords = [test_cluster.credentials.pg_password, redis_cluster.auth.password]
    assert all(passwords)
    config_text = (run_dir / "objmail.toml").read_text()
    assert str(secret_files[0]) in config_text
    assert not any(p in config_text for p in passwords if p)
    for pid in os.listdir("/proc"):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        assert not any(p in cmdline for p in passwords if p), f"password in ps: {pid}"


@pytest.mark.system
def test_stop_holds_one_process_until_started(own_cluster: DevCluster,
                                              capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """`objmail --config F dev ...` works on the cluster F belongs to (its run dir, not
    ./var); `dev stop NAME` stops that process alone and holds it: `dev up` leaves it
    stopped and names it, `dev start NAME` brings it back, `dev down` forgets the hold."""
    from ops.cli import EX_OK, EX_UNAVAILABLE, main

    for name in ("OBJMAIL_PG_DSN", "OBJMAIL_REDIS_NODES", "OBJMAIL_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(own_cluster.run_dir.parent)  # ./var exists, but is another dir
    (own_cluster.run_dir.parent / "var" / "run").mkdir(parents=True, exist_ok=True)

    def dev(*args: str) -> tuple[int, str]:
        capsys.readouterr()
        code = main(["--config", str(own_cluster.config_path), "dev", *args,
                     "--objstores", "0"])
        return code, capsys.readouterr().out

    try:
        own_cluster.up()
        code, out = dev("status", "--json")
        assert code == EX_OK, out
        states = {row["name"]: row["state"] for row in json.loads(out)}
        assert len(states) == 7 and set(states.values()) == {"healthy"}
        pids = {s.name: s.pid for s in own_cluster.status()}

        code, out = dev("stop", "postgres")
        assert code == EX_OK and "stopped postgres" in out
        code, out = dev("status", "--json")
        states = {row["name"]: row["state"] for row in json.loads(out)}
        assert code == EX_UNAVAILABLE and states.pop("postgres") == "held"
        assert set(states.values()) == {"healthy"}

        code, out = dev("up")
        assert code == EX_OK
        assert "postgres: held" in out and "nothing to start" in out
        assert own_cluster.launcher.pid_of(own_cluster.spec("postgres")) is None

        code, out = dev("start", "postgres")
        assert code == EX_OK and "started postgres" in out
        now = {s.name: s.pid for s in own_cluster.status()}
        assert all(now[n] == pids[n] for n in now if n != "postgres")
        assert now["postgres"] not in (None, pids["postgres"])

        assert dev("stop", "nosuch")[0] == 64
        assert dev("stop", "redis-1")[0] == 64
        dev("stop", "postgres")
    finally:
        own_cluster.down()
    assert not own_cluster.launcher.held("postgres")
    assert own_cluster.status()[0].state == "stopped"


def test_blob_plane_refuses_strangers_while_mail_flows(
        storage_cluster: Config, test_cluster: SessionCluster, tmp_path: Path) -> None:
    """The dev cluster's object servers demand memcached's login: a client without it is
    refused get, set, delete and metadump on every one of them, while mail delivered over
    LMTP is fetched back byte for byte over IMAP (imapd's blob client logs in)."""
    raw = (CORPUS / "apache-james-mime4j/mimetools-testmsgs/bluedot-simple.msg").read_bytes()
    stack_user = f"blob{os.urandom(3).hex()}"
    Mail(storage_cluster).create_user(stack_user, "pw")
    server = start_imapd(test_cluster, "imapd-blobauth", self_signed(tmp_path),
                         lmtp_listen=f"127.0.0.1:{free_port()}")
    try:
        client = smtplib.LMTP()
        client.connect("127.0.0.1", server.lmtp_port)
        try:
            assert client.sendmail("s@example.org", [f"{stack_user}@example.org"], raw) == {}
        finally:
            client.quit()
        for host, port in test_cluster.cluster("objstore").objstore_addresses:
            with socket.create_connection((host, port), timeout=5) as sock:
                for request, reply in (
                        (b"get k\r\n", b"CLIENT_ERROR unauthenticated\r\n"),
                        (b"delete k\r\n", b"CLIENT_ERROR unauthenticated\r\n"),
                        (b"lru_crawler metadump all\r\n", b"CLIENT_ERROR unauthenticated\r\n"),
                        (b"set k 0 0 11\r\nstolen blob\r\n",
                         b"CLIENT_ERROR authentication failure\r\n")):
                    sock.sendall(request)
                    got = b""
                    while not got.endswith(b"\r\n"):
                        got += sock.recv(256)
                    assert got == reply, (port, request)
        with imaplib.IMAP4("127.0.0.1", server.imap_port) as imap:
            imap.login(stack_user, "pw")
            imap.select("INBOX", readonly=True)
            _status, data = imap.fetch("1", "(BODY.PEEK[])")
        fetched = data[0][1]  # type: ignore[index]
        assert isinstance(fetched, bytes) and fetched.endswith(raw) and fetched.startswith(b"Return-Path: <s@example.org>")
    finally:
        server.stop()


def test_blob_plane_credentials_are_generated_private(test_cluster: SessionCluster) -> None:
    """objmail dev up writes the blob plane's authfile (one objmail:<password> line, 0600)
    under its secrets directory and names it for the object servers, directord and the
    blob clients; the password is in no config file."""
    config = test_cluster.config
    path = test_cluster.run_dir / "secrets" / "blob-auth"
    assert {config.objstore.auth_file, config.director.auth_file,
            config.director.objstore_auth_file} == {str(path)}
    assert _mode(path) == 0o600
    user, _, password = path.read_text().strip().partition(":")
    assert user == DEV_BLOB_USER and len(password) >= 32
    assert password not in (test_cluster.run_dir / "objmail.toml").read_text()

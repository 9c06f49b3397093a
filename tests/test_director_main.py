"""directord as a process: command line, startup failures, clean SIGTERM."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from director.keyring import Keyring, write_keyring
from ops.config import parse_hostport, to_toml
from ops.launcher import free_port
from runtime.secrets import write_secret
from runtime.tls import client_context
from tests.conftest import RunningRedis
from tests.director_installation import (
    private_config,
    private_installation,
    with_new_keyring,
)
from tests.memcache_auth import login_request
from tests.objstore_process import REPO
from tests.tls_support import make_certificates


def run_directord(args: list[str], timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "director.main", *args], cwd=REPO,
                          capture_output=True, timeout=timeout,
                          env={**os.environ, "OBJMAIL_REDIS_NODES": ""})


@pytest.mark.system
def test_cli_errors_name_the_key(tmp_path: Path) -> None:
    """A bad address on the command line or in the file stops directord at once with
    exit 78 (EX_CONFIG), naming the key, in the log format asked for."""
    cfg = tmp_path / "c.toml"
    cfg.write_text("")
    bad = run_directord(["--config", str(cfg), "--listen", "nohost"])
    assert bad.returncode == 78 and b"director.listen" in bad.stderr
    bad = run_directord(["--config", str(cfg), "--metrics-listen", "x:99999"])
    assert bad.returncode == 78 and b"director.metrics_listen" in bad.stderr
    bad = run_directord(["--config", str(cfg), "--workers", "65"])
    assert bad.returncode == 78 and b"director.workers" in bad.stderr
    cfg.write_text("[director]\nreplicas = 0\n")
    bad = run_directord(["--config", str(cfg), "--log-format", "json"])
    (line,) = bad.stderr.decode().splitlines()
    fields = json.loads(line)
    assert bad.returncode == 78 and list(fields) == ["ts", "level", "logger", "pid", "msg"]
    assert fields["level"] == "error" and "director.replicas" in fields["msg"]


@pytest.mark.system
def test_workers_refuse_a_taken_port(tmp_path: Path) -> None:
    """With several workers the supervisor checks the port before forking (SO_REUSEPORT
    would share it with a stranger): a taken port exits 71, naming the key."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = tmp_path / "c.toml"
        cfg.write_text(f'[director]\nlisten = "127.0.0.1:{port}"\nmetrics_listen = ""\n'
                       'allow_plaintext = true\n')
        result = run_directord(["--config", str(cfg), "--workers", "2"])
    assert result.returncode == 71, result.stderr[-2000:]
    assert b"director.listen" in result.stderr


@pytest.mark.system
@pytest.mark.slow
def test_unreachable_redis_exits_unavailable(tmp_path: Path) -> None:
    """With no Redis Cluster to reach, directord gives up after the retry deadline
    with exit 69 (EX_UNAVAILABLE) instead of serving."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[cluster]\nredis_nodes = ["127.0.0.1:{free_port()}"]\n'
                   f'[director]\nlisten = "127.0.0.1:{free_port()}"\nmetrics_listen = ""\n'
                   'allow_plaintext = true\n')
    result = run_directord(["--config", str(cfg)], timeout=120)
    assert result.returncode == 69, result.stderr[-2000:]
    assert b"directord cannot start" in result.stderr


@pytest.mark.system
def test_a_secret_file_others_can_read_exits_config(tmp_path: Path) -> None:
    """A Redis password file readable by group or others is a configuration error:
    exit 78 before anything starts, naming the key and how to fix the mode."""
    secret = tmp_path / "redis.password"
    secret.write_text("hunter2\n")
    secret.chmod(0o644)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[cluster]\nredis_password_file = "{secret}"\n'
                   f'[director]\nlisten = "127.0.0.1:{free_port()}"\nmetrics_listen = ""\n')
    result = run_directord(["--config", str(cfg)])
    assert result.returncode == 78, result.stderr[-2000:]
    assert b"cluster.redis_password_file" in result.stderr and b"chmod 600" in result.stderr
    assert b"hunter2" not in result.stderr


@pytest.mark.system
def test_no_keyring_or_an_unsafe_one_exits_config(tmp_path: Path) -> None:
    """Without a keyring (and without allow_plaintext), with a missing one or one others
    can read, directord exits 78 before reaching Redis, naming director.keyring_file
    and what to do."""
    listen = f'listen = "127.0.0.1:{free_port()}"\nmetrics_listen = ""\n'
    ring = tmp_path / "keyring.toml"
    cases = {"": b"objmail keys new", f'keyring_file = "{ring}"\n': b"does not exist"}
    for extra, says in cases.items():
        cfg = tmp_path / "c.toml"
        cfg.write_text(f"[director]\n{listen}{extra}")
        result = run_directord(["--config", str(cfg)])
        assert result.returncode == 78, result.stderr[-2000:]
        assert b"director.keyring_file" in result.stderr and says in result.stderr
    write_keyring(ring, Keyring.generate())
    ring.chmod(0o640)
    result = run_directord(["--config", str(cfg)])
    assert result.returncode == 78 and b"chmod 600" in result.stderr


def test_a_wrong_redis_password_exits_unavailable(tmp_path: Path,
                                                  redis_cluster: RunningRedis) -> None:
    """Redis refusing directord's password stops the start at once (not after the retry
    deadline) with exit 69 (EX_UNAVAILABLE) and a message saying the credentials were
    refused, without the password."""
    secret = tmp_path / "wrong.password"
    write_secret(secret, "not-the-password")
    config = with_new_keyring(private_config(redis_cluster, 0), tmp_path)
    config = dataclasses.replace(config, cluster=dataclasses.replace(
        config.cluster, redis_password_file=str(secret)))
    cfg = tmp_path / "c.toml"
    cfg.write_text(to_toml(config))
    started = time.monotonic()
    result = run_directord(["--config", str(cfg), "--metrics-listen", ""])
    assert result.returncode == 69, result.stderr[-2000:]
    assert time.monotonic() - started < 20
    assert b"refused the credentials" in result.stderr
    assert b"not-the-password" not in result.stderr


def test_port_in_use_exits_nonzero(tmp_path: Path, redis_cluster: RunningRedis) -> None:
    """A taken port is reported and directord exits 71 (EX_OSERR) instead of running
    deaf."""
    config = with_new_keyring(private_config(redis_cluster, 0), tmp_path)
    cfg = tmp_path / "c.toml"
    cfg.write_text(to_toml(config))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_directord(["--config", str(cfg), "--listen", f"127.0.0.1:{port}",
                                "--metrics-listen", ""])
    assert result.returncode == 71
    assert b"cannot start" in result.stderr and str(port).encode() in result.stderr


def test_sigterm_exits_zero(tmp_path: Path, redis_cluster: RunningRedis) -> None:
    """Started by the launcher, directord answers version and /metrics (directord_*
    samples with its jobs, build and process metrics), logs JSON lines when asked;
    SIGTERM makes it finish and exit 0."""
    with private_installation(redis_cluster, tmp_path, objstores=0, stages=()) as inst:
        spec = inst.cluster.directord_spec(*parse_hostport(inst.config.director.listen))
        spec = dataclasses.replace(spec, argv=(*spec.argv, "--log-format", "json"))
        launcher = inst.cluster.launcher
        launcher.start(spec)
        pid = launcher.pid_of(spec)
        assert pid is not None
        with socket.create_connection(parse_hostport(inst.config.director.listen)) as sock:
            sock.sendall(b"version\r\n")
            assert sock.recv(100) == b"CLIENT_ERROR unauthenticated\r\n"
            sock.sendall(login_request(inst.cluster.directord_access()) + b"version\r\n")
            reply = b""
            while not reply.endswith(b"directord\r\n"):
                reply += sock.recv(100)
            assert reply == b"STORED\r\nVERSION 1.6.18-directord\r\n"
        host, port = parse_hostport(inst.config.director.metrics_listen)
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        got = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
        assert got["directord_open_connections", ()] == 0
        assert got["directord_failovers_total", ()] == 0
        for job in ("repair", "level", "drain"):
            assert got["directord_job_failures_total", (("job", job),)] == 0
        assert any(name == "directord_build_info" for name, _ in got)
        assert got["process_open_fds", ()] > 0
        ours = {name for name, _ in got if not name.startswith(("process_", "python_"))}
        assert all(name.startswith("directord_") for name in ours), ours
        launcher.signal(spec, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done == pid:
                break
            assert time.monotonic() < deadline, "directord ignored SIGTERM"
            time.sleep(0.05)
        assert os.waitstatus_to_exitcode(status) == 0
        # The launcher heads each run in the log with a "--- ... starting" line of its own.
        lines = [json.loads(x) for x in launcher.logfile("directord").read_text().splitlines()
                 if not x.startswith("--- ")]
        assert all(list(x)[:5] == ["ts", "level", "logger", "pid", "msg"] for x in lines)
        assert any(x["msg"] == "directord stopped" for x in lines)


@pytest.mark.system
@pytest.mark.parametrize("key", ["auth_file", "objstore_auth_file"])
def test_an_auth_file_others_can_read_exits_config(tmp_path: Path, key: str) -> None:
    """directord's own auth file and the one it logs in to object servers with are
    refused when group or others may read them: exit 78 naming the key, before Redis is
    even tried."""
    path = tmp_path / "blob-auth"
    path.write_text("objmail:hunter2\n")
    path.chmod(0o640)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[cluster]\nredis_nodes = ["127.0.0.1:{free_port()}"]\n'
                   f'[director]\nlisten = "127.0.0.1:{free_port()}"\nmetrics_listen = ""\n'
                   f'{key} = "{path}"\n')
    result = run_directord(["--config", str(cfg)])
    assert result.returncode == 78, result.stderr[-2000:]
    assert f"director.{key}".encode() in result.stderr and b"hunter2" not in result.stderr


def test_tls_listener_with_login(tmp_path: Path, redis_cluster: RunningRedis) -> None:
    """With tls_cert/tls_key (and the dev cluster's auth file) directord speaks TLS only:
    a TLS client is refused until it logs in, then served; a plaintext client gets no
    memcached reply."""
    certs = make_certificates(tmp_path / "tls")
    with private_installation(redis_cluster, tmp_path, objstores=0, stages=()) as inst:
        config = dataclasses.replace(inst.config, director=dataclasses.replace(
            inst.config.director, tls_cert=str(certs.server_cert),
            tls_key=str(certs.server_key), metrics_listen=""))
        cfg = tmp_path / "tls.toml"
        cfg.write_text(to_toml(config))
        host, port = parse_hostport(config.director.listen)
        proc = subprocess.Popen([sys.executable, "-m", "director.main", "--config", str(cfg)],
                                cwd=REPO, stderr=subprocess.PIPE,
                                env={**os.environ, "OBJMAIL_REDIS_NODES": ""})
        try:
            context = client_context(str(certs.ca), prefix="test.")
            deadline = time.monotonic() + 60
            while True:
                try:
                    raw = socket.create_connection((host, port), timeout=5)
                    break
                except OSError:
                    assert proc.poll() is None and time.monotonic() < deadline
                    time.sleep(0.1)
            with context.wrap_socket(raw, server_hostname=host) as sock:
                sock.sendall(b"version\r\n")
                assert sock.recv(100) == b"CLIENT_ERROR unauthenticated\r\n"
                sock.sendall(login_request(inst.cluster.directord_access()) + b"version\r\n")
                reply = b""
                while not reply.endswith(b"directord\r\n"):
                    reply += sock.recv(100)
                assert reply == b"STORED\r\nVERSION 1.6.18-directord\r\n"
            with socket.create_connection((host, port), timeout=5) as plain:
                plain.sendall(b"version\r\n")
                try:
                    got = plain.recv(100)
                except (ConnectionResetError, TimeoutError):
                    got = b""
                assert b"VERSION" not in got and b"CLIENT_ERROR" not in got
        finally:
            proc.terminate()
            assert proc.wait(30) == 0

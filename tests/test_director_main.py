"""directord as a process: command line, startup failures, clean SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ops.config import parse_hostport, to_toml
from tests.conftest import RunningRedis
from tests.director_installation import private_config, private_installation
from tests.objstore_process import REPO


def run_directord(args: list[str], timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "director.main", *args], cwd=REPO,
                          capture_output=True, timeout=timeout,
                          env={**os.environ, "OBJMAIL_REDIS_NODES": ""})


@pytest.mark.system
def test_cli_errors_name_the_key(tmp_path: Path) -> None:
    """A bad address on the command line stops directord at once, exit 2, naming the key."""
    cfg = tmp_path / "c.toml"
    cfg.write_text("")
    bad = run_directord(["--config", str(cfg), "--listen", "nohost"])
    assert bad.returncode == 2 and b"director.listen" in bad.stderr
    bad = run_directord(["--config", str(cfg), "--metrics-listen", "x:99999"])
    assert bad.returncode == 2 and b"director.metrics_listen" in bad.stderr


def test_port_in_use_exits_nonzero(tmp_path: Path, redis_cluster: RunningRedis) -> None:
    """A taken port is reported and directord exits 1 instead of running deaf."""
    config = private_config(redis_cluster, 0)
    cfg = tmp_path / "c.toml"
    cfg.write_text(to_toml(config))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_directord(["--config", str(cfg), "--listen", f"127.0.0.1:{port}",
                                "--metrics-listen", ""])
    assert result.returncode == 1
    assert b"cannot start" in result.stderr and str(port).encode() in result.stderr


def test_sigterm_exits_zero(tmp_path: Path, redis_cluster: RunningRedis) -> None:
    """Started by the launcher, directord answers version; SIGTERM makes it finish and
    exit 0."""
    with private_installation(redis_cluster, tmp_path, objstores=0, stages=()) as inst:
        spec = inst.cluster.directord_spec(*parse_hostport(inst.config.director.listen))
        launcher = inst.cluster.launcher
        launcher.start(spec)
        pid = launcher.pid_of(spec)
        assert pid is not None
        with socket.create_connection(parse_hostport(inst.config.director.listen)) as sock:
            sock.sendall(b"version\r\n")
            assert sock.recv(100) == b"VERSION 1.6.18-directord\r\n"
        launcher.signal(spec, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done == pid:
                break
            assert time.monotonic() < deadline, "directord ignored SIGTERM"
            time.sleep(0.05)
        assert os.waitstatus_to_exitcode(status) == 0
        assert "directord stopped" in launcher.logfile("directord").read_text()

"""Start a real objstored process for system tests (the one place that does it).

Until the objstore tests move to the project launcher, this helper runs
``python -m objstore.main`` on a free loopback port with a private config file and
data directory, waits until it answers ``version``, and always stops it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass
class Objstored:
    """A running objstored: where it listens, its files, its process."""

    data_dir: Path
    config_path: Path
    port: int
    workers: int = 1
    extra_args: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    host: str = "127.0.0.1"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 15.0) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.log_path = self.data_dir.parent / f"objstored-{self.port}.log"
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        args = [sys.executable, "-m", "objstore.main", "--config", str(self.config_path),
                "--listen", self.address, "--data", str(self.data_dir),
                "--workers", str(self.workers), *self.extra_args]
        env = dict(os.environ)
        env.pop("OBJMAIL_REDIS_NODES", None)
        self.proc = subprocess.Popen(args, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                     env=env)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"objstored exited with {self.proc.returncode}:\n"
                                   + self.log_tail())
            if self.answers_version():
                return
            time.sleep(0.05)
        self.kill()
        raise RuntimeError("objstored did not become ready:\n" + self.log_tail())

    def answers_version(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as s:
                s.sendall(b"version\r\n")
                return s.recv(100).startswith(b"VERSION ")
        except OSError:
            return False

    def log_tail(self, lines: int = 30) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc is not None else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        """SIGKILL (crash simulation); with workers, the children follow via PDEATHSIG."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def connect(self, timeout: float = 5.0) -> socket.socket:
        s = socket.create_connection((self.host, self.port), timeout=timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s


def write_config(path: Path, objstore: dict[str, Any], redis_nodes: list[str] | None) -> None:
    lines = ["[objstore]"]
    lines += [f"{k} = {_toml(v)}" for k, v in objstore.items()]
    if redis_nodes is not None:
        lines += ["", "[cluster]", f"redis_nodes = {_toml(redis_nodes)}"]
    path.write_text("\n".join(lines) + "\n")


@contextlib.contextmanager
def objstored(tmp_path: Path, *, workers: int = 1, redis_nodes: list[str] | None = None,
              extra_args: list[str] | None = None, **objstore: Any) -> Iterator[Objstored]:
    """Run objstored for the block; ``objstore`` keys go to its config section.

    Without ``redis_nodes`` the reporter points at a port where nothing listens, so tests
    never touch a Redis they did not start.
    """
    tmp_path.mkdir(parents=True, exist_ok=True)
    data_dir = tmp_path / f"data-{free_port()}"
    config_path = tmp_path / f"objstored-{data_dir.name}.toml"
    if redis_nodes is None:
        redis_nodes = [f"127.0.0.1:{free_port()}"]
    objstore.setdefault("map_size", 256 * 1024 * 1024)
    write_config(config_path, objstore, redis_nodes)
    server = Objstored(data_dir, config_path, free_port(), workers, list(extra_args or []))
    server.start()
    try:
        yield server
    finally:
        try:
            server.stop()
        finally:
            server.kill()

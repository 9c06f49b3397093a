"""Start a real objstored process for system tests, through the project's launcher.

Each server is an :class:`ops.launcher.ProcessSpec` built by
:func:`ops.devcluster.objstored_process_spec` (the dev cluster's object servers use the same)
and run by an :class:`ops.launcher.Launcher` in the test's directory: a pid file, a log, a
readiness probe (``version``), signals to the process group.  On top of the launcher this
helper reaps the process itself, because tests check objstored's exit status.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ops.devcluster import objstored_process_spec
from ops.launcher import Launcher, ProcessSpec, free_port

REPO = Path(__file__).resolve().parents[1]
#: Exit status reported when the process was reaped by someone else (status unknown).
UNKNOWN_STATUS = -1



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
    host: str = "127.0.0.1"
    run_dir: Path | None = None
    #: Where it serves /metrics (None: it serves none).
    metrics_port: int | None = None

    def __post_init__(self) -> None:
        self.launcher = Launcher(self.run_dir or self.data_dir.parent)

    @property
    def name(self) -> str:
        return f"objstored-{self.port}"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def metrics_url(self) -> str:
        assert self.metrics_port is not None, "started without metrics"
        return f"http://{self.host}:{self.metrics_port}/metrics"

    @property
    def log_path(self) -> Path:
        return self.launcher.logfile(self.name)

    def spec(self, ready_timeout: float = 15.0) -> ProcessSpec:
        spec = objstored_process_spec(
            self.name, self.host, self.port, self.data_dir, self.config_path,
            ["--workers", str(self.workers), *self.extra_args],
            # The test's config names the Redis to report to, whatever the environment says.
            env={"OBJMAIL_REDIS_NODES": ""},
            metrics_listen=(f"{self.host}:{self.metrics_port}" if self.metrics_port else ""))
        return dataclasses.replace(spec, ready_timeout=ready_timeout)

    @property
    def pid(self) -> int | None:
        """The live process (the supervisor with --workers), or None."""
        return self.launcher.pid_of(self.spec())

    def start(self, timeout: float = 15.0) -> None:
        """Start it and wait until it answers ``version``.

        :raises ops.launcher.LaunchError: it exited or was not ready in time (with its log).
        """
        assert self.pid is None, "already running"
        self.launcher.start(self.spec(timeout))

    def answers_version(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as s:
                s.sendall(b"version\r\n")
                return s.recv(100).startswith(b"VERSION ")
        except OSError:
            return False

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        return self._signal_and_reap(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL (crash simulation) to the process and its workers."""
        self._signal_and_reap(signal.SIGKILL, 10.0)

    def _signal_and_reap(self, sig: int, timeout: float) -> int:
        pid = self.pid
        if pid is None:
            return 0
        self.launcher.signal(self.spec(), sig)
        deadline = time.monotonic() + timeout
        while True:
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                # Reaped elsewhere (subprocess's cleanup of dropped Popen objects): it is
                # gone, with an unknown status.
                self.launcher.pidfile(self.name).unlink(missing_ok=True)
                return UNKNOWN_STATUS
            if done == pid:
                self.launcher.pidfile(self.name).unlink(missing_ok=True)
                return os.waitstatus_to_exitcode(status)
            if time.monotonic() > deadline:
                self.launcher.signal(self.spec(), signal.SIGKILL)
                raise TimeoutError(f"{self.name} did not exit within {timeout}s after "
                                   f"signal {sig}:\n{self.log_tail()}")
            time.sleep(0.02)

    def connect(self, timeout: float = 5.0) -> socket.socket:
        s = socket.create_connection((self.host, self.port), timeout=timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s


def write_config(path: Path, objstore: dict[str, Any], redis_nodes: list[str] | None,
                 cluster: Mapping[str, Any] | None = None) -> None:
    lines = ["[objstore]"]
    lines += [f"{k} = {_toml(v)}" for k, v in objstore.items()]
    if redis_nodes is not None:
        lines += ["", "[cluster]", f"redis_nodes = {_toml(redis_nodes)}"]
        lines += [f"{k} = {_toml(v)}" for k, v in (cluster or {}).items()]
    path.write_text("\n".join(lines) + "\n")


@contextlib.contextmanager
def objstored(tmp_path: Path, *, workers: int = 1, redis_nodes: list[str] | None = None,
              cluster: Mapping[str, Any] | None = None,
              extra_args: list[str] | None = None, metrics: bool = False,
              **objstore: Any) -> Iterator[Objstored]:
    """Run objstored for the block; ``objstore`` keys go to its config section; with
    ``metrics`` it serves /metrics on a free port.

    Without ``redis_nodes`` the reporter points at a port where nothing listens, so tests
    never touch a Redis they did not start.  ``cluster`` adds ``[cluster]`` keys (the
    Redis credentials' files).
    """
    tmp_path.mkdir(parents=True, exist_ok=True)
    data_dir = tmp_path / f"data-{free_port()}"
    config_path = tmp_path / f"objstored-{data_dir.name}.toml"
    if redis_nodes is None:
        redis_nodes = [f"127.0.0.1:{free_port()}"]
    objstore.setdefault("map_size", 256 * 1024 * 1024)
    write_config(config_path, objstore, redis_nodes, cluster)
    server = Objstored(data_dir, config_path, free_port(), workers, list(extra_args or []),
                       metrics_port=free_port() if metrics else None)
    server.start()
    try:
        yield server
    finally:
        try:
            server.stop()
        finally:
            server.kill()

"""Start, watch and stop local daemons, one pid file and one log per process.

Theory of operation: a :class:`ProcessSpec` says how to run one daemon, which
ports it binds and how to tell that it is ready.  :class:`Launcher` keeps a
run directory with ``run/<name>.pid`` and ``log/<name>.log`` per process.
``start`` is idempotent (a live process named in its pid file is left alone),
checks the ports before it starts anything (so a clash names the port instead
of surfacing as a crash in some log), and waits for readiness with a timeout.
``stop`` signals exactly the processes whose pid files it wrote, after checking
that the pid still belongs to the same program, and escalates to SIGKILL.

A pid file holds one pid and nothing else, so ``kill $(cat run/imapd.pid)`` signals that
process alone.  The kernel's start time of the process, which tells a recycled pid from
ours, is kept beside it in ``run/<name>.start``.  A process is signalled through its
process group when it leads one (the launcher starts each in a session of its own, so
its workers get the signal too) and by pid otherwise (a pid file the launcher did not
write, a daemon that left its group); every wait is bounded.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO


class LaunchError(RuntimeError):
    """A process could not be started or did not become ready."""


#: A readiness/health probe: True when the process serves.
Probe = Callable[[], bool]


@dataclass(frozen=True)
class ProcessSpec:
    """How to run one daemon of the cluster."""

    name: str
    kind: str
    argv: tuple[str, ...]
    ports: tuple[int, ...]
    probe: Probe
    host: str = "127.0.0.1"
    env: Mapping[str, str] = field(default_factory=dict)
    #: Run as this user (PostgreSQL refuses to run as root).
    user: str | None = None
    stop_signal: int = signal.SIGTERM
    ready_timeout: float = 30.0
    cwd: str | None = None
    #: Files the daemon creates (data, AOF, LMDB) are its owner's alone.
    umask: int = 0o077

    @property
    def port(self) -> int:
        return self.ports[0]


@dataclass(frozen=True)
class ProcessStatus:
    """One row of ``objmail dev status``."""

    name: str
    kind: str
    port: int
    pid: int | None
    healthy: bool
    log: Path
    #: Stopped on purpose (``objmail dev stop NAME``): ``up`` leaves it stopped.
    held: bool = False

    @property
    def state(self) -> str:
        if self.pid is None:
            return "held" if self.held else "stopped"
        return "healthy" if self.healthy else "unhealthy"


def port_in_use(host: str, port: int) -> bool:
    """True when something already listens on (or holds) ``host:port``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        # SO_REUSEADDR: a TIME_WAIT leftover is not "in use"; a listener is.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        if exc.errno in (errno.EADDRINUSE, errno.EACCES):
            return True
        raise
    finally:
        sock.close()
    return False


#: Lowest port handed out for test and benchmark servers (clear of the defaults below it).
_FIRST_FREE_PORT = 12000


def ephemeral_port_range() -> tuple[int, int]:
    """The kernel's range for the local ports of outgoing connections."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def free_port_block(count: int = 1, *, bus_offset: int = 0, host: str = "127.0.0.1",
                    rng: random.Random | None = None) -> int:
    """First of ``count`` consecutive ports nothing holds (and ``port + bus_offset`` too).

    The ports come from below the kernel's ephemeral range.  Inside it, any outgoing
    connection may take a server's port as its local port while the server is down (on
    loopback, a client reconnecting to a dead server can even connect to itself), and
    the server cannot bind it again when it restarts.
    """
    rng = rng or random.Random()
    low, high = ephemeral_port_range()
    span = count + bus_offset
    ranges = [(a, b - span) for a, b in ((_FIRST_FREE_PORT, low), (high + 1, 65536))
              if b - span > a]
    if not ranges:  # an odd kernel setting: accept the ephemeral range
        ranges = [(1024, 65536 - span)]
    for _ in range(500):
        start, stop = rng.choice(ranges)
        base = rng.randrange(start, stop)
        ports = [*range(base, base + count)]
        if bus_offset:
            ports += [p + bus_offset for p in ports]
        if not any(port_in_use(host, p) for p in ports):
            return base
    raise LaunchError(f"no {count} consecutive free ports on {host}")


def free_port(host: str = "127.0.0.1") -> int:
    """One port nothing holds, outside the ephemeral range (see :func:`free_port_block`)."""
    return free_port_block(1, host=host)


def private_dir(path: Path, *, owner: str | None = None) -> Path:
    """Create ``path`` (and missing parents) and make it 0700: logs and data of the
    cluster may hold mail and secrets.

    :param owner: the account that must own it (the PostgreSQL data of a root launcher).
    """
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    if owner is not None:
        shutil.chown(path, owner, owner)
    return path


def open_private_log(path: Path) -> BinaryIO:
    """``path`` opened for appending, 0600 (a daemon's log may quote mail); a log an
    older launcher left readable is made private too."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "ab")


def tcp_connectable(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (our own exited child not yet reaped) is not alive.
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
        return state != b"Z"
    except (OSError, IndexError):
        return True


def _start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), or None.

    Stored next to the pid so that a recycled pid is never mistaken for ours.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None


class Launcher:
    """Processes of one run directory."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.pid_dir = run_dir / "run"
        self.log_dir = run_dir / "log"

    def pidfile(self, name: str) -> Path:
        return self.pid_dir / f"{name}.pid"

    def startfile(self, name: str) -> Path:
        """The kernel's start time of the process in the pid file (a recycled pid differs)."""
        return self.pid_dir / f"{name}.start"

    def logfile(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def pid_of(self, spec: ProcessSpec) -> int | None:
        """The live pid recorded for ``spec``, or None (stale pid files are removed)."""
        path = self.pidfile(spec.name)
        try:
            fields = path.read_text().split()
            pid = int(fields[0])
        except (OSError, ValueError, IndexError):
            return None
        # Pid files of earlier releases held the start time as a second number.
        recorded_start = fields[1] if len(fields) > 1 else _read(self.startfile(spec.name))
        if _pid_alive(pid) and (recorded_start is None or _start_time(pid) == recorded_start):
            return pid
        self._forget(spec.name)
        return None

    def _forget(self, name: str) -> None:
        self.pidfile(name).unlink(missing_ok=True)
        self.startfile(name).unlink(missing_ok=True)

    def status(self, spec: ProcessSpec) -> ProcessStatus:
        pid = self.pid_of(spec)
        healthy = pid is not None and _safe_probe(spec.probe)
        return ProcessStatus(spec.name, spec.kind, spec.port, pid, healthy,
                             self.logfile(spec.name), self.held(spec.name))

    def check_ports(self, specs: Sequence[ProcessSpec]) -> None:
        """Fail, naming the port, when a process we must start finds its port taken."""
        for spec in specs:
            if self.pid_of(spec) is not None:
                continue
            for port in spec.ports:
                if port_in_use(spec.host, port):
                    raise LaunchError(
                        f"port {port} on {spec.host} is already in use; {spec.name} needs it "
                        f"(stop whatever listens there, or choose other ports)")

    def start(self, spec: ProcessSpec) -> bool:
        """Start ``spec`` unless it runs already; wait until it is ready.

        :returns: True when a process was started, False when it already ran.
        :raises LaunchError: it exited early or was not ready in time.
        """
        private_dir(self.pid_dir)
        private_dir(self.log_dir)
        if self.pid_of(spec) is not None:
            self.wait_ready(spec, None)
            return False
        self.check_ports([spec])
        log_path = self.logfile(spec.name)
        with open_private_log(log_path) as log:
            log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting "
                      f"{' '.join(spec.argv)}\n".encode())
            log.flush()
            env = dict(os.environ)
            env.update(spec.env)
            proc = subprocess.Popen(
                list(spec.argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=env, cwd=spec.cwd, user=spec.user, umask=spec.umask,
                start_new_session=True, close_fds=True)
        self._record(spec.name, proc.pid)
        self.wait_ready(spec, proc)
        return True

    def wait_ready(self, spec: ProcessSpec, proc: subprocess.Popen[bytes] | None) -> None:
        deadline = time.monotonic() + spec.ready_timeout
        delay = 0.02
        while True:
            if proc is not None and proc.poll() is not None:
                self._forget(spec.name)
                raise LaunchError(
                    f"{spec.name} exited with status {proc.returncode} while starting; "
                    f"see {self.logfile(spec.name)}:\n{self.tail(spec.name)}")
            if _safe_probe(spec.probe):
                return
            if time.monotonic() > deadline:
                raise LaunchError(
                    f"{spec.name} was not ready on port {spec.port} after "
                    f"{spec.ready_timeout:.0f}s; see {self.logfile(spec.name)}:\n"
                    f"{self.tail(spec.name)}")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.25)

    def _record(self, name: str, pid: int) -> None:
        """Write the pid file (one pid) and, first, the start time beside it."""
        start = _start_time(pid)
        if start is not None:
            _write(self.startfile(name), f"{start}\n")
        else:
            self.startfile(name).unlink(missing_ok=True)
        _write(self.pidfile(name), f"{pid}\n")

    def stop(self, spec: ProcessSpec, timeout: float = 15.0, kill_wait: float = 5.0) -> bool:
        """Stop the process of ``spec`` if it runs; SIGKILL after ``timeout``.

        :returns: True when a process was stopped.
        :raises LaunchError: it outlived SIGKILL by ``kill_wait`` seconds (stuck in the
            kernel, or not ours to kill); its pid file is left in place.
        """
        pid = self.pid_of(spec)
        if pid is None:
            return False
        self.signal(spec, spec.stop_signal)
        if not _wait_gone(pid, timeout):
            self.signal(spec, signal.SIGKILL)
            if not _wait_gone(pid, kill_wait):
                raise LaunchError(f"{spec.name} (pid {pid}) is still alive {kill_wait:.0f}s "
                                  "after SIGKILL; its pid file is kept")
        self._forget(spec.name)
        return True

    def signal(self, spec: ProcessSpec, sig: int) -> None:
        """Send ``sig`` to the process of ``spec``: to its whole group (its workers too)
        when it leads one, to it alone otherwise."""
        pid = self.pid_of(spec)
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            if _leads_group(pid):
                try:
                    os.killpg(pid, sig)
                    return
                except PermissionError:
                    pass  # a member we may not signal: the leader at least
            try:
                os.kill(pid, sig)
            except PermissionError:
                raise LaunchError(f"{spec.name} (pid {pid}): not permitted to signal it "
                                  f"(see {self.pidfile(spec.name)})") from None

    # -- held: stopped by the operator ----------------------------------------------

    def heldfile(self, name: str) -> Path:
        return self.pid_dir / f"{name}.held"

    def hold(self, name: str) -> None:
        """Mark process ``name`` as stopped on purpose: :meth:`held` says so until
        :meth:`release`."""
        self.pid_dir.mkdir(parents=True, exist_ok=True)
        _write(self.heldfile(name), f"stopped at {time.strftime('%Y-%m-%d %H:%M:%S')}\n")

    def release(self, name: str) -> None:
        self.heldfile(name).unlink(missing_ok=True)

    def held(self, name: str) -> bool:
        return self.heldfile(name).exists()

    def tail(self, name: str, lines: int = 15) -> str:
        try:
            data = self.logfile(name).read_bytes()[-8192:]
        except OSError:
            return "(no log)"
        return "\n".join(data.decode(errors="replace").splitlines()[-lines:])


def _leads_group(pid: int) -> bool:
    """True when ``pid`` is its process group's leader (killpg would reach it).

    :raises ProcessLookupError: there is no such process.
    """
    return os.getpgid(pid) == pid


def _wait_gone(pid: int, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for ``pid`` to exit; True once it has."""
    deadline = time.monotonic() + timeout
    while True:
        _reap(pid)
        if not _pid_alive(pid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _reap(pid: int) -> None:
    # Processes started by this interpreter are our children: collect them so
    # they do not linger as zombies (relevant to test sessions).
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _safe_probe(probe: Probe) -> bool:
    try:
        return probe()
    except Exception:
        return False

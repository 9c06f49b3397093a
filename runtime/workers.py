"""Several worker processes on one set of ports: SO_REUSEPORT listeners and the
supervisor that forks the workers and keeps them running.

objstored and imapd use the same model.  The supervisor checks, before it forks, that
every port is free (:func:`check_port_free`: with SO_REUSEPORT a second server run by
the same user would otherwise share the port silently), then forks N workers; each
worker builds its own event loop and services and listens with
:func:`reuseport_socket`, so the kernel spreads new connections across the workers.
SIGTERM/SIGINT to the supervisor reach every worker (which stops in order); a worker
that dies otherwise is restarted after a growing pause; a worker whose supervisor dies
gets SIGTERM from the kernel (Linux ``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from typing import Any, Final

from runtime.config import parse_hostport
from runtime.daemon import StartError

__all__ = ["adopt_listener", "check_port_free", "cpu_count", "reuseport_socket", "supervise"]

_PR_SET_PDEATHSIG: Final = 1


def cpu_count() -> int:
    """The cores this process may run on (its affinity mask, not the machine's)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def check_port_free(address: str, key: str) -> None:
    """Refuse a taken port up front: SO_REUSEPORT would let us share it with a stranger.

    :raises StartError: ``address`` cannot be bound (exit 71), naming ``key``.
    """
    host, port = parse_hostport(address, key)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise StartError(f"{key}: cannot listen on {host}:{port}: "
                             f"{exc.strerror}") from None


def reuseport_socket(host: str, port: int, backlog: int = 1024) -> socket.socket:
    """A listening, non-blocking TCP socket with SO_REUSEPORT, so several worker
    processes can each accept on the same port (the kernel spreads connections)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def adopt_listener(reactor: Any, host: str, port: int, factory: Any, tls: Any = None) -> Any:
    """Listen on ``host:port`` with SO_REUSEPORT; Twisted's listening port.

    :param tls: a server context factory: every connection speaks TLS from its first
        byte (Twisted's memory-BIO TLS wraps the factory).
    """
    served: Any = factory
    if tls is not None:
        from twisted.protocols.tls import TLSMemoryBIOFactory

        served = TLSMemoryBIOFactory(tls, False, factory)
    sock = reuseport_socket(host, port)
    try:
        return reactor.adoptStreamPort(sock.fileno(), sock.family, served)
    finally:
        sock.close()  # adoptStreamPort dup()s the descriptor


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the supervisor still forwards SIGTERM
        pass


#: Exit statuses that mean "cannot start" (EX_UNAVAILABLE, EX_OSERR, EX_CONFIG), not a crash.
START_FAILURES: Final = frozenset({69, 71, 78})


def supervise(workers: int, run_worker: Callable[[int], int], log: logging.Logger) -> int:
    """Fork ``workers`` processes, each running ``run_worker(index)`` (its exit status),
    and keep them running until SIGTERM/SIGINT; then wait for all of them.

    A worker that dies is restarted, except when a first-generation worker exits with a
    start-up failure (:data:`START_FAILURES`: PostgreSQL or Redis unreachable, a port or
    file refused): restarting cannot help, so every worker is stopped and that status is
    returned, as a single process would exit.  Returns 0 after SIGTERM/SIGINT.
    """
    children: dict[int, int] = {}  # pid -> worker index
    restarted: set[int] = set()  # indexes that have been respawned at least once
    stopping = False
    status_out = 0

    def spawn(index: int) -> None:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                _die_with_parent()
                code = run_worker(index)
            except BaseException:
                log.exception("worker %d crashed", index)
            finally:
                logging.shutdown()
                os._exit(code)
        children[pid] = index

    def on_signal(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    for i in range(workers):
        spawn(i)
    failures = 0
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        index = children.pop(pid, None)
        if index is None or stopping:
            continue
        code = os.waitstatus_to_exitcode(status)
        if code in START_FAILURES and index not in restarted:
            log.error("worker %d (pid %d) could not start (exit %d); stopping the others",
                      index, pid, code)
            status_out = code
            on_signal(signal.SIGTERM, None)
            continue
        restarted.add(index)
        failures += 1
        log.error("worker %d (pid %d) exited with %d; restarting", index, pid, code)
        time.sleep(min(0.5 * failures, 5.0))
        if not stopping:
            spawn(index)
    return status_out
